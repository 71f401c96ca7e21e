from __future__ import annotations

import numpy as np
import pytest

from blockbuster.segment import check_labels, renumber_core_first


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
