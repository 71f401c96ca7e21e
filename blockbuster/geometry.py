"""The tile plan: how an image is cut into tiles, and where each tile reads and writes.

Everything here is in voxels except the ``*_roi`` methods, which give daisy the same boxes in
world units (``voxel_size`` times voxels, shifted by the image offset).

A *tile* is the part of the image whose final labels one block writes (its *core*). The block
that segments it reads the core grown by ``overlap`` voxels on each side (the *halo*), clipped
at the image edges: the halo never invents data past the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from funlib.geometry import Coordinate, Roi

Box = tuple[tuple[int, int], ...]
"""Per-axis half-open voxel ranges ``((start, stop), ...)``."""


def normalize_tile_shape(
    tile_shape: Sequence[int], spatial_shape: Sequence[int]
) -> tuple[int, ...]:
    """Check ``tile_shape`` against the image and clip it to the image extent.

    Parameters
    ----------
    tile_shape
        Tile size in voxels, one entry per spatial axis.
    spatial_shape
        The image's spatial shape in voxels.

    Returns
    -------
    tuple of int
        The tile shape, each axis clipped to the image extent.
    """
    tile = tuple(tile_shape)
    if len(tile) != len(spatial_shape):
        raise ValueError(
            f"tile_shape={tile} has {len(tile)} axes but the image has {len(spatial_shape)} "
            f"spatial axes (shape {tuple(spatial_shape)}); give one tile size per spatial axis"
        )
    for t in tile:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
            raise ValueError(
                f"tile_shape={tile} must hold positive integers (voxels per tile axis)"
            )
    return tuple(int(min(t, s)) for t, s in zip(tile, spatial_shape, strict=True))


def normalize_overlap(overlap: int | Sequence[int], tile_shape: Sequence[int]) -> tuple[int, ...]:
    """Expand ``overlap`` into one halo width per spatial axis.

    A scalar applies to every axis whose tile is longer than one voxel, so
    ``tile_shape=(1, 2048, 2048), overlap=20`` gives ``(0, 20, 20)``: plane-by-plane tiles with a
    20-voxel halo in y and x. A sequence sets every axis explicitly.

    Parameters
    ----------
    overlap
        Halo width in voxels, a scalar or one value per spatial axis.
    tile_shape
        The (already normalized) tile shape.

    Returns
    -------
    tuple of int
        Halo width per spatial axis.
    """
    if isinstance(overlap, (int, np.integer)) and not isinstance(overlap, bool):
        if overlap < 0:
            raise ValueError(f"overlap={overlap} must be >= 0 (halo voxels per side)")
        return tuple(int(overlap) if t > 1 else 0 for t in tile_shape)
    try:
        values = tuple(overlap)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            f"overlap={overlap!r} must be an int or one int per spatial axis"
        ) from None
    if len(values) != len(tile_shape):
        raise ValueError(
            f"overlap={values} has {len(values)} entries but tile_shape has {len(tile_shape)}; "
            "give one halo width per spatial axis or a single int"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"overlap={values} must hold integers >= 0 (halo voxels per side)")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class TilePlan:
    """The tiling of one image.

    Parameters
    ----------
    shape
        Spatial shape of the image in voxels.
    tile
        Tile (core) shape in voxels, already clipped to ``shape``.
    overlap
        Halo width per axis in voxels.
    voxel_size
        World size of one voxel per axis.
    offset
        World coordinate of the image's first voxel.
    """

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    voxel_size: tuple[int, ...]
    offset: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of tiles along each axis."""
        return tuple(math.ceil(s / t) for s, t in zip(self.shape, self.tile, strict=True))

    @property
    def num_tiles(self) -> int:
        return math.prod(self.grid)

    @property
    def stage_tile_shape(self) -> tuple[int, ...]:
        """Shape of one tile's staged labels: the core plus the halo on both sides."""
        return tuple(t + 2 * o for t, o in zip(self.tile, self.overlap, strict=True))

    @property
    def stage_dtype(self) -> str:
        """dtype of staged labels: local labels never exceed a stage tile's voxel count."""
        return "uint32" if math.prod(self.stage_tile_shape) < 2**32 else "uint64"

    # -- tiles -------------------------------------------------------------------------------

    def tile_id(self, index: Sequence[int]) -> int:
        """Dense tile id (C order over the grid) of a grid index."""
        return int(np.ravel_multi_index(tuple(index), self.grid))

    def tile_index(self, tile_id: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(tile_id, self.grid))

    def tiles(self) -> Iterator[tuple[int, ...]]:
        """All grid indices in tile-id order."""
        yield from np.ndindex(*self.grid)

    def core(self, index: Sequence[int]) -> Box:
        """Voxel box a tile writes."""
        return tuple(
            (i * t, min((i + 1) * t, s))
            for i, t, s in zip(index, self.tile, self.shape, strict=True)
        )

    def read(self, index: Sequence[int]) -> Box:
        """Voxel box a tile's segmentation reads: the core plus the halo, clipped to the image."""
        return tuple(
            (max(a - o, 0), min(b + o, s))
            for (a, b), o, s in zip(self.core(index), self.overlap, self.shape, strict=True)
        )

    def stage_origin(self, index: Sequence[int]) -> tuple[int, ...]:
        """Image voxel that sits at position 0 of the tile's stage chunk."""
        return tuple(i * t - o for i, t, o in zip(index, self.tile, self.overlap, strict=True))

    def upper_neighbors(self, index: Sequence[int]) -> Iterator[tuple[int, tuple[int, ...]]]:
        """Yield ``(axis, neighbor_index)`` for the neighbor one tile up along each axis."""
        for axis in range(self.ndim):
            if index[axis] + 1 < self.grid[axis]:
                nb = list(index)
                nb[axis] += 1
                yield axis, tuple(nb)

    # -- world units for daisy ---------------------------------------------------------------

    @property
    def image_roi(self) -> Roi:
        return Roi(self.offset, Coordinate(self.shape) * Coordinate(self.voxel_size))

    def world(self, voxels: Sequence[int]) -> Coordinate:
        return Coordinate(voxels) * Coordinate(self.voxel_size)

    def index_of_write_roi(self, write_roi: Roi) -> tuple[int, ...]:
        """Grid index of the tile whose core a daisy block's write ROI is."""
        rel = (write_roi.begin - Coordinate(self.offset)) / Coordinate(self.voxel_size)
        return tuple(int(r) // t for r, t in zip(rel, self.tile, strict=True))

    def task_rois(self, context_voxels: Sequence[int]) -> tuple[Roi, Roi, Roi]:
        """``(total_roi, read_roi, write_roi)`` for a daisy task whose blocks are the tiles and
        whose read ROI is the tile grown by ``context_voxels`` on both sides."""
        ctx = self.world(context_voxels)
        write = Roi(self.offset, self.world(self.tile))
        return self.image_roi.grow(ctx, ctx), write.grow(ctx, ctx), write


def box_slices(box: Box, origin: Sequence[int] | None = None) -> tuple[slice, ...]:
    """Slices selecting ``box`` from an array whose position 0 is image voxel ``origin``."""
    origin = origin if origin is not None else (0,) * len(box)
    return tuple(slice(a - o, b - o) for (a, b), o in zip(box, origin, strict=True))


def intersect(a: Box, b: Box) -> Box:
    return tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b, strict=True))
