"""What a run tells its observers: the driver emits events, the UI subscribes.

The engines and drivers import no UI module: progress bars, the live status page, the summary
table and the block map are observers (callables taking an :data:`Event`) handed to the run.
Block events come from the workers' record files, read by one :class:`RecordWatcher` thread
per stage, so they reach observers the same way on every engine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockbuster.run.records import RecordScanner, TileCounts

logger = logging.getLogger("blockbuster")


@dataclass(frozen=True)
class TaskInfo:
    """A task as observers see it: its name, its size in progress units, their name, and
    the names of the tasks it waits for."""

    name: str
    total: int
    unit_name: str = "blocks"
    upstream: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunStarted:
    """A driver took its run directory and is about to run tasks."""

    run_dir: Path
    tasks: tuple[TaskInfo, ...]


@dataclass(frozen=True)
class StageStarted:
    """One engine pass over ``tasks`` (run together, later ones waiting on earlier) begins."""

    tasks: tuple[TaskInfo, ...]


@dataclass(frozen=True)
class Progress:
    """The state of one task's units, re-read from its records (every fraction of a second
    while a stage runs, only when something changed)."""

    task: str
    counts: TileCounts


@dataclass(frozen=True)
class StageFinished:
    """The pass ended; ``reports`` maps each task to its report (see
    :class:`blockbuster.run.engines.TaskReport`)."""

    reports: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class RunFinished:
    """The driver is done; ``result`` is what it returns (observers may fill its report
    fields, e.g. the summary table)."""

    run_dir: Path
    result: Any
    keep: bool = False


Event = RunStarted | StageStarted | Progress | StageFinished | RunFinished
Observer = Callable[[Event], None]


@dataclass
class Events:
    """The observers of one run; :meth:`emit` never lets an observer fail the run."""

    observers: Sequence[Observer] = field(default_factory=tuple)
    #: whether :class:`RunFinished` was emitted (a driver that stops on an exception emits
    #: one with no result, so that observers close what they opened)
    finished: bool = False

    def emit(self, event: Event) -> None:
        if isinstance(event, RunFinished):
            self.finished = True
        for observer in self.observers:
            try:
                observer(event)
            except Exception as e:  # a display must never cost a run
                logger.warning("observer %r failed on %s: %s", observer, type(event).__name__, e)


class RecordWatcher:
    """Emits :class:`Progress` for the tasks of a stage while it runs (a daemon thread).

    Parameters
    ----------
    events
        Where to emit.
    folders
        ``(task name, record folder)`` for each task of the stage.
    poll
        Seconds between two looks (more where one look takes over a twentieth of that).
    """

    def __init__(
        self, events: Events, folders: Sequence[tuple[str, Path]], poll: float = 0.5
    ) -> None:
        self.events = events
        self.scanners = [(name, RecordScanner(path)) for name, path in folders]
        self.poll = poll
        self._last: dict[str, tuple[int, int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="blockbuster-records", daemon=True)

    def __enter__(self) -> RecordWatcher:
        if self.events.observers:
            self.look()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.events.observers:
            self._stop.set()
            self._thread.join()
            self.look()

    def _loop(self) -> None:
        import time

        wait = self.poll
        while not self._stop.wait(wait):
            start = time.perf_counter()
            self.look()
            wait = max(self.poll, 20 * (time.perf_counter() - start))

    def look(self) -> None:
        for name, scanner in self.scanners:
            counts = scanner.scan()
            state = (counts.num_done, counts.num_failed, len(counts.started))
            if self._last.get(name) != state:
                self._last[name] = state
                self.events.emit(Progress(name, counts.copy()))
