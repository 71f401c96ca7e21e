"""The block map's picture, gathered from data the workers hold anyway.

Reading a mid-plane of a huge volume at the end of a run would decode every chunk that plane
crosses (for 64-deep chunks of a 256-deep volume, a quarter of the volume). Instead, each
segment worker whose tile crosses the drawn plane saves that plane's piece of its tile (strided
to the map's resolution) next to its record, and each relabel worker does the same with the
final labels; the block map assembles the pieces. Cost: a few KiB per tile on the plane, no
extra reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from blockbuster.pipeline.plan import TilePlan

MAX_PIXELS = 1024
"""Longest side of the drawn plane; larger planes are strided."""


@dataclass(frozen=True)
class MapPlane:
    """Which plane the block map draws and at what stride.

    Parameters
    ----------
    t
        Time point drawn (plan axis 0), or None without a time axis.
    z
        Spatial z index drawn, or None for 2D images.
    step
        Stride in y and x.
    height, width
        Size of the full plane in voxels.
    """

    t: int | None
    z: int | None
    step: int
    height: int
    width: int

    @classmethod
    def of(cls, plan: TilePlan, plane: int | None = None, max_pixels: int = MAX_PIXELS) -> MapPlane:
        """The plane of ``plan`` to draw: the middle z (or ``plane``), the first time point."""
        ndim = plan.ndim - (1 if plan.time_axis else 0)
        if ndim not in (2, 3):
            raise ValueError(f"a block map needs a 2D or 3D image, not {ndim}D")
        z = None
        if ndim == 3:
            depth = plan.shape[-3]
            z = depth // 2 if plane is None else int(plane)
            if not 0 <= z < depth:
                raise ValueError(f"plane={plane} is outside the image's {depth} planes")
        height, width = plan.shape[-2:]
        step = max(1, math.ceil(max(height, width) / max_pixels))
        return cls(0 if plan.time_axis else None, z, step, height, width)

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the assembled (strided) plane."""
        return -(-self.height // self.step), -(-self.width // self.step)

    def head(self) -> tuple[int, ...]:
        """The plan coordinates of the plane before y and x."""
        return ((self.t,) if self.t is not None else ()) + ((self.z,) if self.z is not None else ())

    def crosses(self, plan: TilePlan, index: Sequence[int]) -> bool:
        """Whether tile ``index``'s core holds voxels of the drawn plane."""
        core = plan.core(index)
        return all(a <= h < b for h, (a, b) in zip(self.head(), core, strict=False))

    def piece(
        self, plan: TilePlan, index: Sequence[int], plane: NDArray[Any], origin: Sequence[int]
    ) -> NDArray[Any]:
        """The strided piece of tile ``index``'s core on the drawn plane.

        ``plane`` is a 2D array of the plane whose element ``[0, 0]`` is image voxel
        ``origin`` (y, x) and which covers the tile's core in y and x.
        """
        (y0, y1), (x0, x1) = plan.core(index)[-2:]
        s = self.step
        ys = -(-y0 // s) * s  # first multiple of the stride in the core
        xs = -(-x0 // s) * s
        return np.ascontiguousarray(
            plane[ys - origin[0] : y1 - origin[0] : s, xs - origin[1] : x1 - origin[1] : s]
        )

    def assemble(
        self, plan: TilePlan, pieces: Mapping[int, NDArray[Any]], fill: float = 0
    ) -> NDArray[Any]:
        """Put the pieces (by tile id) together into the strided plane; ``fill`` elsewhere."""
        dtype = np.result_type(*pieces.values()) if pieces else np.float32
        out = np.full(self.shape, fill, dtype=np.result_type(dtype, np.min_scalar_type(fill)))
        for tile, piece in pieces.items():
            (y0, _), (x0, _) = plan.core(plan.tile_index(tile))[-2:]
            r, c = -(-y0 // self.step), -(-x0 // self.step)
            out[r : r + piece.shape[0], c : c + piece.shape[1]] = piece
        return out
