"""Progress of a running task, read from its record files while workers write them.

:class:`RecordScanner` counts a task's tiles done and failed from ``<run_dir>/records/<task>/``
with one ``os.scandir`` per call, parsing each record file only the first time it appears
(records are written once, atomically, and never change). A done record may stand for several
tiles: its optional ``"tiles"`` list names them, and its ``"seconds"`` are then split evenly
between them (see :func:`record_tiles`).

:class:`ProgressMonitor` polls the scanners of the running tasks from a daemon thread and shows
one tqdm bar per task on a terminal, or else prints one plain line per task at most every few
seconds, and a final line per task when it completes or the monitor stops::

    segment: 64/64 tiles, 0 failed, 12.3 s, 5.2 tiles/s
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from blockbuster.run.rundir import RunDir

__all__ = [
    "ProgressMonitor",
    "RecordScanner",
    "TileCounts",
    "record_tiles",
    "tile_counts",
]


def record_tiles(record: dict[str, Any], tile: int) -> list[int]:
    """The tiles a record stands for.

    Parameters
    ----------
    record
        A parsed record file (done or error).
    tile
        The tile id in the record's file name (``<tile>.json``, ``<tile>.error.<id>.json``).

    Returns
    -------
    list of int
        The record's ``"tiles"`` list where it has one (a block covering several tiles), else
        ``[tile]``.
    """
    tiles = record.get("tiles")
    if isinstance(tiles, list) and tiles:
        return [int(t) for t in tiles]
    return [tile]


@dataclass
class TileCounts:
    """The tiles of one task by state.

    Attributes
    ----------
    done
        Seconds per done tile (a record's seconds split evenly over the tiles it covers).
    failed
        Tiles with at least one failed attempt and no success.
    started
        Tiles whose ``fn`` was called (segment's ``<tile>.call.<id>`` files), done or not.
    """

    done: dict[int, float] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    started: set[int] = field(default_factory=set)

    def copy(self) -> TileCounts:
        return TileCounts(dict(self.done), set(self.failed), set(self.started))

    @property
    def num_done(self) -> int:
        return len(self.done)

    @property
    def num_failed(self) -> int:
        return len(self.failed)

    def pending(self, total: int) -> int:
        """Tiles of ``total`` neither done nor failed."""
        return max(total - self.num_done - self.num_failed, 0)

    @property
    def running(self) -> set[int]:
        """Tiles started and neither done nor failed (running, or their worker died)."""
        return self.started - self.done.keys() - self.failed


def _tile_of(name: str) -> tuple[int, str] | None:
    """``(tile, kind)`` of a record file name; kind is ``"done"``, ``"error"`` or ``"call"``."""
    if name.startswith("."):
        return None
    head, _, rest = name.partition(".")
    if not head.isdigit():
        return None
    if rest.startswith("call."):
        return int(head), "call"
    if rest == "json":
        return int(head), "done"
    if rest.startswith("error.") and rest.endswith(".json"):
        return int(head), "error"
    return None


class RecordScanner:
    """Counts one task's tiles from its record folder, cheaply and repeatedly.

    Parameters
    ----------
    root
        The task's record folder, ``<run_dir>/records/<task>``. It may not exist yet (or any
        more): it then counts no tiles.

    Notes
    -----
    Each :meth:`scan` lists the folder once and parses only record files it has not seen
    before, so polling a folder of thousands of records costs one directory listing (about
    20 ms for 10,000 tiles). A file that disappears (a task's records are cleared before it
    reruns) is forgotten.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._seen: set[str] = set()  # names handled (parsed, or not records)
        self._done: dict[str, tuple[list[int], float]] = {}
        self._errors: dict[str, list[int]] = {}
        self._calls: dict[str, int] = {}
        self._counts: TileCounts | None = None
        self._lock = threading.Lock()

    def scan(self) -> TileCounts:
        """Read the folder now.

        Returns
        -------
        TileCounts
            Done tiles with their seconds, failed tiles (errors without a success) and
            started tiles.
        """
        with self._lock:
            try:
                names = set(os.listdir(self.root))
            except FileNotFoundError:
                names = set()
            gone, new = self._seen - names, names - self._seen
            if not gone and not new and self._counts is not None:
                return self._counts.copy()  # nothing changed since the last scan
            for name in gone:
                self._seen.discard(name)
                self._done.pop(name, None)
                self._errors.pop(name, None)
                self._calls.pop(name, None)
            unread: list[tuple[int, str]] = []  # records not readable yet: counted by name
            for name in new:
                parsed = _tile_of(name)
                if parsed is None:
                    self._seen.add(name)
                elif parsed[1] == "call":
                    self._calls[name] = parsed[0]
                    self._seen.add(name)
                elif self._parse(name, *parsed):
                    self._seen.add(name)
                else:
                    unread.append(parsed)
            done = list(self._done.values()) + [([t], 0.0) for t, k in unread if k == "done"]
            errors = list(self._errors.values()) + [[t] for t, k in unread if k == "error"]
            counts = TileCounts(started=set(self._calls.values()))
            for tiles, seconds in done:
                for t in tiles:
                    counts.done[t] = seconds / len(tiles)
            for tiles in errors:
                counts.failed.update(t for t in tiles if t not in counts.done)
            self._counts = None if unread else counts.copy()
            return counts

    def _parse(self, name: str, tile: int, kind: str) -> bool:
        """Cache the record ``name``; False when it could not be read (try again next scan)."""
        try:
            record = json.loads((self.root / name).read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(record, dict):
            return False
        tiles = record_tiles(record, tile)
        if kind == "done":
            self._done[name] = (tiles, float(record.get("seconds", 0.0)))
        else:
            self._errors[name] = tiles
        return True


def tile_counts(run: RunDir, task: str) -> TileCounts:
    """One task's tiles by state, read once from ``run``'s record files.

    Parameters
    ----------
    run
        The run directory.
    task
        ``"segment"``, ``"stitch"`` or ``"relabel"``.
    """
    return RecordScanner(run.records(task)).scan()


def format_rate(done: int, seconds: float) -> str:
    """``"5.2 tiles/s"`` (or ``"-"`` before any time passed)."""
    return f"{done / seconds:.1f} tiles/s" if seconds > 0 else "- tiles/s"


def format_eta(seconds: float) -> str:
    """``"17 s"``, ``"3 min 5 s"`` or ``"2 h 4 min"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


@dataclass
class _Stage:
    name: str
    scanner: RecordScanner
    initial: int = -1  # tiles done when the monitor first looked (resumed runs)
    done: int = 0
    failed: int = 0
    printed: tuple[int, int] | None = None
    finished_at: float | None = None
    final_printed: bool = False
    bar: Any = None


class ProgressMonitor:
    """Shows the progress of running tasks from their record files.

    Use as a context manager around the code that runs the tasks; a daemon thread polls the
    record folders until the block exits.

    Parameters
    ----------
    run
        The run directory whose ``records/<task>/`` folders are read.
    tasks
        Names of the tasks to follow, in display order.
    total
        Tiles per task.
    interactive
        One tqdm bar per task when True; plain lines when False; None (default) chooses bars
        when ``stream`` is a terminal.
    interval
        Plain mode: least seconds between two rounds of lines (one line per task with news);
        a task's final line comes as soon as all its tiles are done.
    poll
        Seconds between two looks at the record folders (more where one look takes over a
        twentieth of that).
    stream
        Where to write (default ``sys.stderr``).
    clock
        Seconds since some fixed point (default ``time.monotonic``); tests pass a fake one.

    Attributes
    ----------
    seconds
        Per task, seconds from the start of the monitor until the task had all its tiles
        done (or until the monitor stopped, for a task that did not finish). Filled when the
        monitor stops.

    Examples
    --------
    >>> with ProgressMonitor(run, ["segment", "stitch"], plan.num_tiles) as monitor:
    ...     run_tasks(["segment", "stitch"])
    >>> monitor.seconds
    {'segment': 12.3, 'stitch': 14.0}
    """

    def __init__(
        self,
        run: RunDir,
        tasks: Sequence[str],
        total: int,
        interactive: bool | None = None,
        *,
        interval: float = 10.0,
        poll: float = 0.5,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run = run
        self.total = int(total)
        self.stream = stream if stream is not None else sys.stderr
        if interactive is None:
            isatty = getattr(self.stream, "isatty", None)
            interactive = bool(isatty()) if isatty is not None else False
        self.interactive = interactive
        self.interval = float(interval)
        self.poll = float(poll)
        self.clock = clock
        self.stages = [_Stage(name, RecordScanner(run.records(name))) for name in tasks]
        self.seconds: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._start = 0.0
        self._last_print = -float("inf")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> ProgressMonitor:
        """Take the first look at the records and start polling."""
        self._start = self.clock()
        self.update()
        self._thread = threading.Thread(target=self._loop, name="blockbuster-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling, take a last look, close the bars and print the final lines."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.update()
        with self._lock:
            now = self.clock()
            for stage in self.stages:
                if stage.bar is not None:
                    stage.bar.close()
                    stage.bar = None
            for stage in self.stages:
                end = stage.finished_at if stage.finished_at is not None else now
                self.seconds[stage.name] = end - self._start
                if not stage.final_printed:
                    self._final_line(stage, now)
            self.stream.flush()

    def __enter__(self) -> ProgressMonitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _loop(self) -> None:
        # poll no more than 5% of the time: huge runs have big record folders to list
        wait = self.poll
        while not self._stop.wait(wait):
            started = time.perf_counter()
            try:
                self.update()
            except Exception as err:  # never let a display problem end the run
                print(f"blockbuster progress: {err}", file=self.stream)
            wait = max(self.poll, 20 * (time.perf_counter() - started))

    # -- polling ------------------------------------------------------------------------------

    def update(self) -> None:
        """Read the record folders once and update the display."""
        with self._lock:
            now = self.clock()
            for stage in self.stages:
                counts = stage.scanner.scan()
                stage.done, stage.failed = counts.num_done, counts.num_failed
                if stage.initial < 0:
                    stage.initial = stage.done
                    stage.printed = (stage.done, stage.failed)
                if stage.finished_at is None and stage.done >= self.total:
                    stage.finished_at = now
            if self.interactive:
                self._update_bars()
            else:
                self._print_lines(now)

    def _update_bars(self) -> None:
        from tqdm.auto import tqdm

        for position, stage in enumerate(self.stages):
            if stage.bar is None:
                stage.bar = tqdm(
                    total=self.total,
                    initial=stage.done,
                    desc=stage.name,
                    unit="tile",
                    position=position,
                    file=self.stream,
                    dynamic_ncols=True,
                    leave=True,
                )
                stage.bar.set_postfix(failed=stage.failed, refresh=False)
            bar = stage.bar
            if (stage.done, stage.failed) != stage.printed:
                bar.set_postfix(failed=stage.failed, refresh=False)
            if stage.done > bar.n:
                bar.update(stage.done - bar.n)
            elif stage.done < bar.n:  # records cleared (the task reruns)
                bar.reset(total=self.total)
                bar.update(stage.done)
            else:
                bar.refresh()
            stage.printed = (stage.done, stage.failed)

    def _print_lines(self, now: float) -> None:
        elapsed = now - self._start
        due = now - self._last_print >= self.interval
        printed = False
        for stage in self.stages:
            if stage.final_printed:
                continue
            if stage.finished_at is not None:
                self._final_line(stage, now)
                printed = True
                continue
            state = (stage.done, stage.failed)
            if due and state != stage.printed:
                new = stage.done - stage.initial
                line = (
                    f"{stage.name}: {stage.done}/{self.total} tiles, {stage.failed} failed, "
                    f"{format_rate(new, elapsed)}"
                )
                if new > 0 and elapsed > 0:
                    line += f", ETA {format_eta((self.total - stage.done) * elapsed / new)}"
                print(line, file=self.stream)
                stage.printed = state
                printed = True
        if printed:
            self._last_print = now
            self.stream.flush()

    def _final_line(self, stage: _Stage, now: float) -> None:
        end = stage.finished_at if stage.finished_at is not None else now
        seconds = end - self._start
        print(
            f"{stage.name}: {stage.done}/{self.total} tiles, {stage.failed} failed, "
            f"{seconds:.1f} s, {format_rate(stage.done - stage.initial, seconds)}",
            file=self.stream,
        )
        stage.final_printed = True
