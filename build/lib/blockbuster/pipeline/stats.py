"""The input image's intensity statistics, computed once per run before any tile runs.

A tile sees a few hundred pixels; the image's intensity distribution is a property of the
whole. A fn that normalises or thresholds each tile by its own content gives each tile its
own answer (an empty tile's noise stretched to full contrast looks like cells), so the driver
measures the distribution once -- a histogram per channel, enough for percentiles and Otsu's
threshold -- and hands it to the fn (:func:`prepare_fn`) before the fn is sent to workers.

The pass also keeps a coarse copy of the image (mean of ``factors`` voxels per coarse voxel,
at most :data:`COARSE_VOXELS`), from which ``mask="auto"`` finds the foreground tiles.

Where the input is an OME-Zarr image with coarser levels, the pass reads the coarsest level
that still has :data:`MIN_VOXELS` voxels (a few MB for a 250 GB volume); else it reads the
image once, chunk by chunk in threads. The statistics are kept in the run directory
(``stats.npz``, with their digest in the spec): a resumed run reuses them, and a changed
input changes them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from blockbuster.io import ome
from blockbuster.io.sources import ImageSource, open_array
from blockbuster.run.files import write_atomic

#: the coarse copy's budget (voxels, all channels and time points): 16 MiB as float32
COARSE_VOXELS = 2**22
#: an OME level is coarse enough for the statistics while it keeps this many spatial voxels
MIN_VOXELS = 2**20
#: voxels per channel the histograms of floats (a sample), or of a pyramid's full resolution
#: (whole chunks), are made of
SAMPLE_VOXELS = 2**24
#: bins of a histogram of floats or of integers wider than 16 bits (a sample's range)
FLOAT_BINS = 4096


@dataclass(frozen=True)
class Histogram:
    """Voxel counts of one channel in equal bins: bin ``i`` holds ``start + i * width``
    (integers of up to 16 bits: one bin per value) up to the next bin."""

    start: float
    width: float
    counts: NDArray[np.int64]
    #: whether a bin holds one integer value (exact percentiles), or a range of values
    exact: bool

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def values(self) -> NDArray[np.float64]:
        """Each bin's representative value: the integer it holds, or its centre."""
        i = np.arange(len(self.counts), dtype=np.float64)
        return self.start + (i if self.exact else i + 0.5) * self.width

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of the counted voxels, interpolated linearly
        between neighbouring ranks as ``numpy.percentile`` does."""
        n = self.total
        if n == 0:
            return float("nan")
        rank = q / 100.0 * (n - 1)
        cum = np.cumsum(self.counts)
        values = self.values()
        lo = values[int(np.searchsorted(cum, math.floor(rank), side="right"))]
        hi = values[int(np.searchsorted(cum, math.ceil(rank), side="right"))]
        return float(lo + (hi - lo) * (rank - math.floor(rank)))

    def otsu(self) -> float:
        """Otsu's threshold of the histogram: a voxel above it is foreground.

        The split maximises the between-class variance; the threshold lies halfway between
        the last occupied bin of the lower class and the first of the upper one (where many
        splits tie, as between two sparse peaks, any of them separates the same voxels).
        """
        nonzero = np.flatnonzero(self.counts)
        values = self.values()
        if len(nonzero) < 2:
            return float(values[nonzero[0]]) if len(nonzero) else 0.0
        counts = self.counts[nonzero].astype(np.float64)
        v = values[nonzero]
        w0 = np.cumsum(counts)[:-1]
        w1 = counts.sum() - w0
        s0 = np.cumsum(counts * v)[:-1]
        m0, m1 = s0 / w0, (float((counts * v).sum()) - s0) / w1
        k = int(np.argmax(w0 * w1 * (m0 - m1) ** 2))
        return float((v[k] + v[k + 1]) / 2)


@dataclass(frozen=True)
class ImageStats:
    """Intensity statistics of the input image and its coarse copy.

    Attributes
    ----------
    channels
        One histogram per channel (one for an image without a channel axis).
    origin
        What was read: ``"level 2 (4x8x8)"`` of an OME-Zarr image, or ``"every voxel"``.
    factors
        Full-resolution voxels per coarse voxel, per spatial axis.
    coarse
        The coarse copy, float32 of shape ``(T, C, *spatial)`` (T = 1 and C = 1 without a
        time or a channel axis).
    seconds
        How long the pass took.
    """

    channels: tuple[Histogram, ...]
    origin: str
    factors: tuple[int, ...]
    coarse: NDArray[np.float32]
    seconds: float = 0.0

    def percentile(self, q: float, channel: int = 0) -> float:
        """The ``q``-th percentile (0..100) of ``channel``'s intensities."""
        return self.channels[channel].percentile(q)

    def otsu(self, channel: int = 0) -> float:
        """Otsu's threshold of ``channel``'s intensities."""
        return self.channels[channel].otsu()

    def digest(self) -> str:
        """A digest of the statistics (seconds excluded): in the run's spec, so that a resume
        with other statistics (another input) is refused."""
        h = hashlib.sha256(json.dumps([self.origin, list(self.factors)]).encode())
        for hist in self.channels:
            h.update(json.dumps([hist.start, hist.width, hist.exact]).encode())
            h.update(np.ascontiguousarray(hist.counts, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.coarse, dtype="<f4").tobytes())
        return h.hexdigest()

    def summary(self) -> list[str]:
        """Lines for the run summary: per channel, the 1st/50th/99th percentiles and Otsu."""
        lines = []
        for c, hist in enumerate(self.channels):
            name = f"channel {c}" if len(self.channels) > 1 else "intensity"
            p1, p50, p99 = (hist.percentile(q) for q in (1, 50, 99))
            lines.append(
                f"{name:<16}p1 {p1:.6g}, median {p50:.6g}, p99 {p99:.6g}, "
                f"Otsu {hist.otsu():.6g} (from {self.origin}, {self.seconds:.1f} s)"
            )
        return lines

    # -- persistence ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        meta = {
            "origin": self.origin,
            "factors": list(self.factors),
            "seconds": self.seconds,
            "channels": [[h.start, h.width, h.exact] for h in self.channels],
        }
        arrays = {f"counts{c}": h.counts for c, h in enumerate(self.channels)}
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.array(json.dumps(meta)), coarse=self.coarse, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageStats:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            channels = tuple(
                Histogram(float(s), float(w), npz[f"counts{c}"].astype(np.int64), bool(e))
                for c, (s, w, e) in enumerate(meta["channels"])
            )
            return cls(
                channels=channels,
                origin=str(meta["origin"]),
                factors=tuple(int(f) for f in meta["factors"]),
                coarse=npz["coarse"].astype(np.float32),
                seconds=float(meta["seconds"]),
            )


def save_stats(path: Path, stats: ImageStats) -> None:
    write_atomic(path, stats.to_bytes())


def load_stats(path: Path, digest: str | None = None) -> ImageStats | None:
    """The statistics kept at ``path``; None when missing, unreadable or (given ``digest``)
    not the ones the run's spec names."""
    try:
        stats = ImageStats.from_bytes(path.read_bytes())
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    if digest is not None and stats.digest() != digest:
        return None
    return stats


# -- the pass ----------------------------------------------------------------------------


def _coarse_level(source: ImageSource) -> tuple[zarr.Array[Any], tuple[int, ...], str] | None:
    """The coarsest level of an OME-Zarr input that keeps ``MIN_VOXELS`` spatial voxels,
    with its downsampling factors against the source's level; None if no coarser level."""
    if not source.ome_version:
        return None
    ms = ome.open_multiscale(source.store)
    if ms is None:
        return None
    paths = [lv.path for lv in ms.levels]
    if source.path not in paths:
        return None
    first = paths.index(source.path)
    lead = source.channel_axes
    best = None
    for i in range(first + 1, len(ms.levels)):
        lv = ms.levels[i]
        if lv.shape[:lead] != source.shape[:lead]:
            break
        if math.prod(lv.shape[lead:]) < MIN_VOXELS:
            break
        try:
            factors = ome.level_factors(ms.levels[first], lv)[lead:]
        except ValueError:  # not a whole-number downsampling: read the image itself
            break
        if any(f < 1 for f in factors):
            break
        best = (i, lv, factors)
    if best is None:
        return None
    i, lv, factors = best
    label = "x".join(str(f) for f in factors)
    return open_array(source.store, lv.path), tuple(int(f) for f in factors), f"level {i} ({label})"


def _pool_factor(spatial: Sequence[int], lead: int) -> int:
    """The smallest power of two whose mean-pooling fits the coarse copy in its budget."""
    f = 1
    while lead * math.prod(-(-n // f) for n in spatial) > COARSE_VOXELS and f < max(spatial):
        f *= 2
    return f


def _mean_pool(a: NDArray[Any], f: int, axes: Sequence[int]) -> NDArray[np.float32]:
    """Mean of each ``f``-wide window along ``axes`` (the last window may be narrower)."""
    out = a.astype(np.float32, copy=False)  # half of float64's memory per read box
    if f == 1:
        return out
    for ax in axes:
        n = out.shape[ax]
        starts = np.arange(0, n, f)
        sums = np.add.reduceat(out, starts, axis=ax, dtype=np.float64)
        widths = np.minimum(starts + f, n) - starts
        shape = [1] * out.ndim
        shape[ax] = len(widths)
        out = (sums / widths.reshape(shape)).astype(np.float32)
    return out


def _boxes(shape: Sequence[int], edges: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    grid = [range(0, n, e) for n, e in zip(shape, edges, strict=True)]
    for starts in np.ndindex(*[len(g) for g in grid]):
        yield tuple(
            slice(g[i], min(g[i] + e, n))
            for g, i, e, n in zip(grid, starts, edges, shape, strict=True)
        )


def compute_stats(source: ImageSource, threads: int | None = None) -> ImageStats:
    """Measure the image's statistics (see the module docstring).

    Parameters
    ----------
    source
        The input image.
    threads
        Threads reading chunks in parallel (default: the CPUs, at most 8).

    Returns
    -------
    ImageStats
        Histograms per channel and the coarse copy.
    """
    t0 = time.perf_counter()
    level = _coarse_level(source)
    if level is None:
        arr, factors0, origin = source.open(), (1,) * len(source.spatial_shape), "every voxel"
    else:
        arr, factors0, origin = level
    lead = source.channel_axes
    shape = tuple(int(s) for s in arr.shape)
    spatial = shape[lead:]
    leading = shape[:lead]
    nt = leading[0] if source.time_axis else 1
    nc = math.prod(leading) // nt
    f = _pool_factor(spatial, max(1, math.prod(leading)))
    dtype = np.dtype(arr.dtype)
    exact = dtype.kind in "uib" and dtype.itemsize <= 2  # one bin per value
    offset = int(np.iinfo(dtype).min) if dtype.kind == "i" else 0
    nbins = 2 ** (8 * dtype.itemsize) if exact else 0
    chunks = tuple(int(c) for c in arr.chunks)
    t_axes = 1 if source.time_axis else 0
    # read boxes of whole chunks that also hold whole pooling windows: one time point, all
    # channels at once
    edges = tuple(
        1 if i < t_axes else shape[i] if i < lead else -(-c // f) * f for i, c in enumerate(chunks)
    )
    # floats and wide integers: a sample of at most SAMPLE_VOXELS per channel
    step = max(1, math.ceil(nt * math.prod(spatial) / SAMPLE_VOXELS))
    coarse = np.zeros((nt, nc, *(-(-n // f) for n in spatial)), dtype=np.float32)

    def read(box: tuple[slice, ...]) -> tuple[tuple[slice, ...], Any, list[Any]]:
        data = np.asarray(arr[box]).reshape((nc, *(b.stop - b.start for b in box[lead:])))
        pooled = _mean_pool(data, f, range(1, data.ndim))
        flat = data.reshape(nc, -1)
        if exact:
            parts = [np.bincount(row.astype(np.int64) - offset, minlength=nbins) for row in flat]
        else:  # a sample, for a histogram over the range of all of them
            parts = [row[::step].astype(np.float64) for row in flat]
        return box, pooled, parts

    per_channel: list[Any] = [np.zeros(nbins, np.int64) if exact else [] for _ in range(nc)]
    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for box, pooled, parts in _bounded_map(pool, read, _boxes(shape, edges), 4 * workers):
            t = box[0].start if t_axes else 0
            out = tuple(slice(b.start // f, -(-b.stop // f)) for b in box[lead:])
            coarse[(t, slice(None), *out)] = pooled
            for c, part in enumerate(parts):
                if exact:
                    per_channel[c] += part
                else:
                    per_channel[c].append(part)
    hists = []
    for c in range(nc):
        if exact:
            hists.append(Histogram(float(offset), 1.0, per_channel[c], True))
        else:
            hists.append(_float_histogram(np.concatenate(per_channel[c])))
    if level is not None:
        # a pyramid level's voxels are means (or samples) of the full resolution's: its
        # percentiles are not the image's, so the histograms come from full-resolution chunks
        hists, sampled = _full_resolution_histograms(source, workers)
        origin = f"{sampled} full-resolution chunks; coarse copy {origin}"
    return ImageStats(
        channels=tuple(hists),
        origin=origin if f == 1 else f"{origin}, pooled {f}x",
        factors=tuple(a * f for a in factors0),
        coarse=coarse,
        seconds=time.perf_counter() - t0,
    )


def _full_resolution_histograms(source: ImageSource, workers: int) -> tuple[list[Histogram], int]:
    """Histograms per channel of evenly spaced whole chunks of the full-resolution image, at
    most ``SAMPLE_VOXELS`` voxels per channel; and how many chunks were read."""
    arr = source.open()
    lead = source.channel_axes
    t_axes = 1 if source.time_axis else 0
    shape = tuple(int(s) for s in arr.shape)
    nt = shape[0] if t_axes else 1
    nc = math.prod(shape[:lead]) // nt
    edges = tuple(
        1 if i < t_axes else shape[i] if i < lead else int(c) for i, c in enumerate(arr.chunks)
    )
    boxes = list(_boxes(shape, edges))
    per_box = math.prod(min(e, n) for e, n in zip(edges[lead:], shape[lead:], strict=True))
    count = max(1, min(len(boxes), SAMPLE_VOXELS // max(1, per_box)))
    picked = [boxes[int(i)] for i in np.unique(np.linspace(0, len(boxes) - 1, count).round())]
    dtype = np.dtype(arr.dtype)
    exact = dtype.kind in "uib" and dtype.itemsize <= 2
    offset = int(np.iinfo(dtype).min) if dtype.kind == "i" else 0
    nbins = 2 ** (8 * dtype.itemsize) if exact else 0

    def read(box: tuple[slice, ...]) -> list[Any]:
        flat = np.asarray(arr[box]).reshape(nc, -1)
        if exact:
            return [np.bincount(row.astype(np.int64) - offset, minlength=nbins) for row in flat]
        return [row.astype(np.float64) for row in flat]

    totals: list[Any] = [np.zeros(nbins, np.int64) if exact else [] for _ in range(nc)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for parts in _bounded_map(pool, read, iter(picked), 4 * workers):
            for c, part in enumerate(parts):
                if exact:
                    totals[c] += part
                else:
                    totals[c].append(part)
    hists = [
        Histogram(float(offset), 1.0, totals[c], True)
        if exact
        else _float_histogram(np.concatenate(totals[c]))
        for c in range(nc)
    ]
    return hists, len(picked)


def _bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterator[Any], ahead: int
) -> Iterator[Any]:
    """``pool.map`` in order with at most ``ahead`` items in flight (bounded memory)."""
    pending: deque[Future[Any]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _float_histogram(values: NDArray[np.float64]) -> Histogram:
    values = values[np.isfinite(values)]
    if not len(values):
        return Histogram(0.0, 1.0, np.zeros(1, np.int64), False)
    lo, hi = float(values.min()), float(values.max())
    width = (hi - lo) / FLOAT_BINS if hi > lo else 1.0
    counts = np.histogram(values, bins=FLOAT_BINS, range=(lo, lo + width * FLOAT_BINS))[0]
    return Histogram(lo, width, counts.astype(np.int64), False)


# -- fns that use them -------------------------------------------------------------------


def prepare_fn(fn: Callable[..., Any], stats: ImageStats) -> Callable[..., Any]:
    """``fn.prepare(stats)`` where ``fn`` has such a method, else ``fn``.

    Raises
    ------
    TypeError
        If ``prepare`` does not return a callable.
    """
    prepare = getattr(fn, "prepare", None)
    if prepare is None or not callable(prepare):
        return fn
    prepared = prepare(stats)
    if not callable(prepared):
        raise TypeError(
            f"fn.prepare(stats) returned {type(prepared).__name__}; it must return the fn to "
            "run (a callable taking a block)"
        )
    return prepared  # type: ignore[no-any-return]
