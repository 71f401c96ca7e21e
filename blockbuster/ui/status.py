"""What a run directory says about its run: units done, failed, pending, running per task.

Read from the per-block record files only, so it works while a run is going, after a crash,
and from any machine that sees the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blockbuster.pipeline.spec import read_spec
from blockbuster.run.events import TaskInfo
from blockbuster.run.lease import read_holder
from blockbuster.run.records import RecordScanner, TaskRecords, TileCounts, TileError
from blockbuster.run.rundir import RUN_DIR_SUFFIX, RunDir

TASKS = ("segment", "stitch", "relabel")
#: what a ``tile_process`` run's stages wait for, for those not written to the run yet
PIPELINE_UPSTREAM = {"stitch": ("segment",), "relabel": ("stitch",)}


@dataclass
class TaskStatus:
    """The units (tiles, or blocks of a user task) of one task by state."""

    total: int
    counts: TileCounts
    #: units with failed attempts and no success, each with its errors (oldest first)
    failed: dict[int, list[TileError]]
    unit_name: str = "tiles"
    fn_calls: int = 0

    @property
    def states(self) -> dict[str, int]:
        """done, skipped, running, failed, pending: the same as the live status page."""
        return self.counts.states(self.total)

    @property
    def done(self) -> int:
        return self.counts.num_done

    @property
    def failed_count(self) -> int:
        return self.counts.num_failed

    @property
    def seconds(self) -> list[float]:
        return list(self.counts.done.values())


@dataclass
class RunStatus:
    """The state of a run directory (a ``tile_process`` run, or a ``run_tasks`` one)."""

    run_dir: Path
    tasks: dict[str, TaskStatus]
    #: the output of a tile_process run, None for user tasks
    output: str | None = None
    output_written: bool = False
    num_tiles: int = 0
    grid: tuple[int, ...] = ()
    tile: tuple[int, ...] = ()
    overlap: tuple[int, ...] = ()
    #: who holds the run's lease, in words
    driver: str = "none"

    @property
    def complete(self) -> bool:
        return all(t.done == t.total for t in self.tasks.values())

    def format(self) -> str:
        state = "finished" if self.complete else "not finished"
        lines = [f"run dir   {self.run_dir}"]
        if self.output is not None:
            lines += [
                f"output    {self.output} ({state})",
                f"tiles     {self.num_tiles} (grid {'x'.join(map(str, self.grid))}, tile "
                f"{'x'.join(map(str, self.tile))}, overlap {','.join(map(str, self.overlap))})",
            ]
        else:
            lines.append(f"tasks     {len(self.tasks)} ({state})")
        lines += [
            f"driver    {self.driver}",
            "",
            f"{'task':<12}{'done':>7}{'skipped':>8}{'failed':>8}{'pending':>9}{'running':>9}"
            f"{'s/unit':>9}{'max s':>8}{'fn calls':>10}",
        ]
        for name, t in self.tasks.items():
            mean = f"{np.mean(t.seconds):.2f}" if t.seconds else "-"
            peak = f"{np.max(t.seconds):.2f}" if t.seconds else "-"
            calls = str(t.fn_calls) if t.fn_calls else ""
            s = t.states
            row = (
                f"{name:<12}{s['done']:>7}{s['skipped'] or '':>8}{s['failed']:>8}"
                f"{s['pending']:>9}{s['running']:>9}{mean:>9}{peak:>8}{calls:>10}"
            )
            lines.append(row.rstrip())
        failures = [(n, key, e) for n, t in self.tasks.items() for key, e in t.failed.items()]
        if failures:
            lines += ["", "failed blocks:"]
            for name, key, errors in sorted(failures):
                err = errors[-1]
                unit = self.tasks[name].unit_name.rstrip("s")
                where = (
                    f"{unit} {key}"
                    if len(err.tiles) <= 1
                    else f"block {key} ({len(err.tiles)} {unit}s from {unit} {err.tiles[0]})"
                )
                lines.append(
                    f"  {name} {where} on {err.host}, {len(errors)} attempt(s): {err.message}"
                )
            lines.append("full tracebacks: blockbuster status --tracebacks RUN_DIR")
        return "\n".join(lines)

    def tracebacks(self) -> str:
        out = []
        for name, t in self.tasks.items():
            for key, errors in sorted(t.failed.items()):
                out.append(f"=== {name} {t.unit_name.rstrip('s')} {key} on {errors[-1].host}")
                out.append(errors[-1].traceback.rstrip())
        return "\n".join(out) if out else "no failed tiles: no tracebacks"


def run_tasks_of(run: RunDir) -> list[TaskInfo]:
    """The tasks of ``run`` with their sizes and the tasks they wait for, in display order: a
    ``tile_process`` run's three stages first (in tiles, written or not yet), then any other
    task it wrote (pyramid levels, a user's tasks; in blocks)."""
    names = run.task_names()
    spec = read_spec(run) if run.spec_file.exists() else None
    if spec is not None:
        names = list(TASKS) + [n for n in names if n not in TASKS]
    out = []
    for name in names:
        meta = run.task_meta(name) if (run.tasks_dir / f"{name}.json").exists() else {}
        total = int(meta.get("total", spec.plan.num_tiles if spec is not None else 0))
        upstream = meta.get("upstream", PIPELINE_UPSTREAM.get(name, ()) if spec else ())
        out.append(
            TaskInfo(name, total, str(meta.get("unit_name", "tiles")), tuple(map(str, upstream)))
        )
    return out


def finished_output(path: Path) -> Path | None:
    """The finished output a ``status`` argument points at when its run directory is gone:
    ``<write_to>.blockbuster`` (removed when the run ended) or ``write_to`` itself; None when
    ``path`` is neither."""
    from blockbuster.run.ownership import output_mark

    path = Path(path).absolute()
    if RunDir(path).spec_file.exists():
        return None  # a run directory: its status is read from it
    out = path.with_name(path.name.removesuffix(RUN_DIR_SUFFIX))
    mark = output_mark(out) if out.exists() else None
    if mark is None or not mark.get("complete") or RunDir.for_output(out).root.is_dir():
        return None
    return out


def run_status(run: RunDir) -> RunStatus:
    """Read the state of ``run`` from its record files.

    Raises
    ------
    FileNotFoundError
        If ``run`` is not a run directory.
    """
    names = run.task_names()
    if not run.spec_file.exists() and not names:
        raise FileNotFoundError(
            f"{run.root} is not a blockbuster run directory (no spec.json, no tasks); pass the "
            "<write_to>.blockbuster directory of a run, or the run_dir of run_tasks"
        )
    holder = read_holder(run.root)
    if holder is None:
        driver = "none running"
    elif holder.stale():
        driver = f"none running (stale lease: {holder.describe()})"
    else:
        driver = holder.describe()
    spec = read_spec(run) if run.spec_file.exists() else None
    tasks = {}
    for info in run_tasks_of(run):
        records = TaskRecords(run.records(info.name), info.name)
        tasks[info.name] = TaskStatus(
            total=info.total,
            counts=RecordScanner(run.records(info.name)).scan(),
            failed=records.failed_tiles(),
            unit_name=info.unit_name,
            fn_calls=sum(records.call_counts().values()),
        )
    if spec is None:
        return RunStatus(run_dir=run.root.absolute(), tasks=tasks, driver=driver)
    plan = spec.plan
    return RunStatus(
        run_dir=run.root.absolute(),
        tasks=tasks,
        output=spec.output_store,
        output_written=Path(spec.output_store).exists(),
        num_tiles=plan.num_tiles,
        grid=plan.grid,
        tile=plan.tile,
        overlap=plan.overlap,
        driver=driver,
    )
