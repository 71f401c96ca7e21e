"""What a run directory says about its run: tiles done, failed and pending per task.

Read from the per-block record files only, so it works while a run is going, after a crash,
and from any machine that sees the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blockbuster.run.lease import read_holder
from blockbuster.run.records import TaskRecords, TileError
from blockbuster.run.rundir import RunDir

TASKS = ("segment", "stitch", "relabel")


@dataclass
class TaskStatus:
    """Tiles of one task by state, with timings of the finished ones."""

    done: int
    failed: dict[int, list[TileError]]
    pending: int
    seconds: list[float] = field(default_factory=list)
    fn_calls: int = 0

    @property
    def failed_count(self) -> int:
        """Tiles whose block failed (a stitch or relabel block holds several tiles)."""
        return len({t for errors in self.failed.values() for t in errors[-1].tiles})


@dataclass
class RunStatus:
    """The state of a run directory."""

    run_dir: Path
    output: str
    output_written: bool
    num_tiles: int
    grid: tuple[int, ...]
    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    tasks: dict[str, TaskStatus]
    #: who holds the run's lease, in words
    driver: str = "none"

    @property
    def complete(self) -> bool:
        return all(t.done == self.num_tiles for t in self.tasks.values())

    def format(self) -> str:
        lines = [
            f"run dir   {self.run_dir}",
            f"output    {self.output} ({'finished' if self.complete else 'not finished'})",
            f"tiles     {self.num_tiles} (grid {'x'.join(map(str, self.grid))}, tile "
            f"{'x'.join(map(str, self.tile))}, overlap {','.join(map(str, self.overlap))})",
            f"driver    {self.driver}",
            "",
            f"{'task':<9}{'done':>7}{'failed':>8}{'pending':>9}{'s/tile':>9}{'max s':>8}"
            f"{'fn calls':>10}",
        ]
        for name, t in self.tasks.items():
            mean = f"{np.mean(t.seconds):.2f}" if t.seconds else "-"
            peak = f"{np.max(t.seconds):.2f}" if t.seconds else "-"
            calls = str(t.fn_calls) if name == "segment" else ""
            lines.append(
                f"{name:<9}{t.done:>7}{t.failed_count:>8}{t.pending:>9}{mean:>9}{peak:>8}{calls:>10}"
            )
        failures = [(n, tile, e) for n, t in self.tasks.items() for tile, e in t.failed.items()]
        if failures:
            lines += ["", "failed tiles:"]
            for name, tile, errors in sorted(failures):
                err = errors[-1]
                where = f"tile {tile}" + (
                    f" (block of {len(err.tiles)} tiles)" if len(err.tiles) > 1 else ""
                )
                lines.append(
                    f"  {name} {where} on {err.host}, {len(errors)} attempt(s): {err.message}"
                )
            lines.append("full tracebacks: blockbuster status --tracebacks RUN_DIR")
        return "\n".join(lines)

    def tracebacks(self) -> str:
        out = []
        for name, t in self.tasks.items():
            for tile, errors in sorted(t.failed.items()):
                out.append(f"=== {name} tile {tile} on {errors[-1].host}")
                out.append(errors[-1].traceback.rstrip())
        return "\n".join(out)


def run_status(run: RunDir) -> RunStatus:
    """Read the state of ``run`` from its record files.

    Raises
    ------
    FileNotFoundError
        If ``run`` is not a run directory.
    """
    if not run.spec_file.exists():
        raise FileNotFoundError(
            f"{run.root} is not a blockbuster run directory (no spec.json); pass the "
            "<write_to>.blockbuster directory of a run"
        )
    spec = run.read_spec()
    holder = read_holder(run.root)
    if holder is None:
        driver = "none running"
    elif holder.stale():
        driver = f"none running (stale lease: {holder.describe()})"
    else:
        driver = holder.describe()
    plan = spec.plan
    tasks = {}
    for name in TASKS:
        records = TaskRecords(run.records(name), name)
        done = records.done_tiles()
        failed = records.failed_tiles()
        status = TaskStatus(
            done=len(done),
            failed=failed,
            pending=0,
            seconds=list(done.values()),
            fn_calls=sum(records.call_counts().values()) if name == "segment" else 0,
        )
        status.pending = plan.num_tiles - status.done - status.failed_count
        tasks[name] = status
    return RunStatus(
        run_dir=run.root.absolute(),
        output=spec.output_store,
        output_written=Path(spec.output_store).exists(),
        num_tiles=plan.num_tiles,
        grid=plan.grid,
        tile=plan.tile,
        overlap=plan.overlap,
        tasks=tasks,
        driver=driver,
    )
