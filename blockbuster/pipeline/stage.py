"""The stage: per-tile labels (core plus halo) that segment writes and relabel reads.

One zarr chunk per tile. Where tiles are small, the chunks of each segment block's tiles are
kept in one shard (zarr 3 sharding), so that a run of 100,000 small tiles leaves thousands of
files, not 100,000: one worker writes a segment block, so a shard never has two writers, and
zarr writes each new version of a shard under a temporary name, then renames it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numpy.typing import NDArray

from blockbuster.io.boxes import Box
from blockbuster.pipeline.plan import SEGMENT_SMALL_GROUP_VOXELS, TilePlan

#: a segment block's tiles share one shard when their staged voxels are at most this many:
#: the small tiles whose blocks segment reads and stages as one (large tiles' chunks read and
#: write faster as files of their own, and are few)
SHARD_STAGE_VOXELS = SEGMENT_SMALL_GROUP_VOXELS


def stage_shard_tiles(plan: TilePlan) -> tuple[int, ...] | None:
    """Tiles per shard along each grid axis (a segment block's), or None: a file per tile."""
    group = plan.segment_group_shape()
    tiles = math.prod(group)
    if tiles > 1 and tiles * math.prod(plan.stage_tile_shape) <= SHARD_STAGE_VOXELS:
        return group
    return None


def create_stage(path: Path, plan: TilePlan) -> zarr.Array[Any]:
    """Create the stage: one chunk per tile holding its labels over core plus halo.

    The array's leading axes index the tile grid; the trailing axes are
    ``plan.stage_tile_shape``. A tile writes exactly its own chunk, and a shard
    (:func:`stage_shard_tiles`) holds one segment block's tiles, so concurrent writers never
    touch the same file, and a retried tile overwrites only itself.
    """
    rshape = plan.stage_tile_shape
    group = stage_shard_tiles(plan)
    return zarr.create_array(
        store=str(path),
        shape=plan.grid + rshape,
        chunks=(1,) * plan.ndim + rshape,
        shards=None if group is None else group + rshape,
        dtype=plan.stage_dtype,
        fill_value=0,
        overwrite=True,
    )


def open_stage(path: Path, mode: str = "r") -> zarr.Array[Any]:
    return zarr.open_array(store=str(path), mode=mode)


_EMPTY = 2**64 - 1  # the sharding index's (offset, nbytes) of a chunk not stored


class StageFiles:
    """What the stage holds on disk per tile, read from its files (not through zarr).

    Parameters
    ----------
    root
        The stage array's folder.
    plan
        The run's tile plan (it fixes the stage's chunks and shards).

    Notes
    -----
    A sharded stage keeps an index at the end of each shard: ``(offset, nbytes)`` per chunk as
    little-endian uint64 (``2**64 - 1`` twice for a chunk not stored), then its CRC-32C (the
    zarr 3 sharding codec's default index codecs). Indexes are read once per shard and kept;
    :meth:`forget` drops one that a write changed.
    """

    def __init__(self, root: Path, plan: TilePlan) -> None:
        self.root = Path(root)
        self.plan = plan
        self.shard = stage_shard_tiles(plan)
        self._indexes: dict[tuple[int, ...], NDArray[np.uint64] | None] = {}

    def file(self, index: tuple[int, ...]) -> Path:
        """The file holding tile ``index``'s chunk (default zarr 3 chunk key encoding)."""
        where = index if self.shard is None else self._key(index)
        return Path(self.root, "c", *(str(i) for i in where), *("0",) * self.plan.ndim)

    def _key(self, index: tuple[int, ...]) -> tuple[int, ...]:
        assert self.shard is not None
        return tuple(i // g for i, g in zip(index, self.shard, strict=True))

    def chunk_bytes(self, index: tuple[int, ...]) -> int | None:
        """The stored size of tile ``index``'s chunk; None when it is not stored, or its shard
        is missing or damaged (its index unreadable, or pointing past the file's end)."""
        if self.shard is None:
            try:
                return os.stat(self.file(index)).st_size
            except FileNotFoundError:
                return None
        table = self._index(index)
        if table is None:
            return None
        local = tuple(i % g for i, g in zip(index, self.shard, strict=True))
        offset, nbytes = (int(v) for v in table[local])
        return None if offset == _EMPTY else nbytes

    def remove_damaged_shard(self, index: tuple[int, ...]) -> bool:
        """Remove the shard of tile ``index`` if it is on disk but its index is unreadable
        (zarr could not add a chunk to it); True if it did. Its tiles' records are then
        damaged too, so the segment block rewriting this shard redoes them all."""
        path = self.file(index)
        if self.shard is None or not path.exists():
            return False
        self.forget(index)
        if self._index(index) is not None:
            return False
        path.unlink(missing_ok=True)
        self.forget(index)
        return True

    def forget(self, index: tuple[int, ...]) -> None:
        """Read the shard of tile ``index`` again on the next look (it was written)."""
        if self.shard is not None:
            self._indexes.pop(self._key(index), None)

    def _index(self, index: tuple[int, ...]) -> NDArray[np.uint64] | None:
        """The index of tile ``index``'s shard (read once, then kept), or None if unreadable."""
        key = self._key(index)
        if key not in self._indexes:
            self._indexes[key] = self._read_index(self.file(index))
        return self._indexes[key]

    def _read_index(self, path: Path) -> NDArray[np.uint64] | None:
        assert self.shard is not None
        n = math.prod(self.shard)
        size = 16 * n + 4
        try:
            with open(path, "rb") as f:
                total = os.fstat(f.fileno()).st_size
                raw = os.pread(f.fileno(), size, total - size) if total >= size else b""
        except FileNotFoundError:
            return None
        if len(raw) != size:
            return None
        body, crc = raw[:-4], raw[-4:]
        if np.uint32(google_crc32c.value(body)).tobytes() != crc:
            return None
        table = np.frombuffer(body, dtype="<u8").reshape(*self.shard, 2)
        stored = table[..., 0] != _EMPTY
        if (table[..., 0][stored] + table[..., 1][stored] > total - size).any():
            return None  # a chunk past the data: not the file this index was written for
        return table


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
