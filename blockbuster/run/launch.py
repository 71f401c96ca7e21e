"""The daisy worker function that starts a blockbuster worker, here or through a job scheduler.

daisy runs one of these per worker slot, in a fresh process with ``DAISY_CONTEXT`` set (the
server's address, the task and the slot). It records the server address in the run directory,
then starts either the worker, ``python -m blockbuster.worker RUN_DIR TASK``, or a launch
script such as ``workers/slurm.sh RUN_DIR TASK`` that runs that command on a compute node and
waits for it, and supervises it (:class:`Supervisor`). Kept free of heavy imports: it runs
once per worker slot.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from blockbuster.run.files import write_atomic
from blockbuster.run.gpu import gpu_worker_env
from blockbuster.run.zygote import ZygoteChild, spawn

LOCAL = "local"


def server_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / "server"


def record_server(run_dir: Path | str, task: str, context: dict[str, str]) -> None:
    """Write ``server/<task>.json``: the address the task's workers connect to."""
    folder = server_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    info = {"task": task, "host": context["hostname"], "port": int(context["port"])}
    write_atomic(folder / f"{task}.json", json.dumps(info).encode(), mode=0o644, durable=False)


#: environment variable naming the prefix of the state files a worker keeps (see
#: :func:`write_worker_state`)
STATE_ENV = "BLOCKBUSTER_WORKER_STATE"
#: seconds between two looks of the supervisor at its worker
POLL_S = 0.5


def write_worker_state(block: dict[str, Any] | None) -> None:
    """Record, for this worker's supervisor, the block it holds (None: none).

    The file is ``<prefix>.<pid>.json`` with the prefix from :data:`STATE_ENV`; written whole
    and renamed, so the supervisor never reads half of it. A worker with no supervisor (started
    by hand) keeps none.
    """
    prefix = os.environ.get(STATE_ENV)
    if not prefix:
        return
    path = Path(f"{prefix}.{os.getpid()}.json")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "block": block, "since": time.time()}
    write_atomic(path, json.dumps(info).encode(), durable=False)


def _read_states(prefix: Path) -> list[dict[str, Any]]:
    out = []
    for path in prefix.parent.glob(f"{prefix.name}.*.json"):
        try:
            out.append(json.loads(path.read_bytes()))
        except (OSError, ValueError):
            continue  # being replaced right now: read again at the next look
    return out


def _stopped(pid: int) -> bool:
    """Whether process ``pid`` of this machine is stopped (SIGSTOP, a suspended job)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["T"]


class Supervisor:
    """Watches one worker process (or launch script) so that the driver never waits on it
    forever.

    daisy's watchdog lives inside the worker, so it cannot act when the worker is frozen
    (SIGSTOP, a suspended job, a read stuck on a dead NFS server): the server then retries the
    block elsewhere at ``timeout``, but daisy waits for the frozen process to exit. The
    supervisor kills the worker's whole process group with SIGKILL when

    * it has held one block for longer than ``timeout`` plus a grace period, whatever its
      state; or
    * it is stopped while holding no block, for longer than the grace period.

    When a worker dies while holding a block (killed, SIGSEGV, ``os._exit`` inside fn), the
    supervisor records that block's failure with the cause, so the run names the tile.
    """

    def __init__(
        self, run_dir: Path, task: str, timeout: float | None, zygote: str | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.task = task
        self.timeout = timeout
        self.zygote = zygote
        folder = self.run_dir / "workers"
        folder.mkdir(parents=True, exist_ok=True)
        self.prefix = folder / f"{task}.{uuid.uuid4().hex[:12]}"

    @property
    def grace(self) -> float:
        return 5.0 + 0.1 * (self.timeout or 0.0)

    def run(self, argv: list[str]) -> int:
        """Start ``argv`` in its own process group, watch it, and return its exit status."""
        env = dict(os.environ, **{STATE_ENV: str(self.prefix)})
        proc: subprocess.Popen[bytes] | ZygoteChild | None = None
        if self.zygote is not None:
            proc = spawn(self.zygote, argv, env)
        if proc is None:
            proc = subprocess.Popen(argv, env=env, start_new_session=True)
        stopped_since: float | None = None
        reason = ""
        try:
            while True:
                try:
                    proc.wait(timeout=POLL_S)  # returns the moment the worker exits
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.time()
                for state in _read_states(self.prefix):
                    held = state.get("block")
                    age = now - float(state.get("since", now))
                    if held is not None and self.timeout and age > self.timeout + self.grace:
                        reason = (
                            f"held block {held.get('key')} for {age:.0f} s, past timeout="
                            f"{self.timeout:g} s (frozen or stuck where daisy's watchdog "
                            "cannot act)"
                        )
                if not reason and _stopped(proc.pid):
                    stopped_since = stopped_since or now
                    if now - stopped_since > self.grace:
                        reason = f"stopped (SIGSTOP or suspended) for {now - stopped_since:.0f} s"
                else:
                    stopped_since = None
                if reason:
                    print(
                        f"blockbuster: worker pid {proc.pid} {reason}; killing it with SIGKILL",
                        file=sys.stderr,
                        flush=True,
                    )
                    _kill_group(proc)
                    break
            rc = proc.wait()
            self._record_death(rc, reason)
            return rc if rc >= 0 else 128 - rc
        finally:
            if proc.poll() is None:
                _kill_group(proc)
                proc.wait()
            for path in self.prefix.parent.glob(f"{self.prefix.name}.*"):
                path.unlink(missing_ok=True)

    def _record_death(self, rc: int, reason: str) -> None:
        """Record the failure of a block its worker died holding (the cause named)."""
        for state in _read_states(self.prefix):
            held = state.get("block")
            if held is None:
                continue
            if rc < 0:
                try:
                    how = f"was killed by {signal.Signals(-rc).name}"
                except ValueError:
                    how = f"was killed by signal {-rc}"
            else:
                how = f"exited with status {rc}"
                if rc == 0:
                    how += " in the middle of the block (os._exit or sys.exit inside fn?)"
            cause = f" after it {reason}" if reason else ""
            from blockbuster.run.records import TaskRecords

            records = TaskRecords(self.run_dir / "records" / self.task, self.task)
            records.failed(
                int(held["key"]),
                f"WorkerDied: the worker (pid {state.get('pid')} on {state.get('host')}) {how}"
                f"{cause} while processing this block",
                tiles=[int(t) for t in held.get("tiles", [held["key"]])],
            )


def _kill_group(proc: subprocess.Popen[bytes] | ZygoteChild) -> None:
    if proc.poll() is not None:
        return  # exited (and reaped): its pid may already name another process
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


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
    timeout
        The task's block timeout (the supervisor's limit).
    zygote
        The socket of this run's zygote (:mod:`.zygote`), which forks local workers with
        their imports done; None, or a zygote that cannot, starts an interpreter.
    """

    def __init__(
        self,
        run_dir: Path | str,
        task: str,
        launcher: str = LOCAL,
        gpus: tuple[str, ...] | None = None,
        timeout: float | None = None,
        zygote: str | None = None,
    ) -> None:
        self.run_dir = str(run_dir)
        self.task = task
        self.launcher = launcher
        self.gpus = gpus
        self.timeout = timeout
        self.zygote = zygote

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
        zygote = None
        if self.launcher == LOCAL:
            argv = [sys.executable, "-m", "blockbuster.worker", self.run_dir, self.task]
            zygote = self.zygote
        else:
            argv = [self.launcher, self.run_dir, self.task]
        rc = Supervisor(Path(self.run_dir), self.task, self.timeout, zygote).run(argv)
        if rc != 0:
            raise SystemExit(rc)  # a dirty exit: daisy counts it and starts another worker
