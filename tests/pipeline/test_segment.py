from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_stage, write_zarr
from fns import zeros

from blockbuster.pipeline.driver import prepare_run
from blockbuster.pipeline.segment import check_labels, renumber_core_first
from blockbuster.pipeline.stage import any_chunk_stored, open_stage


def test_renumber_puts_core_labels_first() -> None:
    labels = np.array([[7, 7, 0, 3], [9, 9, 0, 3]])
    core = (slice(None), slice(2, 4))  # holds 0 and 3
    out, n_core, n_labels = renumber_core_first(labels, core, "uint32")
    assert out.dtype == np.uint32
    assert (n_core, n_labels) == (1, 3)
    assert out[0, 3] == 1 and out[1, 3] == 1
    assert {out[0, 0], out[1, 0]} == {2, 3}
    assert (out == 0).sum() == 2


def test_renumber_keeps_huge_and_sparse_ids_apart() -> None:
    big = np.iinfo(np.uint64).max - 5
    labels = np.array([big, big, 2**40, 1], dtype=np.uint64)
    out, n_core, n_labels = renumber_core_first(labels, (slice(None),))
    assert n_core == n_labels == 3
    assert out[0] == out[1] and len(np.unique(out)) == 3


def test_renumber_of_an_empty_tile_is_zeros() -> None:
    out, n_core, n_labels = renumber_core_first(np.zeros((4, 5), np.int32), (slice(1, 3),) * 2)
    assert (n_core, n_labels) == (0, 0)
    assert out.dtype == np.uint64 and out.shape == (4, 5) and not out.any()


def test_renumber_without_halo_equals_renumber_with_a_core_box_covering_everything() -> None:
    labels = np.random.default_rng(1).integers(0, 50, (6, 7)) * 1000
    labels[0, 0] = 0
    whole = renumber_core_first(labels, (slice(None), slice(None)))
    boxed = renumber_core_first(labels, (slice(0, 6), slice(0, 7)))
    n = len(np.unique(labels[labels != 0]))
    assert whole[1:] == boxed[1:] == (n, n)
    np.testing.assert_array_equal(whole[0], boxed[0])
    # a bijection onto 1..n that keeps background
    pairs = np.unique(np.stack([labels.ravel(), whole[0].ravel()]), axis=1)
    assert pairs.shape[1] == n + 1
    assert set(pairs[1].tolist()) == set(range(n + 1))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros((3, 3), np.int32), "shape"),
        (np.zeros((4, 4), np.float32), "dtype"),
        (np.full((4, 4), -1, np.int32), "negative"),
    ],
)
def test_check_labels_rejects_bad_results(labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_labels(labels, (4, 4))


def test_check_labels_accepts_bool() -> None:
    assert check_labels(np.ones((2, 2), bool), (2, 2)).dtype == np.uint8


def test_an_empty_retry_clears_what_an_earlier_attempt_staged(tmp_path: Path) -> None:
    """Empty tiles skip their stage write only when nothing was staged there before."""
    src = write_zarr(tmp_path / "img.zarr", np.zeros((8, 12), np.float32))
    run, spec, _ = prepare_run(
        src,
        zeros,
        (4, 6),
        1,
        write_to=tmp_path / "out.zarr",
        sequential_labels=False,
        merge_threshold=0.5,
        overwrite=True,
    )
    stage = open_stage(run.stage, mode="r+")
    stage[1, 1] = 5  # what an earlier attempt (with other results) left before it died
    records = run_stage(run, "segment")
    assert not stage[:].any()
    assert not any_chunk_stored(stage, ((0, 1), (0, 1), (0, 6), (0, 8)))  # never written
    assert {r["n_labels"] for r in records.done_records().values()} == {0}
