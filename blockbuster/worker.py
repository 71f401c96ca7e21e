"""``python -m blockbuster.worker``: the process that runs blocks of one task.

The driver's daisy server starts these itself on the local machine; on a cluster the same
command runs on compute nodes. The worker connects to the server named in ``DAISY_CONTEXT``,
opens the run directory once (loading ``fn`` once, not per tile), then takes blocks until the
server has none left. It owns its loop: an exception in one block is reported to daisy as that
block's failure (with its traceback) and the worker goes on to the next block.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable

import daisy

from blockbuster.io.sources import open_array
from blockbuster.pipeline.plan import Box, TilePlan
from blockbuster.pipeline.relabel import Relabeler
from blockbuster.pipeline.segment import Segmenter
from blockbuster.pipeline.stage import open_stage
from blockbuster.pipeline.stitch import Stitcher
from blockbuster.pipeline.table import EquivalenceTable
from blockbuster.run.launch import server_dir, write_worker_state
from blockbuster.run.lease import check_live_lease
from blockbuster.run.records import TaskRecords
from blockbuster.run.rundir import RunDir, restore_sys_path

TASKS = ("segment", "stitch", "relabel")


Handler = Callable[[Box], None]
"""Processes one block: a box of grid indices (one tile for segment, a group otherwise)."""


def make_handler(run: RunDir, task: str) -> tuple[TilePlan, TaskRecords, Handler]:
    """Open what ``task`` needs from the run directory and return its per-block handler."""
    spec = run.read_spec()
    restore_sys_path(spec)
    plan = spec.plan
    records = TaskRecords(run.records(task), task)
    if task == "segment":
        stage = open_stage(run.stage, mode="r+")
        fn = run.load_fn()
        image = spec.source.open()
        segmenter = Segmenter(
            plan, image, spec.source.channel_axes, stage, records, fn, faces=run.faces
        )

        def segment(group: Box) -> None:
            for index in plan.tiles_in(group):
                segmenter(index)

        return plan, records, segment
    if task == "stitch":
        segments = TaskRecords(run.records("segment"), "segment")
        stitcher = Stitcher(
            plan, open_stage(run.stage), records, spec.merge_threshold, segments, run.faces
        )
        return plan, records, stitcher
    if task == "relabel":
        output = open_array(spec.output_store, spec.output_path, mode="r+")
        table = EquivalenceTable(run.table, readonly=True)
        return (
            plan,
            records,
            Relabeler(plan, open_stage(run.stage), table, output, spec.sequential_labels, records),
        )
    raise ValueError(f"task={task!r} is not one of {TASKS}")


def serve(run: RunDir, task: str) -> int:
    """Process blocks from the daisy server until none are left; return how many failed."""
    plan, records, handle = make_handler(run, task)
    client = daisy.Client()
    failed = 0
    while True:
        block_failed = False
        try:
            with client.acquire_block() as block:
                if block is None:
                    break
                group = plan.group_of_write_roi(block.write_roi)
                tiles = [plan.tile_id(i) for i in plan.tiles_in(group)]
                write_worker_state({"key": tiles[0], "tiles": tiles})
                try:
                    handle(group)
                except Exception:
                    block_failed = True
                    records.failed(tiles[0], traceback.format_exc(), tiles=tiles)
                    raise
                finally:
                    write_worker_state(None)
        except Exception:
            if not block_failed:
                raise  # the server is gone or daisy failed: this worker's run is over
            # daisy's acquire_block already logged the traceback and reported the block as
            # failed (the server retries it or counts it failed); keep serving.
            failed += 1
    return failed


def record_failure(plan: TilePlan, records: TaskRecords, group: Box, tb: str) -> None:
    """Record a failed attempt at the block ``group`` (under its first tile)."""
    tiles = [plan.tile_id(i) for i in plan.tiles_in(group)]
    records.failed(plan.tile_id(tuple(a for a, _ in group)), tb, tiles=tiles)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blockbuster.worker",
        description="Run blocks of one blockbuster task; connects to the server in DAISY_CONTEXT.",
    )
    parser.add_argument("run_dir", help="the run directory (<write_to>.blockbuster)")
    parser.add_argument("task", choices=TASKS)
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="the task's daisy server when DAISY_CONTEXT is not set (default: the address the "
        "driver recorded in RUN_DIR/server/TASK.json)",
    )
    args = parser.parse_args(argv)
    run = RunDir(args.run_dir)
    check_live_lease(run.root)  # a worker never works on a run no driver holds
    if args.server or "DAISY_CONTEXT" not in os.environ:
        os.environ["DAISY_CONTEXT"] = server_context(run, args.task, args.server)
    serve(run, args.task)
    return 0


def server_context(run: RunDir, task: str, server: str | None) -> str:
    """A ``DAISY_CONTEXT`` for a worker started by hand: ``server`` or the recorded address."""
    if server:
        host, sep, port = server.rpartition(":")
        if not sep or not port.isdigit():
            raise SystemExit(f"--server {server!r} must look like HOST:PORT")
    else:
        path = server_dir(run.root) / f"{task}.json"
        if not path.exists():
            raise SystemExit(
                f"no DAISY_CONTEXT, no --server, and {path} does not exist: is the driver "
                "running this task?"
            )
        info = json.loads(path.read_text())
        host, port = info["host"], str(info["port"])
    context = daisy.Context(
        hostname=host, port=int(port), task_id=task, worker_id=-1, logdir=str(run.logs)
    )
    return context.to_env()


if __name__ == "__main__":
    sys.exit(main())
