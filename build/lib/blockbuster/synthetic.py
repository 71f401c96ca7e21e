"""Synthetic nuclei volumes for demos, tests and benchmarks, written chunk by chunk.

Nuclei are ellipsoids with a soft edge at random positions on a noisy background; rendering
one chunk only draws the nuclei that reach into it, so the volume never has to fit in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray


def nuclei_centres(
    shape: Sequence[int], count: int, radius: Sequence[float], seed: int = 0
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Random nucleus centres and per-nucleus radii (about ``radius`` per axis, +-25%)."""
    rng = np.random.default_rng(seed)
    centres = rng.random((count, len(shape))) * np.asarray(shape, dtype=np.float64)
    radii = np.asarray(radius, dtype=np.float64) * rng.uniform(0.75, 1.25, size=(count, 1))
    return centres, radii


def render_box(
    start: Sequence[int],
    stop: Sequence[int],
    centres: NDArray[Any],
    radii: NDArray[Any],
    seed: int = 0,
    background: float = 200.0,
    brightness: float = 1500.0,
    noise: float = 60.0,
) -> NDArray[Any]:
    """Render the voxels ``start:stop`` of the volume as uint16."""
    start_a, stop_a = np.asarray(start), np.asarray(stop)
    shape = tuple(int(v) for v in stop_a - start_a)
    rng = np.random.default_rng([seed, *[int(v) for v in start]])
    img = np.full(shape, background, dtype=np.float32)
    reach = radii * 1.3
    near = np.all((centres + reach > start_a) & (centres - reach < stop_a), axis=1)
    for c, r in zip(centres[near], radii[near], strict=True):
        lo = np.maximum(np.floor(c - 1.3 * r).astype(int), start_a)
        hi = np.minimum(np.ceil(c + 1.3 * r).astype(int) + 1, stop_a)
        grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        d2 = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, c, r, strict=True))
        # flat top, soft edge: 1 inside, falling to 0 around d = 1.15
        value = brightness * np.clip((1.15 - np.sqrt(d2)) / 0.3, 0, 1)
        sl = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start_a, strict=True))
        np.maximum(img[sl], background + value, out=img[sl])
    img += rng.normal(0, noise, size=shape).astype(np.float32)
    return np.clip(img, 0, 65535).astype(np.uint16)


def make_nuclei_volume(
    path: str | Path,
    shape: Sequence[int] = (256, 1024, 1024),
    count: int = 30_000,
    radius: Sequence[float] = (4.0, 5.0, 5.0),
    chunks: Sequence[int] = (64, 256, 256),
    seed: int = 0,
) -> zarr.Array[Any]:
    """Write a synthetic nuclei volume to a zarr array, one chunk at a time.

    Parameters
    ----------
    path
        Output zarr array path (replaced if it exists).
    shape, chunks
        Volume and chunk shape in voxels.
    count
        Number of nuclei.
    radius
        Mean nucleus radius per axis in voxels.
    seed
        Random seed; the same arguments give the same volume.
    """
    centres, radii = nuclei_centres(shape, count, radius, seed)
    arr = zarr.create_array(
        str(path), shape=tuple(shape), chunks=tuple(chunks), dtype="uint16", overwrite=True
    )
    grid = [range(0, s, c) for s, c in zip(shape, chunks, strict=True)]
    for start in np.array(np.meshgrid(*grid, indexing="ij")).reshape(len(shape), -1).T:
        stop = np.minimum(start + np.asarray(chunks), shape)
        box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        arr[box] = render_box(start.tolist(), stop.tolist(), centres, radii, seed)
    return arr
