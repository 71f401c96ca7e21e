"""Which tiles hold foreground: the others are never read and never passed to ``fn``.

A light-sheet volume's bounding box is often mostly empty. ``tile_process(mask=...)`` takes a
foreground mask at any resolution that covers the image (a numpy array, a zarr array or an
OME-Zarr label/image group on disk), or ``"auto"``: the foreground of the image statistics'
coarse copy (:mod:`.stats`) above a threshold halfway between the background (5th percentile)
and Otsu's threshold, so a coarse voxel counts once a quarter of it is object.

A tile is foreground when any foreground mask voxel meets the box it would read (its core plus
the halo, i.e. the mask dilated by the halo): an object reaching into a tile from the halo side
is still segmented there. The decision per tile is kept in the run directory
(``foreground.npy``, its digest in the spec): a skipped tile's output is background, and it
shows as *skipped* in the progress, the status, the block map and the summary.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from blockbuster.io.sources import ImageSource
from blockbuster.pipeline.plan import TilePlan
from blockbuster.pipeline.stats import ImageStats
from blockbuster.run.files import write_atomic

#: a mask array bigger than this many voxels is reduced (any-pooled) while it is read
MASK_VOXELS = 2**26


def _box_any(fg: NDArray[np.bool_], lo: list[NDArray[Any]], hi: list[NDArray[Any]]) -> Any:
    """Whether ``fg[lo:hi]`` holds a True voxel, for every combination of per-axis ranges
    (an outer product over the axes), by inclusion-exclusion on a summed-area table."""
    table = fg.astype(np.int64)
    for ax in range(table.ndim):
        table = np.cumsum(table, axis=ax)
    table = np.pad(table, [(1, 0)] * table.ndim)
    total = np.zeros([len(v) for v in lo], dtype=np.int64)
    for corner in itertools.product((0, 1), repeat=fg.ndim):
        idx = np.ix_(*[(h if c else l_) for c, l_, h in zip(corner, lo, hi, strict=True)])
        sign = (-1) ** (fg.ndim - sum(corner))
        total += sign * table[idx]
    return total > 0


def tiles_touching(
    plan: TilePlan, fg: NDArray[np.bool_], voxels: tuple[float, ...]
) -> NDArray[np.bool_]:
    """Per tile of ``plan`` (an array of the grid's shape), whether the box it reads meets a
    foreground voxel of ``fg``.

    Parameters
    ----------
    plan
        The tiling.
    fg
        Foreground over the spatial axes, one voxel covering ``voxels`` image voxels per axis
        (fractions allowed), or with a leading time axis when ``plan`` has one.
    voxels
        Image voxels per mask voxel along each spatial axis.
    """
    t0 = 1 if plan.time_axis else 0
    lo, hi = [], []
    for ax in range(t0, plan.ndim):
        tile, halo, n = plan.tile[ax], plan.overlap[ax], plan.shape[ax]
        starts = np.arange(plan.grid[ax]) * tile
        a = np.maximum(starts - halo, 0)
        b = np.minimum(starts + tile + halo, n)
        size = fg.shape[ax - t0 + (fg.ndim - (plan.ndim - t0))]
        step = voxels[ax - t0]
        # the mask voxels the box [a, b) meets, partly or wholly
        # (a pyramid level rounded down leaves the image's last voxels without a mask voxel:
        # they count as the last one, never as no foreground)
        lo.append(np.clip(np.floor(a / step).astype(np.int64), 0, size - 1))
        hi.append(np.clip(np.ceil(b / step).astype(np.int64), 1, size))
    if not plan.time_axis:
        return np.asarray(_box_any(fg, lo, hi), dtype=bool)
    per_time = fg if fg.ndim == plan.ndim else np.broadcast_to(fg, (1, *fg.shape))
    out = np.zeros(plan.grid, dtype=bool)
    for t in range(plan.grid[0]):
        out[t] = _box_any(per_time[t if len(per_time) > 1 else 0], lo, hi)
    return out


def auto_foreground(stats: ImageStats) -> NDArray[np.bool_]:
    """The coarse copy's foreground, ``(T, *spatial)``: any channel above its threshold."""
    fg = np.zeros((stats.coarse.shape[0], *stats.coarse.shape[2:]), dtype=bool)
    for c, hist in enumerate(stats.channels):
        background, otsu = hist.percentile(5), hist.otsu()
        threshold = min(otsu, background + 0.5 * (otsu - background))
        if otsu <= background:  # a flat image: no foreground to tell apart
            continue
        fg |= stats.coarse[:, c] > threshold
    return fg


def _any_pool(arr: Any, shape: tuple[int, ...]) -> tuple[NDArray[np.bool_], int]:
    """Read a mask array as booleans, any-pooled by a power of two to fit ``MASK_VOXELS``."""
    f = 1
    while math.prod(-(-n // f) for n in shape) > MASK_VOXELS:
        f *= 2
    if f == 1:
        return np.asarray(arr[...]) != 0, 1
    out = np.zeros(tuple(-(-n // f) for n in shape), dtype=bool)
    # read boxes of whole pooling windows, about a chunk each (a chunk may be read twice)
    chunks = tuple(-(-int(c) // f) * f for c in getattr(arr, "chunks", shape))
    for start in itertools.product(*[range(0, n, c) for n, c in zip(shape, chunks, strict=True)]):
        box = tuple(slice(s, min(s + c, n)) for s, c, n in zip(start, chunks, shape, strict=True))
        block = np.asarray(arr[box]) != 0
        for ax in range(block.ndim):
            block = np.logical_or.reduceat(block, np.arange(0, block.shape[ax], f), axis=ax)
        out[tuple(slice(b.start // f, -(-b.stop // f)) for b in box)] = block
    return out, f


def _open_mask(mask: Any) -> Any:
    """The array behind ``mask`` (numpy, zarr, a path to a zarr array or OME-Zarr group)."""
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if not path.exists():
            raise FileNotFoundError(
                f"mask={str(mask)!r} does not exist; pass a zarr array or OME-Zarr image path, "
                "a numpy array, or 'auto'"
            )
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Group):
            from blockbuster.io import ome

            ms = ome.read_multiscale(node)
            if ms is None:
                raise ValueError(
                    f"mask={str(mask)!r} is a zarr group without OME multiscales; pass the "
                    "path of a zarr array"
                )
            return node[ms.levels[0].path]
        return node
    if hasattr(mask, "shape") and hasattr(mask, "__getitem__"):
        return mask
    raise TypeError(
        f"mask must be a numpy or zarr array, a path or 'auto', not {type(mask).__name__}"
    )


def mask_tiles(
    mask: Any, source: ImageSource, plan: TilePlan, stats: ImageStats | None
) -> NDArray[np.bool_] | None:
    """Per tile, whether it is segmented; None for ``mask=None`` (every tile).

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        One line naming ``mask``: not an array, or not the image's number of spatial axes.
    """
    if mask is None:
        return None
    t0 = 1 if plan.time_axis else 0
    spatial = plan.shape[t0:]
    if isinstance(mask, str) and mask == "auto":
        if stats is None:
            raise ValueError("mask='auto' needs the image statistics")
        voxels = tuple(float(f) for f in stats.factors)
        fg = auto_foreground(stats)
        return tiles_touching(plan, fg if plan.time_axis else fg[0], voxels)
    arr = _open_mask(mask)
    shape = tuple(int(s) for s in arr.shape)
    if len(shape) != len(spatial):
        raise ValueError(
            f"mask has shape {shape} but the image has {len(spatial)} spatial axes "
            f"{spatial}; give a mask with one axis per spatial axis (any resolution)"
        )
    if 0 in shape:
        raise ValueError(f"mask has shape {shape}: an empty mask covers nothing")
    # stretched over the image: each mask voxel covers image/mask voxels per axis
    voxels = tuple(n / m for n, m in zip(spatial, shape, strict=True))
    fg, f = _any_pool(arr, shape)
    return tiles_touching(plan, fg, tuple(v * f for v in voxels))


def tiles_digest(tiles: NDArray[np.bool_]) -> str:
    return hashlib.sha256(
        np.packbits(tiles.ravel()).tobytes() + str(tiles.shape).encode()
    ).hexdigest()


def save_tiles(path: Path, tiles: NDArray[np.bool_]) -> None:
    buf = io.BytesIO()
    np.save(buf, tiles, allow_pickle=False)
    write_atomic(path, buf.getvalue())


def load_tiles(path: Path, digest: str) -> NDArray[np.bool_]:
    """The foreground tiles kept at ``path``.

    Raises
    ------
    ValueError
        If the file is missing, unreadable or not the one the spec names.
    """
    try:
        tiles = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}): the run's mask is lost") from None
    if tiles.dtype != bool or tiles_digest(tiles) != digest:
        raise ValueError(f"{path} is not the mask this run was started with (damaged)")
    return np.asarray(tiles)
