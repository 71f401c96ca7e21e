"""The stage: per-tile labels (core plus halo) that segment writes and stitch and relabel read."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import zarr

from blockbuster.io.boxes import Box
from blockbuster.pipeline.plan import TilePlan


def create_stage(path: Path, plan: TilePlan) -> zarr.Array[Any]:
    """Create the stage: one chunk per tile holding its labels over core plus halo.

    The array's leading axes index the tile grid; the trailing axes are
    ``plan.stage_tile_shape``. A tile writes exactly its own chunk, so concurrent writers never
    touch the same chunk, and a retried tile overwrites only itself.
    """
    rshape = plan.stage_tile_shape
    return zarr.create_array(
        store=str(path),
        shape=plan.grid + rshape,
        chunks=(1,) * plan.ndim + rshape,
        dtype=plan.stage_dtype,
        fill_value=0,
        overwrite=True,
    )


def open_stage(path: Path, mode: str = "r") -> zarr.Array[Any]:
    return zarr.open_array(store=str(path), mode=mode)


def stage_chunk_file(stage_root: Path, plan_ndim: int, index: tuple[int, ...]) -> Path:
    """The file holding tile ``index``'s stage chunk (default zarr 3 chunk key encoding)."""
    return Path(stage_root, "c", *(str(i) for i in index), *("0",) * plan_ndim)


def any_chunk_stored(array: zarr.Array[Any], box: Box) -> bool:
    """Whether any stored chunk (shard, if sharded) of ``array`` meets ``box`` (voxels).

    Where none does, the box reads as the fill value, so writing the fill value there can be
    skipped: writing zeros costs a full chunk encode check per chunk, a missing key one stat.
    """
    from zarr.core.sync import sync

    grid = array.shards or array.chunks
    ranges = [range(a // c, -(-b // c)) for (a, b), c in zip(box, grid, strict=True)]
    store_path = array.store_path
    prefix = f"{store_path.path}/" if store_path.path else ""
    keys = [prefix + array.metadata.encode_chunk_key(c) for c in itertools.product(*ranges)]

    async def check() -> bool:
        return any(await asyncio.gather(*(store_path.store.exists(k) for k in keys)))

    return bool(sync(check()))
