"""Voxel boxes: per-axis half-open ranges, and the slices that select them from an array."""

from __future__ import annotations

from collections.abc import Sequence

Box = tuple[tuple[int, int], ...]
"""Per-axis half-open voxel ranges ``((start, stop), ...)``."""


def box_slices(box: Box, origin: Sequence[int] | None = None) -> tuple[slice, ...]:
    """Slices selecting ``box`` from an array whose position 0 is image voxel ``origin``.

    >>> box_slices(((2, 5), (0, 4)), origin=(1, 0))
    (slice(1, 4, None), slice(0, 4, None))
    """
    origin = origin if origin is not None else (0,) * len(box)
    return tuple(slice(a - o, b - o) for (a, b), o in zip(box, origin, strict=True))


def intersect(a: Box, b: Box) -> Box:
    """The voxels two boxes share (an empty range on an axis where they do not meet)."""
    return tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b, strict=True))
