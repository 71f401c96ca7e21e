"""What a run shows at its end: a summary table, and a block map picture of the tiles.

:func:`summary_table` formats tiles, failures, seconds and throughput per stage.
:func:`write_block_map` draws a mid-plane of the input image with the tile grid over it, each
tile coloured by state, next to a heatmap of the seconds each tile took; :class:`BlockMap`
keeps the image plane in memory for redrawing while a run goes on (the live status page).
"""

from __future__ import annotations

import io
import logging
import math
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from blockbuster.pipeline.spec import RunSpec, read_spec
from blockbuster.pipeline.thumbnail import MapPlane
from blockbuster.run.events import Event, Progress, RunFinished, StageFinished, StageStarted
from blockbuster.run.records import RecordScanner, TaskRecords, TileCounts
from blockbuster.run.rundir import RunDir
from blockbuster.ui.status import TASKS, RunStatus

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


class BlockMap:
    """Draws the block map of a run; keeps what it loaded to redraw it cheaply.

    Parameters
    ----------
    run
        The run directory (its ``spec.json`` must exist).

    Notes
    -----
    The drawn plane is the middle z plane (the image itself in 2D; a time series' first time
    point), strided to at most ``thumbnail.MAX_PIXELS`` a side. Its pixels come from the
    pieces the segment and relabel workers saved (:mod:`.thumbnail`), so the input
    and output are never read here: tiles not segmented yet are blank. Tile states come from
    the record files on every draw: a tile is *done* when segmented, *running* when its ``fn``
    was called without a result yet, *skipped* when it lies outside the mask (done without
    being read), *failed* when any task failed on it (failed is drawn over every other
    state), else *pending*.
    """

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.spec = read_spec(run)
        #: the drawn plane: the middle z, a time series' first time point (as the workers save)
        self.map = MapPlane.of(self.spec.plan)
        self.t, self.z, self.step = self.map.t, self.map.z, self.map.step
        self.height, self.width = self.map.height, self.map.width
        self.scanners = {t: RecordScanner(run.records(t)) for t in TASKS}
        self._pieces: dict[str, dict[int, NDArray[Any]]] = {"segment": {}, "relabel": {}}
        self._lock = threading.Lock()

    # -- data ---------------------------------------------------------------------------------

    def _load_pieces(self, task: str) -> dict[int, NDArray[Any]]:
        """The plane pieces ``task``'s workers saved so far (each file is read once)."""
        pieces = self._pieces[task]
        for tile, path in TaskRecords(self.run.records(task), task).files("plane"):
            if tile not in pieces:
                try:
                    pieces[tile] = np.load(path)
                except (OSError, ValueError):
                    continue  # removed or replaced meanwhile: next draw
        return pieces

    def image_plane(self) -> NDArray[Any]:
        """The drawn plane of the input, 2D float, strided for large images.

        Assembled from the pieces segment workers saved (see :mod:`.thumbnail`):
        the input is never read here, and tiles not segmented yet are blank.
        """
        return self.map.assemble(self.spec.plan, self._load_pieces("segment"), fill=np.nan)

    def label_outlines(self) -> NDArray[Any] | None:
        """Boolean outlines of the final labels on the drawn plane, or None before relabel.

        From the pieces relabel workers saved (the output is never read here).
        """
        from skimage.segmentation import find_boundaries

        pieces = self._load_pieces("relabel")
        if not pieces:
            return None
        lab = self.map.assemble(self.spec.plan, pieces, fill=0)
        outlines: NDArray[Any] = find_boundaries(lab, mode="inner") & (lab != 0)
        return outlines

    def slab_tiles(self) -> NDArray[Any]:
        """Tile ids of the drawn plane's tiles, shaped as their grid ``(rows, columns)``."""
        plan = self.spec.plan
        gy, gx = plan.grid[-2:]
        head: tuple[int, ...] = (self.t,) if self.t is not None else ()
        if self.z is not None:
            head += (self.z // plan.tile[-3],)
        return np.array(
            [[plan.tile_id((*head, iy, ix)) for ix in range(gx)] for iy in range(gy)],
            dtype=np.int64,
        ).reshape(gy, gx)

    def tile_states(self) -> tuple[NDArray[Any], NDArray[Any], dict[str, int]]:
        """Per tile of the drawn plane: its state and its segment seconds (NaN if not done).

        Returns
        -------
        states
            ``(rows, columns)`` int array of ``PENDING``, ``RUNNING``, ``DONE``, ``FAILED``,
            ``SKIPPED``.
        seconds
            ``(rows, columns)`` float array.
        totals
            Tiles of the whole run by state name.
        """
        counts = {t: s.scan() for t, s in self.scanners.items()}
        seg = counts["segment"]
        failed = set().union(*(c.failed for c in counts.values()))
        tiles = self.slab_tiles()
        states = np.full(tiles.shape, PENDING, dtype=np.int8)
        seconds = np.full(tiles.shape, np.nan)
        for pos, tile in np.ndenumerate(tiles):
            t = int(tile)
            if t in failed:
                states[pos] = FAILED
            elif t in seg.skipped and t in seg.done:
                states[pos] = SKIPPED
            elif t in seg.done:
                states[pos] = DONE
            elif t in seg.started:
                states[pos] = RUNNING
            if t in seg.done:
                seconds[pos] = seg.done[t]
        num = self.spec.plan.num_tiles
        n_failed = len(failed)
        n_skipped = len(seg.skipped & seg.done.keys() - failed)
        n_done = len(seg.done.keys() - failed) - n_skipped
        n_running = len(seg.started - seg.done.keys() - failed)
        totals = {
            "pending": num - n_failed - n_done - n_running - n_skipped,
            "running": n_running,
            "done": n_done,
            "failed": n_failed,
            "skipped": n_skipped,
        }
        return states, seconds, totals

    # -- drawing ------------------------------------------------------------------------------

    def figure(self) -> Figure:
        """Draw the block map as a matplotlib figure (on an Agg canvas; drawn when saved)."""
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        plan = self.spec.plan
        image = self.image_plane()
        outlines = self.label_outlines()
        states, seconds, totals = self.tile_states()
        ty, tx = plan.tile[-2:]
        gy, gx = states.shape
        h, w = self.height, self.width

        panel_w = 5.0
        panel_h = float(np.clip(panel_w * h / w, 2.0, 8.0))
        fig = Figure(figsize=(2 * panel_w + 1.2, panel_h + 1.1), dpi=100)
        FigureCanvasAgg(fig)
        # fixed margins in inches: a constrained layout would draw the figure twice
        fw, fh = fig.get_size_inches()
        fig.subplots_adjust(
            left=0.6 / fw, right=1 - 0.2 / fw, bottom=0.85 / fh, top=1 - 0.35 / fh, wspace=0.15
        )
        ax_state, ax_secs = fig.subplots(1, 2)
        extent = (0.0, float(w), float(h), 0.0)
        tile_extent = (0.0, float(gx * tx), float(gy * ty), 0.0)

        finite = image[np.isfinite(image)]
        lo, hi = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
        vmax = hi if hi > lo else lo + 1
        ax_state.imshow(
            image, cmap="gray", vmin=lo, vmax=vmax, extent=extent, interpolation="nearest"
        )
        colors = ListedColormap([STATE_COLORS[n] for n in STATE_NAMES])
        top = len(STATE_NAMES) - 0.5
        ax_state.imshow(
            states, cmap=colors, vmin=-0.5, vmax=top, extent=tile_extent, interpolation="nearest"
        )
        if outlines is not None:
            rgba = np.zeros((*outlines.shape, 4), dtype=np.float32)
            rgba[outlines] = (0.2, 0.9, 1.0, 1.0)
            ax_state.imshow(rgba, extent=extent, interpolation="nearest")
        where = f"z = {self.z}, " if self.z is not None else ""
        ax_state.set_title(f"tiles ({where}{h} x {w} voxels)", fontsize=10)
        fig.legend(
            handles=[
                Patch(
                    facecolor=STATE_COLORS[n][:3] if n != "pending" else "none",
                    edgecolor="0.3",
                    label=f"{n} {totals[n]}",
                )
                for n in STATE_NAMES
            ],
            loc="lower left",
            bbox_to_anchor=(0.5 / fw, 0.0),
            ncols=4,
            fontsize=8,
            frameon=False,
        )

        cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(0.85, 0.85, 0.85))
        shown = ax_secs.imshow(
            np.ma.masked_invalid(seconds), cmap=cmap, extent=tile_extent, interpolation="nearest"
        )
        bar = fig.colorbar(shown, ax=ax_secs, shrink=0.8)
        bar.set_label("seconds", fontsize=8)
        bar.ax.tick_params(labelsize=7)
        done = seconds[np.isfinite(seconds)]
        stats = f" (mean {done.mean():.2f} s, max {done.max():.2f} s)" if done.size else ""
        ax_secs.set_title(f"segment seconds per tile{stats}", fontsize=10)

        for ax in (ax_state, ax_secs):
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            if max(gx, gy) <= MAX_GRID_LINES:  # beyond, lines would hide the picture
                ax.vlines(np.arange(1, gx) * tx, 0, h, colors="white", linewidths=0.6, alpha=0.7)
                ax.hlines(np.arange(1, gy) * ty, 0, w, colors="white", linewidths=0.6, alpha=0.7)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("x (voxels)", fontsize=8)
        ax_state.set_ylabel("y (voxels)", fontsize=8)
        return fig

    def png(self) -> bytes:
        """The block map as PNG bytes."""
        with self._lock:
            fig = self.figure()
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
        return buf.getvalue()

    def write(self, path: Path | str) -> Path:
        """Write the block map to ``path`` as PNG (written whole, then renamed into place)."""
        from blockbuster.run.files import write_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.png(), mode=0o644)
        return path


def write_block_map(run: RunDir, path: Path | None = None) -> Path:
    """Draw the block map of ``run`` to a PNG file.

    Left: the middle plane of the input (the image itself for 2D) in grey with the tile grid
    over it, each tile coloured by state (done, running, failed, pending; a tile that failed
    in any task is drawn failed), with the final labels' outlines once relabel ran. Right:
    seconds per tile of the segment task as a heatmap. Neither the input nor the output is
    read: the pieces of that plane the workers saved are.

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
    ``<write_to>.block_map.png``.
    """

    def __init__(self, print_table: bool = False) -> None:
        self.print_table = print_table
        self.seconds: dict[str, float] = {}
        self._started = 0.0
        self._totals: dict[str, int] = {}

    def __call__(self, event: Event) -> None:
        import time

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
        result.table = summary_table(run, seconds, num_labels=result.num_labels or None)
        path = run.root / "block_map.png" if keep else Path(result.output + ".block_map.png")
        try:
            result.block_map = str(write_block_map(run, path))
        except Exception as e:  # a picture must never fail a run
            logger.warning("could not draw the block map: %s", e)
        if self.print_table:
            print(result.table, file=sys.stderr, flush=True)
