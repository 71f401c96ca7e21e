"""The foreground mask: which tiles are read, that the rest are never read nor passed to fn,
that the output equals a run without a mask, and how skipped tiles are shown."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_one_to_one, write_zarr
from fns import counting_cc_label
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster import tile_process
from blockbuster.pipeline.mask import tiles_touching
from blockbuster.pipeline.plan import TilePlan
from blockbuster.run.rundir import RunDir
from blockbuster.ui.report import BlockMap
from blockbuster.ui.status import run_status

SERIAL = {"backend": "serial", "status_page": None}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_tiles_touching_equals_checking_every_tile(data: st.DataObject) -> None:
    ndim = data.draw(st.integers(2, 3))
    shape = tuple(data.draw(st.integers(3, 40)) for _ in range(ndim))
    tile = tuple(data.draw(st.integers(1, s)) for s in shape)
    halo = tuple(data.draw(st.integers(0, 5)) for _ in range(ndim))
    mask_shape = tuple(data.draw(st.integers(1, s + 3)) for s in shape)
    seed = data.draw(st.integers(0, 2**16))
    fg = np.random.default_rng(seed).random(mask_shape) < 0.05
    plan = TilePlan(shape, tile, halo, (1,) * ndim, (0,) * ndim)
    voxels = tuple(n / m for n, m in zip(shape, mask_shape))
    got = tiles_touching(plan, fg, voxels)
    for index in plan.tiles():
        box = plan.read(index)
        # every mask voxel whose extent [j * v, (j + 1) * v) meets the box
        sl = tuple(
            slice(max(0, math.floor(a / v)), min(m, math.ceil(b / v)))
            for (a, b), v, m in zip(box, voxels, mask_shape)
        )
        assert got[index] == bool(fg[sl].any()), (index, box)


def _mostly_empty(tmp_path: Path) -> tuple[str, np.ndarray]:
    """A 3D image with two bright objects in one corner; the rest is exactly dark."""
    img = np.zeros((32, 96, 96), dtype=np.float32)
    img[2:9, 3:14, 5:20] = 1.0
    img[10:14, 20:30, 2:9] = 0.8
    return write_zarr(tmp_path / "img.zarr", img, chunks=(16, 32, 32)), img


def test_auto_mask_skips_empty_tiles_and_changes_nothing(tmp_path: Path) -> None:
    src, img = _mostly_empty(tmp_path)
    calls = tmp_path / "calls"
    calls.mkdir()
    fn = functools.partial(counting_cc_label, calls_dir=str(calls))
    full = tile_process(src, fn, (16, 32, 32), 4, write_to=tmp_path / "a.zarr", **SERIAL)
    n_full = len(list(calls.iterdir()))
    assert n_full == full.tiles_total == 18
    for f in calls.iterdir():
        f.unlink()
    masked = tile_process(
        src,
        fn,
        (16, 32, 32),
        4,
        write_to=tmp_path / "b.zarr",
        mask="auto",
        keep_stage=True,
        **SERIAL,
    )
    # the objects lie in tiles (0|1, 0, 0) and their halo-grown neighbours
    assert masked.fn_calls == len(list(calls.iterdir())) < n_full
    assert masked.tiles_skipped == masked.tiles_total - masked.fn_calls
    assert masked.tiles_completed == masked.tiles_total
    assert "skipped: no foreground" in masked.summary()
    a, b = zarr.open(str(tmp_path / "a.zarr"))[:], zarr.open(str(tmp_path / "b.zarr"))[:]
    assert_one_to_one(a, b)
    assert masked.num_labels == full.num_labels == 2
    # the status and the block map count them as skipped
    status = run_status(RunDir(masked.run_dir))
    assert status.tasks["segment"].states["skipped"] == masked.tiles_skipped
    assert "skipped" in status.format()
    _, _, _, task_states = BlockMap(RunDir(masked.run_dir)).tile_states()
    totals = task_states["segment"]
    assert totals["skipped"] == masked.tiles_skipped > 0
    assert sum(totals.values()) == masked.tiles_total


def test_mask_array_at_low_resolution_decides_the_tiles(tmp_path: Path) -> None:
    src, img = _mostly_empty(tmp_path)
    calls = tmp_path / "calls"
    calls.mkdir()
    fn = functools.partial(counting_cc_label, calls_dir=str(calls))
    mask = np.zeros((4, 12, 12), dtype=bool)  # 8x8x8 image voxels per mask voxel
    mask[0, 0, 0] = True  # image voxels [0:8, 0:8, 0:8]: tile (0, 0, 0) only, halo 0
    result = tile_process(
        src, fn, (16, 32, 32), 0, write_to=tmp_path / "m.zarr", mask=mask, **SERIAL
    )
    assert result.fn_calls == 1 and len(list(calls.iterdir())) == 1
    assert result.tiles_skipped == result.tiles_total - 1
    out = zarr.open(str(tmp_path / "m.zarr"))[:]
    assert out[16:].max() == 0 and out[:, 32:].max() == 0 and out[:, :, 32:].max() == 0
    assert out[:16, :32, :32].max() > 0
    # the same mask as a zarr array on disk
    path = write_zarr(tmp_path / "mask.zarr", mask.astype(np.uint8))
    again = tile_process(
        src, fn, (16, 32, 32), 0, write_to=tmp_path / "z.zarr", mask=path, **SERIAL
    )
    assert again.fn_calls == 1
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "z.zarr"))[:], out)


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (np.zeros((4, 4), bool), ValueError, r"mask has shape \(4, 4\) but the image has 3"),
        ("missing.zarr", FileNotFoundError, "mask='.*missing.zarr' does not exist"),
        (3, TypeError, "mask must be a numpy or zarr array"),
    ],
)
def test_bad_mask_is_refused_before_anything_is_written(
    tmp_path: Path, mask: object, error: type[Exception], match: str
) -> None:
    src, _ = _mostly_empty(tmp_path)
    if isinstance(mask, str):
        mask = str(tmp_path / mask)
    out = tmp_path / "out.zarr"
    with pytest.raises(error, match=match):
        tile_process(src, counting_cc_label, (16, 32, 32), 0, write_to=out, mask=mask, **SERIAL)
    assert not out.exists() and not Path(str(out) + ".blockbuster").exists()


def test_resume_with_another_mask_is_refused(tmp_path: Path) -> None:
    from blockbuster.config import RunConfig
    from blockbuster.pipeline.driver import prepare

    src, _ = _mostly_empty(tmp_path)
    config = RunConfig(tile_shape=(16, 32, 32), overlap=0, mask="auto").validate()
    run, _, _, lease = prepare(src, counting_cc_label, config, tmp_path / "o.zarr")
    lease.release()  # a driver stopped after it wrote the run directory
    other = np.zeros((32, 96, 96), bool)
    with pytest.raises(ValueError, match="other parameters"):
        prepare(src, counting_cc_label, config, tmp_path / "o.zarr", mask_array=other)
    # the same mask resumes
    _, _, resume, lease = prepare(src, counting_cc_label, config, tmp_path / "o.zarr")
    lease.release()
    assert resume


def test_foreground_digest_is_checked_by_workers(tmp_path: Path) -> None:
    from conftest import run_stage

    from blockbuster.config import RunConfig
    from blockbuster.pipeline.driver import prepare

    src, _ = _mostly_empty(tmp_path)
    config = RunConfig(tile_shape=(16, 32, 32), overlap=0, mask="auto").validate()
    run, _, _, lease = prepare(src, counting_cc_label, config, tmp_path / "o.zarr")
    lease.release()
    tiles = np.load(run.foreground_file)
    np.save(run.foreground_file, ~tiles)  # another mask than the run's
    with pytest.raises(ValueError, match="not the mask this run was started with"):
        run_stage(run, "segment")
