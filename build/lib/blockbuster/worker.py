"""``python -m blockbuster.worker RUN_DIR TASK``: the process that runs blocks of one task.

The driver's daisy server starts these itself on the local machine; on a cluster the same
command runs on compute nodes. The worker connects to the server named in ``DAISY_CONTEXT``,
loads the task from the run directory (``tasks/TASK.pkl``) and opens it once (its
``process_block_func``: a model, arrays), then takes blocks until the server has none left.
An exception in one block is reported to daisy as that block's failure (with its traceback)
and the worker goes on to the next block.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import daisy

from blockbuster.run.blocks import serve_daisy
from blockbuster.run.launch import server_dir
from blockbuster.run.lease import check_live_lease
from blockbuster.run.rundir import RunDir, RunDirError


def serve(run: RunDir, name: str) -> int:
    """Process blocks of task ``name`` from its daisy server until none are left; return how
    many failed."""
    task = run.load_task(name)
    with task.opened() as fn:
        return serve_daisy(task, run.task_records(task), fn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blockbuster.worker",
        description="Run blocks of one blockbuster task; connects to the server in DAISY_CONTEXT.",
    )
    parser.add_argument("run_dir", help="the run directory (<write_to>.blockbuster)")
    parser.add_argument("task", help="the task's name (segment, stitch, relabel, or your own)")
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="the task's daisy server when DAISY_CONTEXT is not set (default: the address the "
        "driver recorded in RUN_DIR/server/TASK.json)",
    )
    args = parser.parse_args(argv)
    run = RunDir(args.run_dir)
    check_live_lease(run.root)  # a worker never works on a run no driver holds
    try:
        run.task_meta(args.task)
    except RunDirError as e:
        raise SystemExit(str(e)) from None
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
