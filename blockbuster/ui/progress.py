"""Progress bars and lines: an observer of a run's events (see :class:`ProgressMonitor`)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from blockbuster.run.events import (
    Event,
    Progress,
    RunFinished,
    StageFinished,
    StageStarted,
    TaskInfo,
)

__all__ = ["ProgressMonitor", "format_eta", "format_rate"]


def format_rate(done: int, seconds: float, unit: str = "tiles") -> str:
    """``"5.2 tiles/s"`` (or ``"-"`` before any time passed)."""
    return f"{done / seconds:.1f} {unit}/s" if seconds > 0 else f"- {unit}/s"


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
    info: TaskInfo
    initial: int = -1  # units done when the monitor first heard of the task (resumed runs)
    done: int = 0
    #: of ``done``, units done without being read (outside the mask)
    skipped: int = 0
    failed: int = 0
    printed: tuple[int, int] | None = None
    finished_at: float | None = None
    final_printed: bool = False
    bar: Any = None

    @property
    def name(self) -> str:
        return self.info.name


class ProgressMonitor:
    """Shows the progress of a run's stages: an observer of its events.

    Each :class:`~blockbuster.run.events.StageStarted` opens one tqdm bar per task on a
    terminal (or, elsewhere, plain lines at most every ``interval`` seconds); each
    :class:`~blockbuster.run.events.Progress` updates them; the
    :class:`~blockbuster.run.events.StageFinished` closes them and prints a final line per
    task::

        segment: 64/64 tiles, 0 failed, 12.3 s, 5.2 tiles/s

    Parameters
    ----------
    interactive
        One tqdm bar per task when True; plain lines when False; None (default) chooses bars
        when ``stream`` is a terminal.
    interval
        Plain mode: least seconds between two rounds of lines (one line per task with news);
        a task's final line comes as soon as all its units are done.
    stream
        Where to write (default ``sys.stderr``).
    clock
        Seconds since some fixed point (default ``time.monotonic``); tests pass a fake one.

    Attributes
    ----------
    seconds
        Per task, seconds from the start of its stage until it had all its units done (or
        until the stage ended, for a task that did not finish).

    Examples
    --------
    >>> import io
    >>> from blockbuster.run.events import TaskInfo
    >>> from blockbuster.run.records import TileCounts
    >>> out = io.StringIO()
    >>> monitor = ProgressMonitor(interactive=False, stream=out, clock=iter(range(99)).__next__)
    >>> monitor(StageStarted((TaskInfo("segment", 2, "tiles"),)))
    >>> monitor(Progress("segment", TileCounts()))  # the first look: nothing done yet
    >>> monitor(Progress("segment", TileCounts(done={0: 1.0, 1: 1.0})))
    >>> monitor(StageFinished({}, 2.0))
    >>> print(out.getvalue().strip())
    segment: 2/2 tiles, 0 failed, 2.0 s, 1.0 tiles/s
    """

    def __init__(
        self,
        interactive: bool | None = None,
        *,
        interval: float = 10.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if interactive is None:
            isatty = getattr(self.stream, "isatty", None)
            interactive = bool(isatty()) if isatty is not None else False
        self.interactive = interactive
        self.interval = float(interval)
        self.clock = clock
        self.stages: list[_Stage] = []
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._start = 0.0
        self._last_print = -float("inf")

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            self.begin(event.tasks)
        elif isinstance(event, Progress):
            counts = event.counts
            skipped = len(counts.skipped & counts.done.keys())
            self.update(event.task, counts.num_done, counts.num_failed, skipped)
        elif isinstance(event, StageFinished) or (isinstance(event, RunFinished) and self.stages):
            self.end()  # a run stopped mid-stage ends with RunFinished alone

    # -- lifecycle ----------------------------------------------------------------------------

    def begin(self, tasks: Sequence[TaskInfo]) -> None:
        """Start following ``tasks`` (a stage)."""
        with self._lock:
            self._start = self.clock()
            self.stages = [_Stage(info) for info in tasks]

    def end(self) -> None:
        """Close the bars and print the final lines of the stage."""
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
            self.stages = []
            self.stream.flush()

    # -- updates ------------------------------------------------------------------------------

    def update(self, task: str, done: int, failed: int, skipped: int = 0) -> None:
        """A task's units done (``skipped`` of them without being read) and failed changed:
        update the display."""
        with self._lock:
            now = self.clock()
            for stage in self.stages:
                if stage.name != task:
                    continue
                stage.done, stage.failed, stage.skipped = done, failed, skipped
                if stage.initial < 0:
                    stage.initial = stage.done
                    stage.printed = (stage.done, stage.failed)
                if stage.finished_at is None and stage.done >= stage.info.total:
                    stage.finished_at = now
            if self.interactive:
                self._update_bars()
            else:
                self._print_lines(now)

    def _update_bars(self) -> None:
        from tqdm.auto import tqdm

        for position, stage in enumerate(self.stages):
            if stage.initial < 0:
                continue  # not heard of yet
            total = stage.info.total
            if stage.bar is None:
                stage.bar = tqdm(
                    total=total,
                    initial=stage.done,
                    desc=stage.name,
                    unit=stage.info.unit_name.rstrip("s"),
                    position=position,
                    file=self.stream,
                    dynamic_ncols=True,
                    leave=True,
                )
                stage.bar.set_postfix(**_postfix(stage), refresh=False)
            bar = stage.bar
            waiting = self._waiting_for(stage)
            # while it waits for its upstream, tqdm's own ETA would be meaningless
            bar.bar_format = (
                f"{{l_bar}}{{bar}}| {{n_fmt}}/{{total_fmt}} [{{elapsed}}, waiting for {waiting}"
                "{postfix}]"
                if waiting
                else None
            )
            if (stage.done, stage.failed) != stage.printed:
                bar.set_postfix(**_postfix(stage), refresh=False)
            if stage.done > bar.n:
                bar.update(stage.done - bar.n)
            elif stage.done < bar.n:  # records cleared (the task reruns)
                bar.reset(total=total)
                bar.update(stage.done)
            else:
                bar.refresh()
            stage.printed = (stage.done, stage.failed)

    def _print_lines(self, now: float) -> None:
        elapsed = now - self._start
        due = now - self._last_print >= self.interval
        printed = False
        for stage in self.stages:
            if stage.final_printed or stage.initial < 0:
                continue
            if stage.finished_at is not None:
                self._final_line(stage, now)
                printed = True
                continue
            state = (stage.done, stage.failed)
            if due and state != stage.printed:
                new = stage.done - stage.initial
                total, unit = stage.info.total, stage.info.unit_name
                line = (
                    f"{stage.name}: {stage.done}/{total} {unit}{_skipped(stage)}, "
                    f"{stage.failed} failed, {format_rate(new, elapsed, unit)}"
                )
                waiting = self._waiting_for(stage)
                if waiting:
                    # its pace is its upstream's: an ETA from it would be meaningless
                    line += f", waiting for {waiting}"
                elif new > 0 and elapsed > 0:
                    line += f", ETA {format_eta((total - stage.done) * elapsed / new)}"
                print(line, file=self.stream)
                stage.printed = state
                printed = True
        if printed:
            self._last_print = now
            self.stream.flush()

    def _waiting_for(self, stage: _Stage) -> str:
        """The upstream stages of this run still unfinished, comma-separated ("" for none)."""
        names = set(stage.info.upstream)
        return ", ".join(
            s.name
            for s in self.stages
            if s.name in names and s.finished_at is None and s.done < s.info.total
        )

    def _final_line(self, stage: _Stage, now: float) -> None:
        end = stage.finished_at if stage.finished_at is not None else now
        seconds = end - self._start
        unit = stage.info.unit_name
        initial = max(stage.initial, 0)
        print(
            f"{stage.name}: {stage.done}/{stage.info.total} {unit}{_skipped(stage)}, "
            f"{stage.failed} failed, {seconds:.1f} s, "
            f"{format_rate(stage.done - initial, seconds, unit)}",
            file=self.stream,
        )
        stage.final_printed = True


def _skipped(stage: _Stage) -> str:
    return f" ({stage.skipped} skipped)" if stage.skipped else ""


def _postfix(stage: _Stage) -> dict[str, int]:
    return {"failed": stage.failed, **({"skipped": stage.skipped} if stage.skipped else {})}
