"""What a run shows at its end: a summary table, and a block map picture of the tiles.

:func:`summary_table` formats tiles, failures, seconds and throughput per stage.
:func:`write_block_map` draws the input image (for 3D, one panel per layer of tiles along z)
with the tile grid over it, each tile coloured by state, next to the final labels (a colour
per label) and a heatmap of the seconds each tile took; :class:`BlockMap` keeps the image
pieces in memory for redrawing while a run goes on (the live status page).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from blockbuster.io.outputs import side_prefix
from blockbuster.pipeline.spec import RunSpec, read_spec
from blockbuster.pipeline.thumbnail import MapPlane
from blockbuster.run.events import Event, Progress, RunFinished, StageFinished, StageStarted
from blockbuster.run.records import (
    PLANES,
    RecordIndex,
    RecordScanner,
    TileCounts,
    plane_piece,
)
from blockbuster.run.rundir import RunDir
from blockbuster.ui.mapdraw import Canvas, hsv_to_rgb, inner_boundaries, viridis
from blockbuster.ui.memory import has_memory, write_memory_plot
from blockbuster.ui.status import TASKS, RunStatus

__all__ = [
    "STATE_COLORS",
    "BlockMap",
    "summary_table",
    "write_block_map",
]

StageCounts = TileCounts | tuple[int, int]
"""Tiles of one stage: a :class:`TileCounts`, or ``(done, failed)``."""


# -- summary table ------------------------------------------------------------------------------


logger = logging.getLogger("blockbuster")


def _si(value: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {suffix}"
    return f"{value:.1f}"


def _done_failed(counts: Any) -> tuple[int, int]:
    if isinstance(counts, TileCounts):
        return counts.num_done, counts.num_failed
    if isinstance(counts, tuple):
        return int(counts[0]), int(counts[1])
    # a status.TaskStatus: failed tiles, counting every tile of a failed block where it can
    failed = getattr(counts, "failed_count", None)
    return int(counts.done), int(failed if failed is not None else len(counts.failed))


def summary_table(
    source: RunDir | RunStatus | Mapping[str, StageCounts],
    seconds: Mapping[str, float] | None = None,
    *,
    num_labels: int | None = None,
    total: int | None = None,
    voxels: int | None = None,
) -> str:
    """A text table of a run: per stage tiles done, failed, seconds and voxels per second.

    Parameters
    ----------
    source
        Where the tile counts come from: a run directory (its record files are read, so call
        this before the directory is removed), a :class:`~blockbuster.ui.status.RunStatus`, or
        per stage a :class:`~blockbuster.ui.progress.TileCounts` or ``(done, failed)``.
    seconds
        Wall seconds by stage. Keys naming a task (``segment``, ``stitch``, ``relabel``) fill
        that task's row; other keys (``segment+stitch``, ``resolve``, ``total``, as in
        :attr:`RunResult.seconds <blockbuster.pipeline.driver.RunResult>`) get rows of their own, in
        the order given.
    num_labels
        Objects in the output, shown below the table when given.
    total
        Tiles per stage; read from the run directory's spec when not given.
    voxels
        Spatial voxels of the image; read from the spec when not given. Voxels per second
        of a stage are the image voxels times its fraction of tiles done, over its seconds.

    Returns
    -------
    str
        The table, lines joined by newlines, without a trailing newline.

    Examples
    --------
    >>> print(summary_table({"segment": (4, 0)}, {"segment": 2.0}, total=4, voxels=4000))
    stage                 tiles  failed   seconds      voxels/s
    segment                 4/4       0      2.00        2.00 k
    """
    seconds = dict(seconds or {})
    spec: RunSpec | None = None
    counts: dict[str, tuple[int, int]] = {}
    if isinstance(source, RunDir):
        if source.spec_file.exists():
            spec = read_spec(source)
        counts = {t: _done_failed(RecordScanner(source.records(t)).scan()) for t in TASKS}
    elif isinstance(source, RunStatus):
        run = RunDir(source.run_dir)
        if voxels is None and run.spec_file.exists():
            spec = read_spec(run)
        total = source.num_tiles if total is None else total
        counts = {name: _done_failed(t) for name, t in source.tasks.items()}
    else:
        counts = {name: _done_failed(c) for name, c in source.items()}
    if spec is not None:
        total = spec.plan.num_tiles if total is None else total
        voxels = math.prod(spec.plan.shape) if voxels is None else voxels

    def rate(done_fraction: float, secs: float | None) -> str:
        if voxels is None or secs is None or secs <= 0 or done_fraction <= 0:
            return "-"
        return _si(voxels * done_fraction / secs)

    def fmt_secs(secs: float | None) -> str:
        return "-" if secs is None else f"{secs:.2f}"

    lines = [f"{'stage':<16}{'tiles':>11}{'failed':>8}{'seconds':>10}{'voxels/s':>14}"]
    for name, (done, failed) in counts.items():
        secs = seconds.pop(name, None)
        tiles = f"{done}/{total}" if total is not None else str(done)
        fraction = done / total if total else 0.0
        lines.append(
            f"{name:<16}{tiles:>11}{failed:>8}{fmt_secs(secs):>10}{rate(fraction, secs):>14}"
        )
    for name, secs in seconds.items():
        # a row for several tasks at once, or the whole run: every voxel went through it
        whole = name == "total" or all(part in TASKS for part in name.split("+"))
        shown = rate(1.0, secs) if whole else "-"
        lines.append(f"{name:<16}{'':>11}{'':>8}{fmt_secs(secs):>10}{shown:>14}")
    if num_labels is not None:
        lines.append(f"labels          {num_labels:,}")
    return "\n".join(lines)


# -- block map ----------------------------------------------------------------------------------

PENDING, RUNNING, DONE, FAILED, SKIPPED = 0, 1, 2, 3, 4
MAX_GRID_LINES = 150
STATE_NAMES = ("pending", "running", "done", "failed", "skipped")
#: RGBA fill of each tile state over the image (pending tiles are left unfilled)
STATE_COLORS: dict[str, tuple[float, float, float, float]] = {
    "pending": (0.0, 0.0, 0.0, 0.0),
    "running": (1.0, 0.75, 0.0, 0.45),
    "done": (0.0, 0.75, 0.2, 0.45),
    "failed": (0.9, 0.05, 0.05, 0.65),
    "skipped": (0.35, 0.35, 0.5, 0.55),
}
#: outline of a tile segmented but failed in a later task (stitch, relabel)
LATER_FAILED_COLOR = (0.75, 0.0, 0.75)
#: drawn where a panel has no image yet (tiles not segmented), and between panels
NO_IMAGE_GREY, GAP_GREY = 0.97, 1.0
#: the tile grid's lines, drawn over every tile (pending ones included)
GRID_COLOR = (0.35, 0.35, 0.35, 0.8)
NOT_DONE_GREY = 0.85


def legend_counts(states: Mapping[str, Mapping[str, int]]) -> list[tuple[str, int]]:
    """The block map's legend: ``(entry, tiles)`` for each of segment's five states (the
    status table's segment row, from the same :meth:`TileCounts.states`), then
    ``"<task> failed"`` for each later task with failed tiles (its row's failed column).

    >>> legend_counts({"segment": {"done": 3, "failed": 1}, "stitch": {"failed": 2}})[2:]
    [('done', 3), ('failed', 1), ('skipped', 0), ('stitch failed', 2)]
    """
    seg = states.get("segment", {})
    out = [(name, int(seg.get(name, 0))) for name in STATE_NAMES]
    for task in TASKS[1:]:
        failed = int(states.get(task, {}).get("failed", 0))
        if failed:
            out.append((f"{task} failed", failed))
    return out


def robust_limits(
    values: Any,
    percentiles: tuple[float, float] = (2, 98),
    min_span_fraction: float = 0.2,
    min_span: float = 0.01,
) -> tuple[float, float] | None:
    """Colour limits of a heat map that outliers do not stretch: the given percentiles of the
    finite ``values`` (nearest values inside, so one outlier among few is left out), widened
    around their middle to at least ``min_span_fraction`` of the median and ``min_span``;
    None when no value is finite (draw no colour bar). Limits of non-negative values stay
    non-negative.

    >>> robust_limits([3.055, 3.06, 3.067])  # a near-constant run: a span of 20% of 3.06 s
    (2.754, 3.366)
    >>> robust_limits([1.0] * 20 + [1.2] * 20 + [100.0])  # the 100 s outlier is left out
    (0.98, 1.22)
    >>> robust_limits([np.nan]) is None
    True
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    lo = float(np.percentile(v, percentiles[0], method="higher"))
    hi = float(np.percentile(v, percentiles[1], method="lower"))
    lo, hi = min(lo, hi), max(lo, hi)
    span = max(min_span, min_span_fraction * abs(float(np.median(v))))
    if hi - lo < span:
        mid = (lo + hi) / 2
        lo, hi = mid - span / 2, mid + span / 2
        if lo < 0 <= v.min():
            lo, hi = 0.0, span
    return round(lo, 9), round(hi, 9)


def label_colors(labels: NDArray[Any]) -> NDArray[Any]:
    """An RGB colour (float, ``labels.shape + (3,)``) per label, hashed from its value so that
    neighbouring labels differ (a seam where one object gets two colours shows); 0 is black."""
    labels = np.asarray(labels)
    rgb = np.zeros(labels.shape + (3,))
    found = labels != 0
    h = (labels[found].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    hue = (h & np.uint64(0xFFF)).astype(np.float64) / 4096.0
    sat = 0.55 + 0.45 * ((h >> np.uint64(12)) & np.uint64(0x3F)).astype(np.float64) / 63
    val = 0.7 + 0.3 * ((h >> np.uint64(18)) & np.uint64(0x3F)).astype(np.float64) / 63
    rgb[found] = hsv_to_rgb(np.stack([hue, sat, val], axis=-1))
    return rgb


class BlockMap:
    """Draws the block map of a run; keeps what it loaded to redraw it cheaply.

    Parameters
    ----------
    run
        The run directory (its ``spec.json`` must exist).

    Notes
    -----
    A 2D image is one panel; a 3D one is one panel per layer of tiles along z (small
    multiples, each named with its z range and the plane drawn: the middle plane of the
    layer's cores, never a tile boundary), strided together to at most
    ``thumbnail.MAX_PIXELS`` a side (a time series: its first time point). The pixels come
    from the pieces the segment and relabel workers saved (:mod:`.thumbnail`), so the input
    and output are never read here: tiles not segmented yet are blank (with the tile grid
    over them). Tile states come from the record files on every draw, as the status table
    counts them (:meth:`TileCounts.states` of segment): *done*, *running* (``fn`` called
    without a result yet), *skipped* (outside the mask), *failed*, else *pending*; a tile
    segmented but failed in stitch or relabel is outlined.
    """

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.spec = read_spec(run)
        self.map = MapPlane.of(self.spec.plan)
        self.t, self.step = self.map.t, self.map.step
        self.height, self.width = self.map.height, self.map.width
        self.scanners = {t: RecordScanner(run.records(t)) for t in TASKS}
        self._pieces: dict[str, dict[int, tuple[dict[str, Any], NDArray[Any]]]] = {
            "segment": {},
            "relabel": {},
        }
        self._plane_index = {t: RecordIndex(run.records(t) / PLANES) for t in self._pieces}
        self._lock = threading.Lock()
        #: the task states the last drawing's legend counted
        self.last_counts: dict[str, dict[str, int]] = {}

    # -- data ---------------------------------------------------------------------------------

    def _load_pieces(self, task: str) -> dict[int, NDArray[Any]]:
        """The plane pieces ``task``'s workers saved so far (each record decoded once;
        pieces whose logs went, records cleared, are forgotten)."""
        cache = self._pieces[task]
        index = self._plane_index[task]
        index.refresh()
        for tile, record in index.planes.items():
            if tile not in cache or cache[tile][0] is not record:
                try:
                    cache[tile] = (record, plane_piece(record))
                except ValueError:
                    continue  # a damaged line: the tile stays out of the picture
        for tile in cache.keys() - index.planes.keys():
            del cache[tile]
        return {tile: piece for tile, (_, piece) in cache.items()}

    def image_mosaic(self) -> NDArray[Any]:
        """The drawn planes of the input as one 2D float mosaic of panels (NaN where nothing
        was drawn yet and between panels), strided for large images.

        Assembled from the pieces segment workers saved (see :mod:`.thumbnail`): the input
        is never read here.
        """
        return self.map.assemble(self.spec.plan, self._load_pieces("segment"), fill=np.nan)

    def image_plane(self, layer: int = 0) -> NDArray[Any]:
        """The drawn plane of tile layer ``layer`` (the image itself in 2D), strided."""
        return self.map.panel(self.image_mosaic(), layer)

    def label_mosaic(self) -> NDArray[Any] | None:
        """The final labels on the drawn planes (a mosaic like :meth:`image_mosaic`, 0
        elsewhere), or None before relabel wrote any."""
        pieces = self._load_pieces("relabel")
        if not pieces:
            return None
        return self.map.assemble(self.spec.plan, pieces, fill=0)

    def layer_tiles(self) -> NDArray[Any]:
        """Tile ids of the drawn tiles, shaped ``(layers, rows, columns)`` (1 layer in 2D)."""
        plan = self.spec.plan
        head: tuple[int, ...] = (self.t,) if self.t is not None else ()
        layers = len(self.map.layers) or 1
        gy, gx = plan.grid[-2:]
        out = np.empty((layers, gy, gx), dtype=np.int64)
        for k in range(layers):
            z = (k,) if self.map.layers else ()
            for iy in range(gy):
                first = plan.tile_id((*head, *z, iy, 0))
                out[k, iy] = np.arange(first, first + gx)
        return out

    def task_states(self) -> dict[str, dict[str, int]]:
        """Per task, its tiles by state: what the status table and ``status.json`` show."""
        num = self.spec.plan.num_tiles
        return {t: s.scan().states(num) for t, s in self.scanners.items()}

    def tile_states(
        self,
    ) -> tuple[NDArray[Any], NDArray[Any], set[int], dict[str, dict[str, int]]]:
        """Per drawn tile: its state and its segment seconds (NaN if not done).

        Returns
        -------
        states
            ``(layers, rows, columns)`` int array of ``PENDING``, ``RUNNING``, ``DONE``,
            ``FAILED``, ``SKIPPED`` (segment's state, as the status table counts it).
        seconds
            ``(layers, rows, columns)`` float array.
        later_failed
            Tiles segmented whose stitch or relabel block failed.
        task_states
            Per task, its tiles by state (see :meth:`task_states`).
        """
        scans = {t: s.scan() for t, s in self.scanners.items()}
        num = self.spec.plan.num_tiles
        seg = scans["segment"]
        tiles = self.layer_tiles()
        flat = tiles.ravel()
        done = np.fromiter(seg.done.keys(), dtype=np.int64, count=len(seg.done))
        seconds_of = np.fromiter(seg.done.values(), dtype=np.float64, count=len(seg.done))

        def member(ids: Any) -> NDArray[Any]:
            return np.isin(flat, np.fromiter(ids, dtype=np.int64))

        states = np.full(flat.shape, PENDING, dtype=np.int8)
        states[member(seg.running)] = RUNNING
        states[member(seg.done.keys())] = DONE
        states[member(seg.skipped & seg.done.keys())] = SKIPPED
        states[member(seg.failed)] = FAILED
        seconds = np.full(flat.shape, np.nan)
        if done.size:
            order = np.argsort(done)
            pos = np.searchsorted(done[order], flat)
            pos = np.minimum(pos, done.size - 1)
            hit = done[order][pos] == flat
            seconds[hit] = seconds_of[order][pos[hit]]
        later = set().union(scans["stitch"].failed, scans["relabel"].failed) - seg.failed
        counts = {t: c.states(num) for t, c in scans.items()}
        return states.reshape(tiles.shape), seconds.reshape(tiles.shape), later, counts

    # -- drawing ------------------------------------------------------------------------------

    def _pixels(self, per_tile: NDArray[Any], fill: float) -> NDArray[Any]:
        """A per-tile ``(layers, rows, columns)`` array spread over the mosaic's pixels."""
        mp, plan = self.map, self.spec.plan
        rows, cols = mp.tile_lookup(plan)
        out = np.full(mp.mosaic_shape, fill, dtype=np.result_type(per_tile.dtype, type(fill)))
        for k in range(per_tile.shape[0]):
            mp.panel(out, k)[...] = per_tile[k][rows[:, None], cols[None, :]]
        return out

    def data_xy(self, layer: int, y: float, x: float) -> tuple[float, float]:
        """Where voxel ``(y, x)`` of tile layer ``layer`` is in the map's axes (data units)."""
        r, c = self.map.panel_origin(layer)
        return c + x / self.step, r + y / self.step

    def _grid_segments(self) -> list[list[tuple[float, float]]]:
        """The panels' frames, and the tile grid inside them (unless too dense to see)."""
        mp, plan = self.map, self.spec.plan
        ph, pw = mp.shape
        ty, tx = plan.tile[-2:]
        gy, gx = plan.grid[-2:]
        dense = max(gy, gx) > MAX_GRID_LINES or min(ty, tx) / self.step < 3
        segments: list[list[tuple[float, float]]] = []
        for k in range(mp.num_panels):
            r, c = mp.panel_origin(k)
            segments += [
                [(c, r), (c + pw, r)],
                [(c + pw, r), (c + pw, r + ph)],
                [(c + pw, r + ph), (c, r + ph)],
                [(c, r + ph), (c, r)],
            ]
            if dense:
                continue
            for i in range(1, gx):
                x = c + -(-i * tx // self.step)
                segments.append([(x, r), (x, r + ph)])
            for i in range(1, gy):
                y = r + -(-i * ty // self.step)
                segments.append([(c, y), (c + pw, y)])
        return segments

    def draw(self, legend: bool = True) -> Canvas:
        """Draw the block map (see :mod:`blockbuster.ui.mapdraw`).

        Three views of the same panels: tiles by state over the image, the final labels
        (each its own colour), and the seconds each tile took (colour limits from
        :func:`robust_limits`; no colour bar before a tile is done). ``legend``: draw the
        legend of tile states with their counts (the live page shows its own, in HTML).
        """
        mp, plan = self.map, self.spec.plan
        image = self.image_mosaic()
        labels = self.label_mosaic()
        states, seconds, later, counts = self.tile_states()
        gaps = self._pixels(np.zeros(states.shape, dtype=np.int8), 1) == 1
        mh, mw = mp.mosaic_shape

        # the image in grey (1st-99th percentile), blank where not segmented yet
        finite = image[np.isfinite(image)]
        lo, hi = (float(v) for v in np.percentile(finite, (1, 99))) if finite.size else (0, 1)
        grey = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        grey = np.where(np.isfinite(image), grey, NO_IMAGE_GREY)
        grey[gaps] = GAP_GREY

        # tiles by state over the image
        tiles_rgb = np.repeat(grey[..., None], 3, axis=-1)
        state_px = self._pixels(states, -1)
        for code, name in enumerate(STATE_NAMES):
            *rgb, alpha = STATE_COLORS[name]
            where = state_px == code
            tiles_rgb[where] = alpha * np.array(rgb) + (1 - alpha) * tiles_rgb[where]

        # the final labels, one colour each, their borders darkened; the image dimmed under
        labels_rgb = np.repeat((0.25 + 0.5 * grey)[..., None], 3, axis=-1)
        if labels is not None:
            colored = label_colors(labels)
            borders = inner_boundaries(labels) & (labels != 0)
            colored[borders] *= 0.45
            labels_rgb = np.where((labels != 0)[..., None], colored, labels_rgb)
        labels_rgb[gaps] = GAP_GREY

        # seconds per tile
        limits = robust_limits(seconds)
        lo_s, hi_s = limits or (0.0, 1.0)
        # a colour per tile, then spread: the mosaic has many more pixels than tiles
        palette = np.full((seconds.size + 1, 3), NOT_DONE_GREY)
        done_tiles = np.isfinite(seconds.ravel())
        palette[:-1][done_tiles] = viridis((seconds.ravel()[done_tiles] - lo_s) / (hi_s - lo_s))
        palette[-1] = GAP_GREY
        order = np.arange(seconds.size).reshape(seconds.shape)
        secs_rgb = palette[self._pixels(order, -1)]

        canvas = Canvas((mh, mw), legend=legend)
        segments = self._grid_segments()
        names = [mp.panel_name(k) for k in range(mp.num_panels)]
        fontsize = float(np.clip(8 - mp.num_panels / 8, 4, 8))
        for k, picture in enumerate((tiles_rgb, labels_rgb, secs_rgb)):
            canvas.mosaic(k, picture)
            canvas.lines(k, segments, GRID_COLOR)
            canvas.frame(k)
        if later:
            boxes = []
            for tile in sorted(later):
                index = plan.tile_index(tile)
                if not mp.crosses(plan, index):
                    continue
                (y0, y1), (x0, x1) = plan.core(index)[-2:]
                k = mp.layer_of(plan, index)
                a, b = self.data_xy(k, y0, x0), self.data_xy(k, y1, x1)
                boxes.append([a, (b[0], a[1]), b, (a[0], b[1]), a])
            canvas.lines(0, boxes, LATER_FAILED_COLOR, width=2)
        for k in range(3):
            for layer, name in enumerate(names):
                if name:
                    r, c = mp.panel_origin(layer)
                    canvas.label(k, c + 1, r + 1, name, fontsize)
        layers = f", {len(mp.layers)} tile layers along z" if mp.layers else ""
        where = f"t = {self.t}, " if self.t is not None else ""
        canvas.title(0, f"tiles ({where}{self.height} x {self.width} voxels{layers})")
        canvas.title(
            1,
            "final labels (a colour per label)" if labels is not None
            else "final labels (once relabel runs)",
        )  # fmt: skip
        done = seconds[np.isfinite(seconds)]
        if limits is not None:
            canvas.colour_bar(
                2,
                limits,
                extend_low=bool((done < limits[0]).any()),
                extend_high=bool((done > limits[1]).any()),
                text="seconds (2nd-98th percentile)",
            )
            stats = f" (median {np.median(done):.2f} s, max {done.max():.2f} s)"
        else:
            canvas.message(2, "no tile done yet")
            stats = ""
        canvas.title(2, f"segment seconds per tile{stats}")
        if legend:
            entries: list[tuple[str, Any, Any, int]] = []
            for name, n in legend_counts(counts):
                if name in STATE_COLORS:
                    face = STATE_COLORS[name][:3] if name != "pending" else None
                    entries.append((f"{name} {n}", face, GRID_COLOR[:3], 1))
                else:
                    entries.append((f"{name} {n}", None, LATER_FAILED_COLOR, 2))
            canvas.legend_row(entries)
        self.last_counts = counts
        return canvas

    def png(self, legend: bool = True) -> bytes:
        """The block map as PNG bytes."""
        with self._lock:
            return self.draw(legend).png()

    def write(self, path: Path | str, png: bytes | None = None) -> Path:
        """Write the block map (or ``png``, drawn already) to ``path`` as PNG (written
        whole, then renamed into place)."""
        from blockbuster.run.files import write_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.png() if png is None else png, mode=0o644)
        return path


def write_block_map(run: RunDir, path: Path | None = None) -> Path:
    """Draw the block map of ``run`` to a PNG file.

    Three views of the same panels (a 2D image: one; a 3D one: one per layer of tiles along
    z, each named with its z range and the plane drawn, the middle of the layer): the input
    in grey with the tile grid over it, each tile coloured by state (done, running, failed,
    skipped, pending; a tile that failed in stitch or relabel outlined), with a legend of
    the counts the status table shows; the final labels once relabel ran, a colour per label
    so that a seam between tiles shows; and seconds per tile of the segment task as a
    heatmap with robust colour limits (:func:`robust_limits`). Neither the input nor the
    output is read: the pieces the workers saved are.

    Parameters
    ----------
    run
        The run directory.
    path
        Where to write; default ``<run_dir>/block_map.png``.

    Returns
    -------
    Path
        The PNG written.
    """
    return BlockMap(run).write(path or run.root / "block_map.png")


class Reporter:
    """An observer that fills a finished pipeline run's summary table and block map.

    It times each task from the start of its stage until its records say every unit is
    done; at :class:`~blockbuster.run.events.RunFinished` it writes the table into
    ``result.table`` (printed too with ``print_table``) and draws the block map into
    ``result.block_map``: ``<run_dir>/block_map.png`` while the run directory is kept, else
    ``<write_to>.block_map.png`` (for a SpatialData labels element ``<store>.<name>.``, beside
    the store); beside it, the status page's final state as a
    self-contained HTML file, ``status.html`` (``<write_to>.status.html``), named in
    ``result.status_page``.
    """

    def __init__(
        self,
        print_table: bool = False,
        *,
        page_writer: Callable[..., Path] | None = None,
        clock: Callable[[Event], None] | None = None,
    ) -> None:
        self.print_table = print_table
        #: writes the status page's final copy: ``page_writer(run, path, clock=, map_png=)``
        #: (:func:`blockbuster.ui.live.write_status_page`; None: no copy)
        self.page_writer = page_writer
        #: fed every event: elapsed times and rates per task for that copy
        #: (a :class:`blockbuster.ui.live.StageClock`)
        self.clock = clock
        self.seconds: dict[str, float] = {}
        #: the block map drawn at the run's end (for the live page's final state)
        self.last_png: bytes | None = None
        self._started = 0.0
        self._totals: dict[str, int] = {}

    def __call__(self, event: Event) -> None:
        import time

        if self.clock is not None:
            self.clock(event)
        if isinstance(event, StageStarted):
            self._started = time.monotonic()
            self._totals = {t.name: t.total for t in event.tasks}
        elif isinstance(event, Progress):
            total = self._totals.get(event.task)
            if total is not None and event.counts.num_done >= total:
                self.seconds.setdefault(event.task, time.monotonic() - self._started)
        elif isinstance(event, StageFinished):
            for name in self._totals:
                self.seconds.setdefault(name, time.monotonic() - self._started)
            self._totals = {}
        elif isinstance(event, RunFinished):
            self.finish(RunDir(event.run_dir), event.result, event.keep)

    def finish(self, run: RunDir, result: Any, keep: bool) -> None:
        if not hasattr(result, "block_map") or not run.spec_file.exists():
            return  # not a tile_process run: no table of tiles, no map
        seconds = {**self.seconds, **result.seconds}
        # no labels line: the summary printed after the table has it
        result.table = summary_table(run, seconds)
        base = f"{run.root}/" if keep else side_prefix(result.output)
        png = None
        try:
            block_map = BlockMap(run)
            png = self.last_png = block_map.png()
            result.block_map = str(block_map.write(f"{base}block_map.png", png))
        except Exception as e:  # a picture must never fail a run
            logger.warning("could not draw the block map: %s", e)
        try:
            if self.page_writer is not None:
                page = self.page_writer(run, f"{base}status.html", clock=self.clock, map_png=png)
                result.status_page = str(page)
        except Exception as e:
            logger.warning("could not write the status page's final copy: %s", e)
        try:
            if has_memory(result.tasks):
                result.dask_memory = str(write_memory_plot(result.tasks, f"{base}dask_memory.png"))
        except Exception as e:
            logger.warning("could not draw the Dask memory plot: %s", e)
        if self.print_table:
            print(result.table, file=sys.stderr, flush=True)
