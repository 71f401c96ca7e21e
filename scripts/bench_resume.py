"""Bookkeeping at many blocks: files in the run directory, and resuming a finished run.

One task of N blocks whose function does nothing, so every second is bookkeeping: the run
directory's files per block, and the seconds ``run_tasks`` takes to find an already finished
run finished (every record read and verified, no worker started). Up to ``--real`` blocks the
first run is real (daisy workers); above it the records the workers would have written are
written here, one per block as a worker does, so the disk time of a 100,000-block run is not
what is measured. The baseline is the smallest size: per-block seconds at each size are shown
as a ratio to it (linear: about 1).

    python scripts/bench_resume.py [--sizes 1000,10000,100000] [--real 10000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_fns import nothing  # noqa: E402

from blockbuster import Task, run_tasks  # noqa: E402
from blockbuster.run.ownership import mark_run_dir, new_run_id  # noqa: E402
from blockbuster.run.rundir import RunDir  # noqa: E402


def write_done(records: Any, key: int) -> None:
    """A done record as a worker writes it, without its fsync where the records API allows
    (so that disk flushes do not dominate writing 100,000 of them)."""
    log = getattr(records, "log", None)
    if log is None:  # a per-file record layout
        records.done(key, time.time(), 0.0, tiles=[key])
        return
    record = {"kind": "done", "tile": key, "host": records.host, "start": time.time()}
    log.append({**record, "seconds": 0.0, "tiles": [key], "id": uuid.uuid4().hex}, durable=False)


def files_in(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--real", type=int, default=10000, help="largest size run for real")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for n in [int(s) for s in args.sizes.split(",")]:
            task = Task("noop", (n, 1), (1, 1), nothing)
            root = tmp / f"run{n}"
            start = time.perf_counter()
            if n <= args.real:
                assert run_tasks(
                    [task], root, num_workers=args.workers, progress=False, status_page=None
                ).ok
                how = "real"
            else:
                run = RunDir(root)
                run.create()
                mark_run_dir(root, new_run_id(), root)
                run.write_tasks([task])
                records = run.task_records(task)
                for block in task.blocks():
                    write_done(records, block.key)
                how = "simulated"
            first = time.perf_counter() - start
            start = time.perf_counter()
            result = run_tasks(
                [task], root, num_workers=args.workers, progress=False, status_page=None
            )
            resume = time.perf_counter() - start
            assert result.ok
            rows.append((n, how, first, files_in(root) / n, resume))
            print(
                f"{n:>7} blocks ({how}): first run {first:7.2f} s, "
                f"{rows[-1][3]:.2f} files per block, resume when finished {resume:6.2f} s",
                flush=True,
            )
    base = rows[0]
    for n, _, _, _, resume in rows:
        print(
            f"{n:>7} blocks: resume {resume:6.2f} s, per block "
            f"{(resume / n) / (base[4] / base[0]):.2f}x the {base[0]}-block cost"
        )


if __name__ == "__main__":
    main()
