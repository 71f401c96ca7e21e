"""Reads through the chunk cache equal zarr's reads, and decode each chunk once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.io.chunks import ChunkCache, chunks_touching


@st.composite
def arrays_and_selections(draw: st.DrawFn):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 13)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, n + 2)) for n in shape)
    selections = []
    for _ in range(draw(st.integers(1, 4))):
        sel: list[int | slice] = []
        for n in shape:
            if draw(st.booleans()) and n > 0:
                sel.append(draw(st.integers(0, n - 1)))
            else:
                a = draw(st.integers(0, n))
                sel.append(slice(a, draw(st.integers(a, n))))
        selections.append(tuple(sel))
    return shape, chunks, selections


@settings(max_examples=60, deadline=None)
@given(arrays_and_selections())
def test_cached_reads_equal_zarr_reads(tmp_path_factory, case) -> None:
    shape, chunks, selections = case
    path = tmp_path_factory.mktemp("chunks") / "a.zarr"
    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="int32")
    arr[...] = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    cache = ChunkCache.for_selections(arr, selections)
    for sel in selections:
        np.testing.assert_array_equal(cache.read(sel), arr[sel])


def test_neighbouring_reads_decode_each_chunk_once(tmp_path: Path) -> None:
    """Tiles of 8x8 with a 2-voxel halo on 8x8 chunks: read alone each decodes 9 chunks,
    through the cache the 4 tiles of a 2x2 block decode the 16 chunks their region meets."""
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(32, 32), chunks=(8, 8), dtype="u2")
    arr[...] = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    reads = [
        (slice(8 * i + 8 - 2, 8 * i + 16 + 2), slice(8 * j + 8 - 2, 8 * j + 16 + 2))
        for i in range(2)
        for j in range(2)
    ]
    cache = ChunkCache.for_selections(arr, reads)
    for sel in reads:
        np.testing.assert_array_equal(cache.read(sel), arr[sel])
    assert cache.decoded == 16 == chunks_touching((8, 8), (32, 32), ((6, 26), (6, 26)))
    assert sum(chunks_touching((8, 8), (32, 32), ((s.start, s.stop),) * 2) for s, _ in reads) == 36


def test_a_small_budget_evicts_and_still_reads_right(tmp_path: Path) -> None:
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(20, 20), chunks=(5, 5), dtype="f4")
    arr[...] = np.random.default_rng(0).random((20, 20), dtype=np.float32)
    cache = ChunkCache(arr, capacity=2 * 25 * 4)  # two chunks
    for _ in range(2):
        np.testing.assert_array_equal(cache.read((slice(0, 20), slice(3, 12))), arr[:, 3:12])
    assert cache.decoded == 2 * 4 * 3  # nothing kept from one pass to the next
    assert cache._bytes <= cache.capacity


def test_retain_keeps_the_chunks_the_next_block_shares_and_drops_the_rest(tmp_path) -> None:
    """A worker's next block: the chunks it shares with the last one are not decoded again,
    the others are dropped, and the cache never holds more than the new region needs."""
    data = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(8, 8), dtype="f4")
    arr[:] = data
    first = (slice(0, 18), slice(0, 18))  # chunk rows and columns 0..2
    cache = ChunkCache.for_selections(arr, [first])
    np.testing.assert_array_equal(cache.read(first), data[first])
    assert cache.decoded == 9
    second = (slice(14, 32), slice(0, 18))  # chunk rows 1..3: rows 1 and 2 are shared
    cache.retain([second])
    assert len(cache._kept) == 6 and cache._bytes <= cache.capacity == 9 * 64 * 4
    np.testing.assert_array_equal(cache.read(second), data[second])
    assert cache.decoded == 9 + 3
