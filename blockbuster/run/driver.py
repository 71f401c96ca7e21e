"""Running tasks in a run directory: passes of an engine, each held against the records.

:func:`execute_tasks` is the one path every task takes, blockbuster's own stages included:
it stores the tasks for the workers, runs them on an engine, then checks every block against
its record (an engine's count is never trusted: any process that reaches a daisy server can
report a block done) and runs again what left no valid record, up to :data:`MAX_PASSES`
times. :func:`run_tasks` is the public entry for user tasks: it makes or resumes the run
directory, holds its lease, and raises when blocks failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from blockbuster.config import RunConfig
from blockbuster.run.engines import Engine, in_order, run_engine
from blockbuster.run.events import (
    Events,
    Observer,
    RecordWatcher,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
    TaskInfo,
)
from blockbuster.run.lease import Lease
from blockbuster.run.ownership import remove_created
from blockbuster.run.records import TileError
from blockbuster.run.rundir import RunDir, RunDirError
from blockbuster.run.task import Task, TaskReport

logger = logging.getLogger("blockbuster")

#: passes over a stage before blocks that the engine reported done but that left no valid
#: record fail the run
MAX_PASSES = 3


@dataclass(frozen=True)
class Checked:
    """What the records say about one task: its trusted done records, its missing blocks."""

    done: dict[int, dict[str, Any]]
    missing: tuple[int, ...]


def verify(tasks: Sequence[Task], run: RunDir) -> dict[str, Checked]:
    """Hold every block of ``tasks`` against its record.

    A block is done when its done record is valid, covers the units it should, and its task
    finds its output whole (:meth:`Task.damaged`); the records of damaged blocks are removed
    so that the next pass runs them again.
    """
    out = {}
    for task in tasks:
        records = run.task_records(task)
        done = records.done_records()
        bad = task.damaged(done)
        for key in bad:
            records.discard(key)
            del done[key]
        if bad:
            shown = ", ".join(f"{k} ({why})" for k, why in sorted(bad.items())[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            logger.warning("%s: %d block(s) will run again: %s%s", task.name, len(bad), shown, more)
        missing = []
        for block in task.blocks():
            if task.unit_records:
                if not all(u in done for u in task.units(block)):
                    missing.append(block.key)
                continue
            record = done.get(block.key)
            if record is None or record.get("tiles", [block.key]) != task.units(block):
                missing.append(block.key)
        out[task.name] = Checked(done, tuple(missing))
    return out


def task_infos(tasks: Sequence[Task]) -> tuple[TaskInfo, ...]:
    return tuple(
        TaskInfo(t.name, t.num_units, t.unit_name, tuple(u.name for u in t.upstream)) for t in tasks
    )


def execute_tasks(
    tasks: Sequence[Task],
    run: RunDir,
    options: RunConfig,
    lease: Lease,
    *,
    engine: Engine = "daisy",
    client: Any | None = None,
    events: Events | None = None,
    before_pass: Callable[[], None] | None = None,
) -> tuple[dict[str, TaskReport], dict[str, Checked], float]:
    """Run ``tasks`` until the records say every block is done, or a pass had failures.

    ``before_pass`` runs before each pass (a stage that must rerun in full clears its
    records there). Returns the reports (with the blocks still missing), the trusted
    records per task and the seconds spent.
    """
    events = events or Events()
    tasks = in_order(tasks)
    run.write_tasks(tasks)
    infos = task_infos(tasks)
    folders = [(t.name, run.records(t.name)) for t in tasks]
    # what a resumed run finds damaged is redone in the first pass
    checked = verify(tasks, run)
    seconds = 0.0
    reports: dict[str, TaskReport] = {}
    for attempt in range(MAX_PASSES):
        lease.check()
        if before_pass is not None:
            before_pass()
            checked = verify(tasks, run)  # it may have cleared records
        events.emit(StageStarted(infos))
        start = time.perf_counter()
        if attempt == 0 and not any(c.missing for c in checked.values()):
            # every block is done on disk (a resumed finished run): no workers, no server
            reports = {t.name: TaskReport(t.num_blocks, t.num_blocks, 0, 0, 0.0) for t in tasks}
            events.emit(StageFinished(reports, 0.0))
            break
        with RecordWatcher(events, folders):
            reports = run_engine(engine, tasks, run, options, client)
        elapsed = time.perf_counter() - start
        seconds += elapsed
        checked = verify(tasks, run)
        reports = {n: replace(r, missing=checked[n].missing) for n, r in reports.items()}
        events.emit(StageFinished(reports, elapsed))
        engine_ok = all(r.failed == 0 and r.orphaned == 0 for r in reports.values())
        if not engine_ok or not any(c.missing for c in checked.values()):
            break
        logger.warning(
            "pass %d: the engine counted every block done, but %s left no valid record; "
            "running them again",
            attempt + 1,
            "; ".join(f"{len(c.missing)} {n} block(s)" for n, c in checked.items() if c.missing),
        )
        for name in _downstream_of({n for n, c in checked.items() if c.missing}, tasks):
            # their blocks may have read an upstream block that was never written
            remove_created(run.records(name))
        checked = verify(tasks, run)
    return reports, checked, seconds


def _downstream_of(names: set[str], tasks: Sequence[Task]) -> list[str]:
    """The tasks (in order) that read, directly or not, from a task named in ``names``."""
    tainted = set(names)
    out = []
    for task in tasks:  # in dependency order
        if any(u.name in tainted for u in task.upstream):
            tainted.add(task.name)
            out.append(task.name)
    return out


class BlockFailureError(RuntimeError):
    """Blocks failed (or could not be verified done); the run directory is kept, so running
    the same call again resumes. ``result`` says which."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class TasksResult:
    """How :func:`run_tasks` ended.

    Attributes
    ----------
    run_dir
        The run directory (kept: running the same tasks again finds them done).
    tasks
        Per task: block counts, the first error, the blocks left without a record.
    failed
        Per task, the blocks that failed, each with the errors of its attempts.
    seconds
        Wall seconds of the run.
    """

    run_dir: str
    tasks: dict[str, TaskReport] = field(default_factory=dict)
    failed: dict[str, dict[int, list[TileError]]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tasks.values())

    def summary(self) -> str:
        """One line per task."""
        lines = []
        for name, t in self.tasks.items():
            state = "ok" if t.ok else "FAILED"
            lines.append(
                f"{name:<16}{t.total - len(t.missing)}/{t.total} blocks done, {t.failed} failed "
                f"{state}"
            )
            for key, errors in sorted(self.failed.get(name, {}).items())[:10]:
                lines.append(f"  block {key}, {len(errors)} attempt(s): {errors[-1].message}")
        return "\n".join(lines)


def check_task_run(run: RunDir) -> None:
    """Refuse a ``run_dir`` that cannot hold a task run (nothing is written)."""
    from blockbuster.run.ownership import is_our_run_dir

    if run.root.exists() and not run.root.is_dir():
        raise ValueError(f"run_dir={str(run.root)!r} is a file; choose a folder path")
    if run.root.exists() and not is_our_run_dir(run.root):
        raise ValueError(
            f"run_dir={str(run.root)!r} exists and is not a blockbuster run directory; move "
            "it away or choose another path"
        )
    if run.spec_file.exists():
        raise ValueError(
            f"run_dir={str(run.root)!r} holds a tile_process run; give run_tasks a folder of "
            "its own"
        )


def changed_tasks(tasks: Sequence[Task], run: RunDir) -> list[str]:
    """The tasks whose code, parameters or geometry (or those of a task they read from)
    differ from what ``run`` recorded for them."""
    from blockbuster.run.fingerprint import task_fingerprint

    changed = []
    for task in tasks:
        try:
            meta = run.task_meta(task.name)
        except RunDirError:
            continue
        if meta.get("fingerprint") != task_fingerprint(task):
            changed.append(task.name)
    return changed


def run_tasks(
    tasks: Sequence[Task],
    run_dir: str | Path,
    config: RunConfig,
    observers: Sequence[Observer] = (),
) -> TasksResult:
    """Run ``tasks`` in ``run_dir`` as ``config`` says (see :func:`blockbuster.run_tasks`,
    the public entry, for the parameters).

    Raises
    ------
    BlockFailureError
        If blocks failed or could not be verified done (the run directory is kept).
    """
    from blockbuster.run.dask_engine import active_client, check_client, performance_report
    from blockbuster.run.ownership import mark_run_dir, new_run_id, run_dir_marker

    if not tasks:
        raise ValueError("tasks=[] holds no task: give at least one Task")
    ordered = in_order(list(tasks))
    config = config.validate()
    engine, client = choose_engine(config.backend, active_client, check_client)
    check_performance_report(config, engine)
    if engine == "daisy":
        config.check_addresses()
    run = RunDir(Path(run_dir).absolute())
    check_task_run(run)
    run.create()
    if run_dir_marker(run.root) is None:
        mark_run_dir(run.root, new_run_id(), run.root)
    events = Events(tuple(observers))
    with Lease(run.root) as lease:  # what another driver's run holds is never touched
        changed = changed_tasks(ordered, run)
        if changed and not config.overwrite:
            raise ValueError(
                f"run_dir={str(run.root)!r} holds a run whose task(s) {', '.join(changed)} "
                "were different (their code, parameters or geometry, or those of a task they "
                "read from): resuming would mix blocks of two versions. Pass overwrite=True "
                "to run them again, or run the same tasks"
            )
        for name in changed:
            remove_created(run.records(name))
        run.write_config(config)
        events.emit(RunStarted(run.root, task_infos(ordered)))
        result: TasksResult | None = None
        try:
            with performance_report(client, config.performance_report):
                reports, _, seconds = execute_tasks(
                    ordered, run, config, lease, engine=engine, client=client, events=events
                )
            result = TasksResult(
                str(run.root),
                reports,
                {t.name: run.task_records(t).failed_tiles() for t in ordered},
                seconds,
            )
        finally:  # observers close what they opened, whether the run ended or stopped
            events.emit(RunFinished(run.root, result, keep=True))
    if not result.ok:
        raise BlockFailureError(
            f"blockbuster tasks incomplete:\n{result.summary()}\nThe run directory {run.root} "
            "is kept: fix the cause and run the same tasks again to resume.",
            result,
        )
    return result


def check_performance_report(config: RunConfig, engine: str) -> None:
    """A performance report is Dask's: refuse it, before anything is written, elsewhere."""
    if config.performance_report is not None and engine != "dask":
        raise ValueError(
            f"performance_report={config.performance_report!r} is Dask's report, and this run "
            f"is on {engine}: run it on a Dask client (client, cluster = "
            "blockbuster.make_local_cluster()), or pass performance_report=None"
        )


def choose_engine(
    backend: str,
    active_client: Callable[[], Any],
    check_client: Callable[[Any], None],
) -> tuple[Engine, Any]:
    """The engine ``backend`` names, and the Dask client when it is Dask."""
    if backend not in ("auto", "daisy", "dask", "serial"):
        raise ValueError(f"backend={backend!r} must be 'auto', 'daisy', 'dask' or 'serial'")
    if backend in ("daisy", "serial"):
        return backend, None  # type: ignore[return-value]
    client = active_client()
    if client is None and backend == "dask":
        raise ValueError(
            "backend='dask' needs an active dask.distributed Client; start one with "
            "client, cluster = blockbuster.make_local_cluster()"
        )
    if client is None:
        return "daisy", None
    check_client(client)
    return "dask", client


__all__ = [
    "BlockFailureError",
    "TasksResult",
    "execute_tasks",
    "run_tasks",
    "verify",
]
