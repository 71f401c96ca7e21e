"""The block map's picture, gathered from data the workers hold anyway.

Reading planes of a huge volume at the end of a run would decode every chunk those planes
cross (for 64-deep chunks of a 256-deep volume, a quarter of the volume per plane). Instead,
each segment worker saves one plane of its tile (strided to the map's resolution) next to its
record, and each relabel worker does the same with the final labels; the block map assembles
the pieces. Cost: a few KiB per tile, no extra reads.

For a 3D image the map shows *every* layer of tiles along z (small multiples: one panel per
tile layer), each panel at the middle plane of its layer's cores, so that a drawn plane never
falls on a tile boundary and every tile is on the map from its first record on. The panels
are strided together so that the whole mosaic stays within :data:`MAX_PIXELS` a side: the map
costs the same memory for 10 tiles as for 100,000.
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
"""Longest side of the drawn mosaic (all panels); larger images are strided."""

GAP = 4
"""Pixels (at the map's stride) between two panels of the mosaic."""


@dataclass(frozen=True)
class MapPlane:
    """Which planes the block map draws, at what stride, and where each panel sits.

    Parameters
    ----------
    t
        Time point drawn (plan axis 0), or None without a time axis.
    zs
        Per layer of tiles along z, the z index drawn: the middle plane of the layer's cores;
        empty for 2D images.
    layers
        Per layer of tiles along z, its cores' z range ``(start, stop)``; empty for 2D.
    step
        Stride in y and x.
    height, width
        Size of a full plane in voxels.
    columns
        Panels per row of the mosaic.
    """

    t: int | None
    zs: tuple[int, ...]
    layers: tuple[tuple[int, int], ...]
    step: int
    height: int
    width: int
    columns: int = 1

    @classmethod
    def of(cls, plan: TilePlan, max_pixels: int = MAX_PIXELS) -> MapPlane:
        """The planes of ``plan`` to draw: the middle z of each tile layer, the first time
        point."""
        ndim = plan.ndim - (1 if plan.time_axis else 0)
        if ndim not in (2, 3):
            raise ValueError(f"a block map needs a 2D or 3D image, not {ndim}D")
        height, width = plan.shape[-2:]
        layers: tuple[tuple[int, int], ...] = ()
        if ndim == 3:
            tz, depth = plan.tile[-3], plan.shape[-3]
            layers = tuple((k * tz, min((k + 1) * tz, depth)) for k in range(plan.grid[-3]))
        n = max(len(layers), 1)
        # a mosaic about 4:3 (landscape) whatever the number of panels
        columns = int(np.clip(math.ceil(math.sqrt(n * height / (0.75 * width))), 1, n))
        rows = math.ceil(n / columns)
        step = max(1, math.ceil(max(rows * height, columns * width) / max_pixels))
        zs = tuple(a + (b - a - 1) // 2 for a, b in layers)
        return cls(0 if plan.time_axis else None, zs, layers, step, height, width, columns)

    # -- geometry -----------------------------------------------------------------------------

    @property
    def num_panels(self) -> int:
        return max(len(self.layers), 1)

    @property
    def rows(self) -> int:
        return math.ceil(self.num_panels / self.columns)

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of one assembled (strided) panel."""
        return -(-self.height // self.step), -(-self.width // self.step)

    @property
    def mosaic_shape(self) -> tuple[int, int]:
        """Shape of the mosaic of all panels (gaps included)."""
        ph, pw = self.shape
        return self.rows * ph + (self.rows - 1) * GAP, self.columns * pw + (self.columns - 1) * GAP

    def panel_origin(self, layer: int) -> tuple[int, int]:
        """Mosaic pixel ``(row, column)`` of panel ``layer``'s first pixel."""
        ph, pw = self.shape
        r, c = divmod(layer, self.columns)
        return r * (ph + GAP), c * (pw + GAP)

    def panel_name(self, layer: int) -> str:
        """``"z 10-19 (plane 14)"``: the layer's core z range and the plane drawn; "" in 2D."""
        if not self.layers:
            return ""
        a, b = self.layers[layer]
        return f"z {a}-{b - 1} (plane {self.zs[layer]})"

    def layer_of(self, plan: TilePlan, index: Sequence[int]) -> int:
        """The panel tile ``index`` is drawn in (its z layer; 0 in 2D)."""
        return int(index[-3]) if self.layers else 0

    def head(self, plan: TilePlan, index: Sequence[int]) -> tuple[int, ...]:
        """The plan coordinates before y and x of the plane drawn through tile ``index``."""
        t = (self.t,) if self.t is not None else ()
        return t + ((self.zs[int(index[-3])],) if self.layers else ())

    def crosses(self, plan: TilePlan, index: Sequence[int]) -> bool:
        """Whether tile ``index`` is on the map (every tile but other time points')."""
        return self.t is None or int(index[0]) == self.t

    def piece(
        self, plan: TilePlan, index: Sequence[int], plane: NDArray[Any], origin: Sequence[int]
    ) -> NDArray[Any]:
        """The strided piece of tile ``index``'s core on its drawn plane.

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
        """Put the pieces (by tile id) together into the mosaic of panels; ``fill`` elsewhere
        (gaps between panels included)."""
        dtype = np.result_type(*pieces.values()) if pieces else np.float32
        out = np.full(
            self.mosaic_shape, fill, dtype=np.result_type(dtype, np.min_scalar_type(fill))
        )
        for tile, piece in pieces.items():
            index = plan.tile_index(tile)
            (y0, _), (x0, _) = plan.core(index)[-2:]
            pr, pc = self.panel_origin(self.layer_of(plan, index))
            r, c = pr + -(-y0 // self.step), pc + -(-x0 // self.step)
            out[r : r + piece.shape[0], c : c + piece.shape[1]] = piece
        return out

    def panel(self, mosaic: NDArray[Any], layer: int) -> NDArray[Any]:
        """Panel ``layer`` of an assembled mosaic."""
        r, c = self.panel_origin(layer)
        ph, pw = self.shape
        return mosaic[r : r + ph, c : c + pw]

    def tile_lookup(self, plan: TilePlan) -> tuple[NDArray[Any], NDArray[Any]]:
        """Per pixel row and column of a panel, the tile grid row and column it lies in."""
        ph, pw = self.shape
        ty, tx = plan.tile[-2:]
        rows = np.minimum(np.arange(ph) * self.step // ty, plan.grid[-2] - 1)
        cols = np.minimum(np.arange(pw) * self.step // tx, plan.grid[-1] - 1)
        return rows, cols
