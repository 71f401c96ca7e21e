"""The daisy worker function that starts a blockbuster worker, here or through a job scheduler.

daisy runs one of these per worker slot, in a fresh process with ``DAISY_CONTEXT`` set (the
server's address, the task and the slot). It records the server address in the run directory,
then replaces itself (``exec``) with either the worker, ``python -m blockbuster.worker RUN_DIR
TASK``, or a launch script such as ``workers/slurm.sh RUN_DIR TASK`` that runs that command on
a compute node and waits for it. Kept free of heavy imports: it runs once per worker slot.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from blockbuster.gpu import gpu_worker_env

LOCAL = "local"


def server_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / "server"


def record_server(run_dir: Path | str, task: str, context: dict[str, str]) -> None:
    """Write ``server/<task>.json``: the address the task's workers connect to."""
    folder = server_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    info = {"task": task, "host": context["hostname"], "port": int(context["port"])}
    path = folder / f"{task}.json"
    tmp = folder / f".{task}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


class WorkerLauncher:
    """A daisy worker function that becomes one blockbuster worker.

    Parameters
    ----------
    run_dir
        The run directory.
    task
        ``segment``, ``stitch`` or ``relabel``.
    launcher
        ``"local"`` to run the worker in this process's place, or the path of an executable
        launch script called as ``SCRIPT RUN_DIR TASK`` with ``DAISY_CONTEXT`` and
        ``BLOCKBUSTER_PYTHON`` (this interpreter) in its environment.
    gpus
        For GPU workers: pin to one thread, and, for local workers, to
        ``gpus[worker_id % len(gpus)]`` through ``CUDA_VISIBLE_DEVICES`` when the list is not
        empty (a launch script's scheduler assigns GPUs to its jobs itself).
    """

    def __init__(
        self,
        run_dir: Path | str,
        task: str,
        launcher: str = LOCAL,
        gpus: tuple[str, ...] | None = None,
    ) -> None:
        self.run_dir = str(run_dir)
        self.task = task
        self.launcher = launcher
        self.gpus = gpus

    def __call__(self, *, context: Any = None) -> None:
        if context is not None:
            os.environ["DAISY_CONTEXT"] = context.to_env()
            record_server(self.run_dir, self.task, dict(context.items()))
        if self.gpus is not None:
            # one fn evaluation per GPU at a time: one device and one thread per worker; the
            # device only for workers on this machine: a scheduler (launch script) gives each
            # job its own GPUs on its node, which this machine's device numbers do not name
            local = context is not None and self.launcher == LOCAL
            slot = max(int(context.get("worker_id", 0)), 0) if local else 0
            os.environ.update(gpu_worker_env(self.gpus if local else (), slot))
        os.environ["BLOCKBUSTER_PYTHON"] = sys.executable
        sys.stdout.flush()
        sys.stderr.flush()
        if self.launcher == LOCAL:
            argv = [sys.executable, "-m", "blockbuster.worker", self.run_dir, self.task]
            os.execv(sys.executable, argv)
        os.execv(self.launcher, [self.launcher, self.run_dir, self.task])
