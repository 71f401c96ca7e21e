"""The label pyramid: levels 1, 2, ... of an OME-Zarr label image, built blockwise from level 0.

Each voxel of level ``k`` is the *mode* of the cell of level ``k - 1`` it covers (2x2 or
2x2x2 voxels, or whatever integer factors the level shapes give): the most frequent non-zero
label, the smallest of those on a tie, and 0 only where the whole cell is background. Unlike
nearest-neighbour subsampling this keeps small objects visible at coarse levels, and unlike
averaging it never invents label values.

Every block of level ``k`` is one chunk of it, computed from the matching block of level
``k - 1`` alone, so no process ever holds more than one block and its source, and blocks
write disjoint chunks. Levels are built one after the other; the blocks of a level run in
parallel in daisy worker processes (levels too small to be worth starting workers for run in
this process, block by block as well).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from numpy.typing import NDArray

from blockbuster.io import ome
from blockbuster.io.boxes import Box, box_slices
from blockbuster.run.task import Block, Task

#: Levels whose source has at most this many voxels are built in this process.
INLINE_VOXELS = 2**22

#: Cells processed at once by :func:`downsample_mode` (bounds its temporary memory).
_CELLS_PER_SLAB = 2**20


def downsample_mode(labels: NDArray[Any], factors: Sequence[int]) -> NDArray[Any]:
    """Downsample a label array by the most frequent non-zero label of each cell.

    Parameters
    ----------
    labels
        Integer label array; 0 is background.
    factors
        Cell size per axis (1 keeps the axis). A cell at the far edge may be partial: it holds
        only the voxels that exist.

    Returns
    -------
    numpy.ndarray
        Shape ``ceil(labels.shape / factors)``, same dtype. Each value is the label occurring
        most often among the cell's non-zero voxels, the smallest such label on a tie, and 0
        where the cell is all background.
    """
    f = tuple(int(v) for v in factors)
    if len(f) != labels.ndim or any(v < 1 for v in f):
        raise ValueError(f"factors={tuple(factors)} must give one integer >= 1 per axis")
    out_shape = tuple(math.ceil(s / v) for s, v in zip(labels.shape, f, strict=True))
    if all(v == 1 for v in f) or labels.size == 0:
        return np.array(labels, copy=True).reshape(out_shape)
    pad = [(0, o * v - s) for o, v, s in zip(out_shape, f, labels.shape, strict=True)]
    data = np.pad(labels, pad) if any(p for _, p in pad) else labels
    out = np.empty(out_shape, dtype=labels.dtype)
    # slabs along the first axis bound the temporary arrays
    per_row = math.prod(out_shape[1:])
    rows = max(1, _CELLS_PER_SLAB // max(1, per_row))
    for start in range(0, out_shape[0], rows):
        stop = min(out_shape[0], start + rows)
        slab = data[start * f[0] : stop * f[0]]
        out[start:stop] = _mode_cells(slab, f)
    return out


def _mode_cells(data: NDArray[Any], f: tuple[int, ...]) -> NDArray[Any]:
    """:func:`downsample_mode` of an array whose shape is a multiple of ``f``."""
    # one strided view per position inside the cell: no copy of the whole block
    views = [
        data[tuple(slice(o, None, v) for o, v in zip(offset, f, strict=True))]
        for offset in np.ndindex(*f)
    ]
    result = views[0].copy()
    # most cells of a label image lie inside one object or the background: they keep their
    # value, and only the mixed ones are sorted
    mixed = np.zeros(result.shape, dtype=bool)
    for view in views[1:]:
        mixed |= view != views[0]
    n_mixed = int(np.count_nonzero(mixed))
    if n_mixed > result.size // 2:  # noise-like: one reordering copy beats gathering
        nd = data.ndim
        split = [x for pair in zip(result.shape, f, strict=True) for x in pair]
        order = list(range(0, 2 * nd, 2)) + list(range(1, 2 * nd, 2))
        cells = data.reshape(split).transpose(order).reshape(-1, math.prod(f))
        return _mode_rows(cells).reshape(result.shape)
    if n_mixed:
        where = np.nonzero(mixed)
        result[where] = _mode_rows(np.stack([view[where] for view in views], axis=1))
    return result


def _mode_rows(cells: NDArray[Any]) -> NDArray[Any]:
    """Per row, the most frequent non-zero value (smallest on a tie; 0 if all are 0)."""
    k = cells.shape[1]
    s = np.sort(cells, axis=1)
    idx_type = np.int8 if k < 127 else np.int32
    idx = np.arange(k, dtype=idx_type)
    zero = idx_type(0)
    new_run = np.ones(s.shape, dtype=bool)
    new_run[:, 1:] = s[:, 1:] != s[:, :-1]
    run_end = np.ones(s.shape, dtype=bool)
    run_end[:, :-1] = new_run[:, 1:]
    # index of the first and of the last element of each element's run of equal values
    first = np.maximum.accumulate(np.where(new_run, idx, zero), axis=1)
    last_rev = np.maximum.accumulate(np.where(run_end[:, ::-1], idx, zero), axis=1)
    last = (k - 1 - last_rev)[:, ::-1]
    count = (last - first + 1).astype(idx_type)
    count[s == 0] = 0
    # the first maximum in sorted order is the smallest of the most frequent labels; a cell
    # of zeros only has all counts 0 and yields s[0] == 0
    best = np.argmax(count, axis=1)
    out: NDArray[Any] = s[np.arange(len(s)), best]
    return out


@functools.lru_cache(maxsize=16)
def _open(store: str, path: str, mode: str) -> zarr.Array[Any]:
    return zarr.open_array(store=store, path=path, mode=mode)


@dataclass(frozen=True)
class LevelBuilder:
    """Writes blocks of one pyramid level from the level above it (a daisy block function).

    Parameters
    ----------
    store
        The label image group.
    source, target
        Dataset paths of levels ``k - 1`` and ``k``.
    factors
        Downsampling factor per axis from ``source`` to ``target``.
    """

    store: str
    source: str
    target: str
    factors: tuple[int, ...]

    def __call__(self, block: Any) -> None:
        """Process one daisy block (its write ROI is a box of target voxels)."""
        roi = block.write_roi
        begin, end = tuple(roi.begin), tuple(roi.end)
        self.process(tuple((int(a), int(b)) for a, b in zip(begin, end, strict=True)))

    def process(self, box: Box) -> None:
        """Compute the target voxels ``box`` from the source and write them."""
        src = _open(self.store, self.source, "r")
        dst = _open(self.store, self.target, "r+")
        src_box = tuple(
            (a * f, min(b * f, n))
            for (a, b), f, n in zip(box, self.factors, src.shape, strict=True)
        )
        want = tuple(b - a for a, b in box)
        if any(b <= a for a, b in src_box):
            dst[box_slices(box)] = np.zeros(want, dtype=dst.dtype)
            return
        down = downsample_mode(np.asarray(src[box_slices(src_box)]), self.factors)
        out = np.zeros(want, dtype=dst.dtype)
        common = tuple(slice(0, min(w, d)) for w, d in zip(want, down.shape, strict=True))
        out[common] = down[common]
        dst[box_slices(box)] = out


class LevelTask(Task):
    """Builds one pyramid level: one block per chunk of the level, from the level above.

    World units are level-0 voxels, so a level's blocks and the finer level's blocks they
    read cover the same world region, and daisy orders them by ``upstream`` alone.
    """

    def __init__(
        self,
        builder: LevelBuilder,
        shape: Sequence[int],
        chunks: Sequence[int],
        voxel_size: Sequence[int],
        upstream: Sequence[Task] = (),
    ) -> None:
        self.builder = builder
        self.voxel_size = tuple(int(v) for v in voxel_size)
        world = [s * v for s, v in zip(shape, self.voxel_size, strict=True)]
        block = [c * v for c, v in zip(chunks, self.voxel_size, strict=True)]
        name = "pyramid-" + "".join(c if c.isalnum() else "_" for c in builder.target)
        super().__init__(name, world, block, fit="shrink", upstream=upstream)

    def process_block_func(self) -> Callable[[Block], None]:
        _open.cache_clear()  # a level written anew must not be read from an old handle

        def process(block: Block) -> None:
            begin, end = block.write_roi.begin, block.write_roi.end
            box = tuple(
                (int(a) // v, int(b) // v)
                for a, b, v in zip(begin, end, self.voxel_size, strict=True)
            )
            self.builder.process(box)

        return process


def pyramid_tasks(
    store: str | Path, max_levels: int | None = None, inline_voxels: int = INLINE_VOXELS
) -> list[tuple[list[LevelTask], Literal["serial"] | None]]:
    """The tasks that fill levels 1, 2, ... of an OME-Zarr label image, in two groups: the
    levels worth starting workers for (engine None: the run's own), then the small ones,
    built in this process (``"serial"``)."""
    store = str(Path(store).absolute())
    ms = _ensure_levels(store, max_levels)
    big: list[LevelTask] = []
    small: list[LevelTask] = []
    voxel = [1] * len(ms.levels[0].shape)
    previous: LevelTask | None = None
    for finer, coarser in zip(ms.levels, ms.levels[1:], strict=False):
        factors = ome.level_factors(finer, coarser)
        voxel = [v * f for v, f in zip(voxel, factors, strict=True)]
        builder = LevelBuilder(store, finer.path, coarser.path, factors)
        inline = math.prod(finer.shape) <= inline_voxels
        upstream = (previous,) if previous is not None and (previous in small) == inline else ()
        task = LevelTask(builder, coarser.shape, coarser.chunks or coarser.shape, voxel, upstream)
        (small if inline else big).append(task)
        previous = task
    groups: list[tuple[list[LevelTask], Literal["serial"] | None]] = [
        (big, None),
        (small, "serial"),
    ]
    return [(tasks, engine) for tasks, engine in groups if tasks]


def _ensure_levels(store: str, max_levels: int | None) -> ome.Multiscale:
    """Read the label image's levels; plan and create levels 1.. if it has only level 0."""
    group = zarr.open(store, mode="r+")
    ms = ome.read_multiscale(group) if isinstance(group, zarr.Group) else None
    if ms is None or not isinstance(group, zarr.Group):
        raise ValueError(f"{store} is not an OME-Zarr image (no multiscales metadata)")
    if len(ms.levels) > 1 or max_levels == 1:
        return ms
    lv0 = ms.levels[0]
    levels = ome.plan_levels(
        lv0.shape, lv0.chunks, lv0.scale, lv0.translation, ms.spatial, max_levels
    )
    if len(levels) == 1:
        return ms
    ome.add_levels(group, ms, levels[1:])
    updated = ome.read_multiscale(group)
    assert updated is not None
    return updated


def _check_pyramid_run_dir(run_dir: Path) -> None:
    """Refuse a ``<store>.pyramid.blockbuster`` that blockbuster did not make, or that a live
    build holds: it is removed before the levels are built."""
    from blockbuster.run.lease import LeaseHeldError, read_holder
    from blockbuster.run.ownership import is_our_run_dir

    if not run_dir.exists() and not run_dir.is_symlink():
        return
    if run_dir.is_symlink() or not is_our_run_dir(run_dir):
        raise ValueError(
            f"{run_dir} exists and is not a blockbuster run directory (build_pyramid keeps its "
            "records there); move it away"
        )
    holder = read_holder(run_dir)
    if holder is not None and not holder.stale():
        raise LeaseHeldError(
            f"another build_pyramid is running on {run_dir} ({holder.describe()}); wait for it"
        )


def build_pyramid(
    store: str | Path,
    num_workers: int = 1,
    *,
    max_levels: int | None = None,
    timeout: float = 3600.0,
    max_retries: int = 2,
    inline_voxels: int = INLINE_VOXELS,
    observers: Sequence[Any] = (),
) -> list[str]:
    """Fill levels 1, 2, ... of an OME-Zarr label image from its level 0, blockwise.

    Each level is a :class:`~blockbuster.run.task.Task` run by
    :func:`~blockbuster.run.driver.run_tasks` in the run directory
    ``<store>.pyramid.blockbuster`` (made anew by each call, removed once every level is
    built: level 0 may have changed since an interrupted build).

    Parameters
    ----------
    store
        Path of the label image group (as made by :func:`.outputs.create_output`, whose
        levels exist empty; a label image with only level 0 gets levels planned by
        :func:`blockbuster.io.ome.plan_levels` first).
    num_workers
        daisy worker processes per level; 0 builds every level in this process.
    max_levels
        Only used when levels are planned here: at most this many levels, level 0 included.
    timeout, max_retries
        Per block, as for :func:`blockbuster.tile_process`.
    inline_voxels
        Levels whose source level has at most this many voxels are built in this process
        (starting workers would cost more than the work).
    observers
        Receive the runs' events (e.g. a :class:`blockbuster.ui.progress.ProgressMonitor`).

    Returns
    -------
    list of str
        The dataset paths of all levels, level 0 first.

    Raises
    ------
    BlockFailureError
        If blocks of a level failed after their retries.
    """
    from blockbuster.config import RunConfig
    from blockbuster.run.driver import run_tasks
    from blockbuster.run.ownership import remove_created

    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r} must be 0 or more")
    path = Path(store).absolute()
    run_dir = path.with_name(path.name + ".pyramid.blockbuster")
    _check_pyramid_run_dir(run_dir)  # before anything is written
    groups = pyramid_tasks(path, max_levels, inline_voxels)
    if run_dir.exists():  # level 0 may have been written again since: build every level
        remove_created(run_dir)
    for tasks, engine in groups:
        config = RunConfig(
            num_workers=max(num_workers, 1),
            backend="serial" if engine == "serial" or num_workers == 0 else "daisy",
            timeout=timeout,
            max_retries=max_retries,
            overwrite=True,
            status_page=None,
        )
        run_tasks(tasks, run_dir, config, observers)
    if run_dir.exists():
        remove_created(run_dir)
    _open.cache_clear()
    ms = ome.open_multiscale(path)
    assert ms is not None
    return [lv.path for lv in ms.levels]
