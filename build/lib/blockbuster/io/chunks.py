"""Reading overlapping boxes from a chunked array, each stored chunk decoded once.

Neighbouring tiles read each other's edges (the halo), and zarr decodes every chunk a read
touches in full: read one by one, a tile whose halo reaches into its 26 neighbours' chunks
decodes 27 chunks to use one. :class:`ChunkCache` keeps decoded chunks (least recently used
out first, up to a byte budget), so the tiles of one segment block, read one after the
other, decode each chunk of their region once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from itertools import product
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

Selection = tuple[int | slice, ...]
"""One int (the axis is dropped) or one step-1 slice per array axis."""


class ChunkCache:
    """Decoded chunks of one array, shared by the reads of one worker's blocks.

    Parameters
    ----------
    array
        The zarr array read (its inner chunks are the decoding unit, sharded or not).
    capacity
        Bytes of decoded chunks kept; a chunk larger than that is read and not kept.

    Notes
    -----
    Not thread-safe: one reader thread uses it. ``decoded`` counts chunk decodes, so a
    benchmark or test can see that a chunk was decoded once.
    """

    def __init__(self, array: zarr.Array[Any], capacity: int) -> None:
        self.array = array
        self.capacity = int(capacity)
        self.chunks: tuple[int, ...] = tuple(int(c) for c in array.chunks)
        self.shape: tuple[int, ...] = tuple(int(s) for s in array.shape)
        self._kept: OrderedDict[tuple[int, ...], NDArray[Any]] = OrderedDict()
        self._bytes = 0
        self.decoded = 0

    @classmethod
    def for_selections(cls, array: zarr.Array[Any], selections: Sequence[Selection]) -> ChunkCache:
        """A cache large enough to keep every chunk that ``selections`` meet."""
        cache = cls(array, 0)
        cache.retain(selections)
        return cache

    def retain(self, selections: Sequence[Selection]) -> None:
        """Make the cache the one ``selections`` need: keep the decoded chunks they meet, drop
        the others, and hold as many bytes as every chunk they meet.

        The next block of a worker often borders its last one, so the chunks they share (the
        halo of one is the core of the other) are not decoded again, while memory stays
        bounded by one block's region.
        """
        ranges = [_ranges(sel, self.shape) for sel in selections]
        union = [
            (min(r[a][0] for r in ranges), max(r[a][1] for r in ranges))
            for a in range(len(self.shape))
        ]
        count = chunks_touching(self.chunks, self.shape, union)
        chunk_bytes = math.prod(min(c, n) for c, n in zip(self.chunks, self.shape, strict=True))
        self.capacity = count * chunk_bytes * self.array.dtype.itemsize
        lo = [a // c for (a, _), c in zip(union, self.chunks, strict=True)]
        hi = [(b - 1) // c for (_, b), c in zip(union, self.chunks, strict=True)]
        for key in list(self._kept):
            if not all(a <= k <= b for k, a, b in zip(key, lo, hi, strict=True)):
                self._bytes -= self._kept.pop(key).nbytes

    def read(self, selection: Selection) -> NDArray[Any]:
        """``array[selection]``, assembled from decoded chunks.

        Parameters
        ----------
        selection
            One int or one slice (step 1, bounds inside the array) per axis.
        """
        ranges = _ranges(selection, self.shape)
        keep_axis = [isinstance(s, slice) for s in selection]
        out = np.empty(tuple(b - a for a, b in ranges), dtype=self.array.dtype)
        if out.size:
            per_axis = [
                range(a // c, (b - 1) // c + 1)
                for (a, b), c in zip(ranges, self.chunks, strict=True)
            ]
            for key in product(*per_axis):
                chunk = self._chunk(key)
                src, dst = [], []
                for (a, b), k, c, n in zip(ranges, key, self.chunks, chunk.shape, strict=True):
                    lo = k * c
                    s0, s1 = max(a, lo), min(b, lo + n)
                    src.append(slice(s0 - lo, s1 - lo))
                    dst.append(slice(s0 - a, s1 - a))
                out[tuple(dst)] = chunk[tuple(src)]
        squeeze = tuple(i for i, keep in enumerate(keep_axis) if not keep)
        return out.squeeze(axis=squeeze) if squeeze else out

    def _chunk(self, key: tuple[int, ...]) -> NDArray[Any]:
        kept = self._kept.get(key)
        if kept is not None:
            self._kept.move_to_end(key)
            return kept
        sel = tuple(
            slice(k * c, min((k + 1) * c, n))
            for k, c, n in zip(key, self.chunks, self.shape, strict=True)
        )
        chunk: NDArray[Any] = np.asarray(self.array[sel])
        self.decoded += 1
        if chunk.nbytes <= self.capacity:
            self._kept[key] = chunk
            self._bytes += chunk.nbytes
            while self._bytes > self.capacity:
                _, old = self._kept.popitem(last=False)
                self._bytes -= old.nbytes
        return chunk

    def clear(self) -> None:
        """Drop every kept chunk."""
        self._kept.clear()
        self._bytes = 0


def _ranges(selection: Selection, shape: Sequence[int]) -> list[tuple[int, int]]:
    if len(selection) != len(shape):
        raise ValueError(f"a selection of {len(selection)} axes for an array of {len(shape)}")
    out = []
    for s, n in zip(selection, shape, strict=True):
        if isinstance(s, slice):
            start, stop, step = s.indices(n)
            if step != 1:
                raise ValueError("ChunkCache reads step-1 slices only")
            out.append((start, max(start, stop)))
        else:
            out.append((int(s), int(s) + 1))
    return out


def chunks_touching(
    chunks: Sequence[int], shape: Sequence[int], box: Sequence[tuple[int, int]]
) -> int:
    """How many chunks of an array of ``shape`` chunked by ``chunks`` the box meets."""
    return math.prod(
        0 if b <= a else (min(b, n) - 1) // c - a // c + 1
        for (a, b), c, n in zip(box, chunks, shape, strict=True)
    )
