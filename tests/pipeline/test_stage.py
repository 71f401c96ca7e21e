"""The stage's files: a file per tile for large tiles, a shard per segment block for small
ones, and the per-tile sizes read back from them without zarr."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from blockbuster.pipeline.plan import TilePlan
from blockbuster.pipeline.stage import (
    SHARD_STAGE_VOXELS,
    StageFiles,
    create_stage,
    stage_shard_tiles,
)


def _plan(shape: tuple[int, ...], tile: tuple[int, ...], overlap: int) -> TilePlan:
    n = len(shape)
    return TilePlan(shape, tile, (overlap,) * n, (1,) * n, (0,) * n)


def test_small_tiles_share_a_shard_per_segment_block_and_large_ones_do_not() -> None:
    small = _plan((64, 256, 256), (8, 32, 32), 2)
    assert stage_shard_tiles(small) == small.segment_group_shape()
    assert math.prod(small.segment_group_shape()) > 1
    large = _plan((256, 2048, 2048), (64, 512, 512), 8)
    assert math.prod(large.segment_group_shape()) * math.prod(large.stage_tile_shape) > (
        SHARD_STAGE_VOXELS
    )
    assert stage_shard_tiles(large) is None


@pytest.mark.parametrize("shards", [True, False], ids=["shards", "a file per tile"])
def test_chunk_sizes_equal_what_zarr_stored(
    tmp_path: Path, shards: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import blockbuster.pipeline.stage as stage_module

    plan = _plan((160, 160), (8, 8), 2)
    if not shards:
        monkeypatch.setattr(stage_module, "SHARD_STAGE_VOXELS", 1)
    stage = create_stage(tmp_path / "stage.zarr", plan)
    files = StageFiles(tmp_path / "stage.zarr", plan)
    assert (stage.shards is not None) == (files.shard is not None) == shards
    rng = np.random.default_rng(1)
    indices = [tuple(int(v) for v in i) for i in np.ndindex(*plan.grid)]
    written = set(indices[::3])
    for index in sorted(written):
        stage[index] = rng.integers(1, 50, plan.stage_tile_shape, dtype=np.uint32)
    files = StageFiles(tmp_path / "stage.zarr", plan)
    for index in indices:
        size = files.chunk_bytes(index)
        assert (size is not None) == (index in written)
    # each size is that of the chunk's encoded bytes: zarr reads them back to the same values
    if files.shard is None:
        for index in written:
            assert files.chunk_bytes(index) == files.file(index).stat().st_size
    else:
        shard_files = {files.file(i) for i in indices}
        assert len(shard_files) == math.prod(
            -(-g // s) for g, s in zip(plan.grid, files.shard, strict=True)
        )
        assert {p for p in (tmp_path / "stage.zarr" / "c").rglob("*") if p.is_file()} == {
            files.file(i) for i in written
        }


def test_a_damaged_shard_reads_as_nothing_stored_and_is_removed(tmp_path: Path) -> None:
    plan = _plan((160, 160), (8, 8), 2)
    stage = create_stage(tmp_path / "stage.zarr", plan)
    stage[0, 0] = np.ones(plan.stage_tile_shape, np.uint32)
    stage[0, 1] = np.full(plan.stage_tile_shape, 2, np.uint32)
    files = StageFiles(tmp_path / "stage.zarr", plan)
    path = files.file((0, 0))
    assert files.file((0, 1)) == path and files.chunk_bytes((0, 1)) is not None
    assert not files.remove_damaged_shard((0, 0))  # whole: kept
    good = path.read_bytes()
    for damaged in (good[:-3], good[:-20] + bytes(20), good[: len(good) // 2]):
        path.write_bytes(damaged)
        files = StageFiles(tmp_path / "stage.zarr", plan)
        assert files.chunk_bytes((0, 0)) is None and files.chunk_bytes((0, 1)) is None
        assert files.remove_damaged_shard((0, 1)) and not path.exists()
    # zarr then writes the shard anew
    stage[0, 1] = np.full(plan.stage_tile_shape, 3, np.uint32)
    files = StageFiles(tmp_path / "stage.zarr", plan)
    assert files.chunk_bytes((0, 0)) is None and files.chunk_bytes((0, 1)) is not None
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "stage.zarr"))[0, 1], 3)
