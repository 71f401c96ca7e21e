"""The tile plan: how an image is cut into tiles, and where each tile reads and writes.

Everything here is in voxels except the ``*_roi`` methods, which give daisy the same boxes in
world units (``voxel_size`` times voxels, shifted by the image offset).

A *tile* is the part of the image whose final labels one block writes (its *core*). The block
that segments it reads the core grown by ``overlap`` voxels on each side (the *halo*), clipped
at the image edges: the halo never invents data past the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from funlib.geometry import Coordinate, Roi

from blockbuster.io.boxes import Box
from blockbuster.run.task import Block, Task

GROUP_STAGE_VOXELS = 2**24
"""Most staged voxels one stitch or relabel block reads (64 MiB of uint32 labels)."""
GROUP_MAX_TILES = 512
"""Most tiles in one stitch or relabel block."""
GROUP_MIN_BLOCKS = 16
"""Fewest blocks a stitch or relabel task is cut into (so workers share the work)."""
SEGMENT_GROUP_TILES = 8
"""Most tiles in one segment block: a worker reads, runs and writes them as a pipeline, and a
crash costs at most the tiles it had in flight."""
SEGMENT_SMALL_GROUP_TILES = 64
"""Most tiles in one segment block of small tiles (that many stage at most
``SEGMENT_SMALL_GROUP_VOXELS``): there zarr's cost per call, daisy's per block and the files
per block are what a tile costs, and a larger block shares more of its halo's chunks."""
SEGMENT_SMALL_GROUP_VOXELS = 2**23
SEGMENT_GROUP_READ_VOXELS = 2**26
"""Most voxels (per channel) one segment block's region spans with its halo: the decoded
chunks its tiles share are kept for it (see :class:`~blockbuster.io.chunks.ChunkCache`)."""
SEGMENT_MIN_BLOCKS = 16
"""Fewest blocks a segment task is cut into (so workers share the work)."""


def _grow(
    grid: Sequence[int],
    axes: Sequence[int],
    fits: Callable[[list[int]], bool],
    last_axis_first: bool,
) -> tuple[int, ...]:
    """Grow a block of one tile by doubling, along ``axes``, the axis with the most blocks
    left (ties: the first axis, or the last with ``last_axis_first``) while ``fits``."""
    group = [1] * len(grid)
    while True:
        order = sorted(
            axes,
            key=lambda a: (-math.ceil(grid[a] / group[a]), -a if last_axis_first else a),
        )
        for axis in order:
            if group[axis] >= grid[axis]:
                continue
            trial = list(group)
            trial[axis] = min(2 * group[axis], grid[axis])
            if fits(trial):
                group = trial
                break
        else:
            return tuple(group)


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
    time_axis
        The first axis is time: tiles hold one time point (tile 1, overlap 0 along it) and
        are never stitched across it.
    """

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    voxel_size: tuple[int, ...]
    offset: tuple[int, ...]
    time_axis: bool = False

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
        """Yield ``(axis, neighbor_index)`` for the neighbor one tile up along each axis
        (spatial axes only: time points are segmented independently)."""
        for axis in range(1 if self.time_axis else 0, self.ndim):
            if index[axis] + 1 < self.grid[axis]:
                nb = list(index)
                nb[axis] += 1
                yield axis, tuple(nb)

    def tiles_in(self, group: Box) -> Iterator[tuple[int, ...]]:
        """Grid indices of the tiles in ``group`` (a box of grid indices), in tile-id order."""
        for rel in np.ndindex(*(b - a for a, b in group)):
            yield tuple(int(a + r) for (a, _), r in zip(group, rel, strict=True))

    def group_shape(self) -> tuple[int, ...]:
        """Tiles per block along each axis for the stages that group tiles (stitch, relabel).

        Stitch and relabel blocks group tiles so that small tiles do not pay a daisy
        round trip, a record file and a zarr call each: a group grows (doubling the axis with
        the most groups left) while it reads at most ``GROUP_STAGE_VOXELS`` staged voxels
        (with the upper neighbours stitch compares against), holds at most
        ``GROUP_MAX_TILES`` tiles, and the task keeps at least ``GROUP_MIN_BLOCKS`` blocks.
        It depends on the plan only, so a resumed run cuts the same blocks.
        """
        grid, stage = self.grid, self.stage_tile_shape

        def fits(g: list[int]) -> bool:
            voxels = math.prod(min(n + 1, m) * s for n, m, s in zip(g, grid, stage, strict=True))
            blocks = math.prod(math.ceil(m / n) for n, m in zip(g, grid, strict=True))
            return (
                voxels <= GROUP_STAGE_VOXELS
                and math.prod(g) <= GROUP_MAX_TILES
                and blocks >= GROUP_MIN_BLOCKS
            )

        return _grow(grid, range(self.ndim), fits, last_axis_first=False)

    def segment_group_tiles(self) -> int:
        """Most tiles in one segment block: ``SEGMENT_SMALL_GROUP_TILES`` for small tiles,
        else ``SEGMENT_GROUP_TILES``."""
        small = SEGMENT_SMALL_GROUP_TILES * math.prod(self.stage_tile_shape)
        if small <= SEGMENT_SMALL_GROUP_VOXELS:
            return SEGMENT_SMALL_GROUP_TILES
        return SEGMENT_GROUP_TILES

    def segment_group_shape(self) -> tuple[int, ...]:
        """Tiles per segment block along each axis.

        Neighbouring tiles share the chunks their halos reach into: a block of a few
        neighbouring tiles, read one after the other by one worker, decodes those chunks
        once. A block grows as a brick (doubling the axis with the most blocks left, never
        along time) while it holds at most :meth:`segment_group_tiles` tiles, spans at most
        ``SEGMENT_GROUP_READ_VOXELS`` voxels with its halo, and the task keeps at least
        ``SEGMENT_MIN_BLOCKS`` blocks. Without a halo tiles share no chunk reads, and blocks
        still group them for the pipelined worker.
        """
        grid = self.grid
        most = self.segment_group_tiles()

        def fits(g: list[int]) -> bool:
            span = math.prod(
                n * t + 2 * o for n, t, o in zip(g, self.tile, self.overlap, strict=True)
            )
            blocks = math.prod(math.ceil(m / n) for n, m in zip(g, grid, strict=True))
            return (
                math.prod(g) <= most
                and span <= SEGMENT_GROUP_READ_VOXELS
                and blocks >= SEGMENT_MIN_BLOCKS
            )

        axes = range(1, self.ndim) if self.time_axis else range(self.ndim)
        return _grow(grid, axes, fits, last_axis_first=True)

    def groups(self, group: Sequence[int] | None = None) -> Iterator[Box]:
        """The blocks of ``group`` tiles (default :meth:`group_shape`) as boxes of grid
        indices, in C order."""
        g = tuple(group) if group is not None else self.group_shape()
        for start in np.ndindex(*(math.ceil(m / n) for m, n in zip(self.grid, g, strict=True))):
            yield tuple(
                (s * n, min((s + 1) * n, m)) for s, n, m in zip(start, g, self.grid, strict=True)
            )

    def group_core(self, group: Box) -> Box:
        """Voxel box written by the tiles of ``group``."""
        lo = self.core(tuple(a for a, _ in group))
        hi = self.core(tuple(b - 1 for _, b in group))
        return tuple((a, b) for (a, _), (_, b) in zip(lo, hi, strict=True))

    # -- world units for daisy ---------------------------------------------------------------

    @property
    def image_roi(self) -> Roi:
        return Roi(self.offset, Coordinate(self.shape) * Coordinate(self.voxel_size))

    def world(self, voxels: Sequence[int]) -> Coordinate:
        return Coordinate(voxels) * Coordinate(self.voxel_size)


class TileTask(Task):
    """A pipeline stage as a :class:`~blockbuster.run.task.Task`: blocks are groups of tiles.

    Parameters
    ----------
    name
        The stage's name.
    run_root
        The run directory the stage's workers open.
    plan
        The tile plan.
    group
        Tiles per block along each axis (:meth:`TilePlan.group_shape`).
    context
        Voxels each block reads around its tiles.
    upstream
        The stages it reads from.
    """

    unit_name = "tiles"

    def __init__(
        self,
        name: str,
        run_root: str,
        plan: TilePlan,
        group: Sequence[int],
        context: Sequence[int],
        upstream: Sequence[Task] = (),
    ) -> None:
        self.plan = plan
        self.group_tiles = tuple(int(g) for g in group)
        size = tuple(t * g for t, g in zip(plan.tile, self.group_tiles, strict=True))
        super().__init__(
            name,
            plan.image_roi,
            plan.world(size),
            context=plan.world(context),
            fit="shrink",
            upstream=upstream,
        )
        self.run_root = run_root

    def tile_group(self, block: Block) -> Box:
        """The tiles of ``block``: a box of grid indices."""
        return tuple(
            (i * g, min((i + 1) * g, m))
            for i, g, m in zip(block.index, self.group_tiles, self.plan.grid, strict=True)
        )

    def units(self, block: Block) -> list[int]:
        return [self.plan.tile_id(i) for i in self.plan.tiles_in(self.tile_group(block))]

    @property
    def num_units(self) -> int:
        return self.plan.num_tiles
