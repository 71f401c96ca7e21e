"""Running the pipeline on a Dask distributed cluster instead of daisy's workers.

The same tasks run in the Dask workers, one Dask task per block, with the same run directory
and records: a block whose record says it is done is never run again, whatever Dask
recomputes or retries (so ``fn`` is still called once per tile), and the result is the same
as with daisy. Tasks are separated by barriers.

Workers must be processes. A ``Client(processes=False)`` runs its worker as a thread of the
client's process; an fn that holds the GIL (every PyTorch/CUDA evaluation) then starves the
worker's heartbeats, the scheduler declares it dead and the run falls apart minutes in. Such
clients are refused up front; :func:`make_local_cluster` always starts process workers.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from blockbuster.config import RunConfig
from blockbuster.run.blocks import process_block, record_failure
from blockbuster.run.gpu import find_gpus, gpu_worker_env
from blockbuster.run.rundir import RunDir
from blockbuster.run.task import Block, Task, TaskReport

#: seconds between two samples of the cluster's memory
MEMORY_INTERVAL_S = 0.25

IN_PROCESS_ERROR = (
    "Active Dask client uses an in-process worker (processes=False). When fn holds the GIL "
    "(PyTorch, Cellpose) that worker cannot send heartbeats, the scheduler declares it dead "
    "and the run fails. Use a process-based cluster instead: "
    "from blockbuster import make_local_cluster; "
    "client, cluster = make_local_cluster(use_gpu=...)"
)


def make_local_cluster(
    use_gpu: bool = False,
    n_workers: int | None = None,
    memory_limit: str | float | None = None,
    gpus: Sequence[int | str] | None = None,
    **cluster_kwargs: Any,
) -> tuple[Any, Any]:
    """Start a local Dask cluster whose workers are processes with one thread each.

    Parameters
    ----------
    use_gpu
        One worker per GPU, each pinned to its own device through ``CUDA_VISIBLE_DEVICES``
        (so one fn evaluation per GPU at a time) and to one thread for OpenMP/MKL/BLAS.
        The GPUs are those ``CUDA_VISIBLE_DEVICES`` lists where it is set (as a scheduler
        sets it for a job), else every GPU ``nvidia-ml-py`` counts; with neither, one
        unpinned worker.
    n_workers
        Worker processes; default one per GPU with ``use_gpu``, else one per CPU core.
        More workers than GPUs share the devices in turn.
    memory_limit
        Per-worker memory limit, as ``distributed.LocalCluster`` takes it; default: the
        machine's memory split evenly over the workers.
    gpus
        With ``use_gpu``: the devices to use (indices or UUIDs) instead of every visible one.
    **cluster_kwargs
        Passed to ``LocalCluster`` (``processes`` and ``threads_per_worker`` are fixed).

    Returns
    -------
    (client, cluster)
        Close both when done. ``client.dashboard_link`` is printed.
    """
    from distributed import Client, LocalCluster
    from distributed.system import MEMORY_LIMIT

    for fixed in ("processes", "threads_per_worker"):
        if fixed in cluster_kwargs:
            raise ValueError(f"make_local_cluster fixes {fixed}; do not pass it")
    if gpus is not None and not use_gpu:
        raise ValueError("gpus=... pins workers to GPUs only with use_gpu=True; pass both")
    devices: tuple[str, ...] = ()
    if use_gpu:
        devices = tuple(str(g) for g in gpus) if gpus is not None else find_gpus().devices
    if n_workers is None:
        n_workers = max(len(devices), 1) if use_gpu else (os.cpu_count() or 1)
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers={n_workers!r} must be a positive integer")
    if memory_limit is None:
        memory_limit = int(MEMORY_LIMIT // n_workers)
    if use_gpu:
        cluster: Any = _gpu_cluster_class()(
            devices, n_workers, memory_limit=memory_limit, **cluster_kwargs
        )
    else:
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            **cluster_kwargs,
        )
    client = Client(cluster)
    client.wait_for_workers(n_workers)
    print(f"Dask dashboard: {client.dashboard_link}", flush=True)
    return client, cluster


@functools.cache
def _gpu_cluster_class() -> type:
    """The GPU cluster's class, built on first use (distributed imports slowly)."""
    from distributed import LocalCluster

    class GPUCluster(LocalCluster):
        """A LocalCluster whose process workers each get their own GPU (in turn)."""

        def __init__(self, devices: Sequence[str], n_workers: int, **kwargs: Any) -> None:
            self.devices = tuple(devices)
            # start with none, then add them through new_worker_spec so each gets its env
            super().__init__(n_workers=0, threads_per_worker=1, processes=True, **kwargs)
            self.scale(n_workers)

        def new_worker_spec(self) -> dict[Any, dict[str, Any]]:
            spec = super().new_worker_spec()
            ((name, worker),) = spec.items()
            options = dict(worker["options"])
            options["env"] = {**options.get("env", {}), **gpu_worker_env(self.devices, int(name))}
            return {name: {**worker, "options": options}}

    return GPUCluster


def active_client() -> Any | None:
    """The current Dask distributed client, or None (also when distributed is missing)."""
    if "distributed" not in sys.modules:
        return None  # no client can exist in a process that never imported distributed
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:
        return None


def check_client(client: Any) -> None:
    """Refuse clients whose workers are threads of this process."""
    workers = client.scheduler_info().get("workers", {})
    cluster = getattr(client, "cluster", None)
    in_process = any(str(addr).startswith("inproc://") for addr in workers) or (
        cluster is not None and getattr(cluster, "processes", True) is False
    )
    if in_process:
        raise RuntimeError(IN_PROCESS_ERROR)
    if not workers:
        raise RuntimeError("the active Dask client has no workers; start some or close it")


#: per (run directory, task): the version opened in this worker process and what it holds
_OPENED: dict[tuple[str, str], tuple[int, Any]] = {}


def run_block(
    run_dir: str,
    name: str,
    index: tuple[int, ...],
    timeout: float | None = None,
    version: int = 0,
) -> float:
    """Dask task: run block ``index`` of task ``name`` in this worker process; returns seconds.

    The task is loaded and opened once per worker process and reused (so ``fn`` is loaded
    once). A block still running after ``timeout`` seconds is recorded as failed and its
    worker process is killed (a hung fn cannot be interrupted otherwise); the nanny restarts
    the worker and the scheduler runs the block again, up to
    ``distributed.scheduler.allowed-failures`` times. ``version`` names one engine call:
    a later call (the task changed and was written again, a resumed run) opens it anew, and
    closes what the earlier one held.
    """
    key = (run_dir, name)
    held = _OPENED.get(key)
    if held is None or held[0] != version:
        if held is not None:
            held[1][3].__exit__(None, None, None)
        run = RunDir(run_dir)
        task = run.load_task(name)
        opened = task.opened()
        _OPENED[key] = (version, (task, run.task_records(task), opened.__enter__(), opened))
    task, records, fn, _ = _OPENED[key][1]
    block = task.block_at(index)

    def time_out() -> None:
        record_failure(
            task,
            records,
            block,
            f"TimeoutError: the block ran past timeout={timeout} s; its Dask worker process "
            f"(pid {os.getpid()}) was killed and is restarted by its nanny\n",
        )
        os._exit(75)

    watchdog = threading.Timer(timeout, time_out) if timeout else None
    start = time.perf_counter()
    if watchdog is not None:
        watchdog.daemon = True
        watchdog.start()
    try:
        process_block(task, fn, records, block)
    finally:
        if watchdog is not None:
            watchdog.cancel()
    return time.perf_counter() - start


@contextlib.contextmanager
def performance_report(client: Any | None, path: str | None) -> Iterator[None]:
    """Dask's performance report of what runs inside, written to ``path`` at the end (also
    when the run stopped with an error); nothing without a client or a path."""
    if client is None or path is None:
        yield
        return
    from distributed import performance_report as report

    with client.as_current(), report(filename=str(Path(path).expanduser())):
        yield


def run_dask(
    client: Any, tasks: Sequence[Task], run: RunDir, options: RunConfig
) -> dict[str, TaskReport]:
    """Run ``tasks`` one after the other on ``client``; a task with failures stops the rest.

    Each task's blocks run in the span ``("blockbuster", <task>)`` (the dashboard's Fine
    Performance Metrics and the scheduler's span metrics group them); with a performance
    report the cluster's memory is sampled per task (``TaskReport.memory``).
    """
    from distributed.diagnostics.memory_sampler import MemorySampler

    sampler = MemorySampler() if options.performance_report else None
    reports: dict[str, TaskReport] = {}
    for task in tasks:
        blocks = task.blocks()
        if any(not r.ok_by_engine for r in reports.values()):
            reports[task.name] = TaskReport(len(blocks), 0, 0, len(blocks), 0.0)
            continue
        start = time.perf_counter()
        sampling = (
            sampler.sample(task.name, client=client, interval=MEMORY_INTERVAL_S)
            if sampler is not None
            else contextlib.nullcontext()
        )
        with sampling:
            completed, failed, error = _run_task(client, run, task, blocks, options)
        memory = tuple(
            (float(t), float(b)) for t, b in (sampler.samples.get(task.name, []) if sampler else [])
        )
        reports[task.name] = TaskReport(
            len(blocks), completed, failed, 0, time.perf_counter() - start, error, memory=memory
        )
    return reports


def _run_task(
    client: Any, run: RunDir, task: Task, blocks: list[Block], options: RunConfig
) -> tuple[int, int, str | None]:
    """Every block of ``task`` on ``client``: ``(completed, failed, first_error)``."""
    from distributed import span, wait

    stamp = time.time_ns()
    with span("blockbuster", task.name):  # annotates the tasks submitted inside
        futures = client.map(
            run_block,
            [str(run.root)] * len(blocks),
            [task.name] * len(blocks),
            [b.index for b in blocks],
            [task.block_timeout(options.timeout)] * len(blocks),
            [stamp] * len(blocks),
            pure=False,
            retries=options.max_retries,
            key=[f"blockbuster-{task.name}-{b.key}-{stamp}" for b in blocks],
        )
    wait(futures)
    failed = [f for f in futures if f.status != "finished"]
    first = None
    if failed:
        exc = failed[0].exception()
        first = "".join(traceback.format_exception(exc)) if exc is not None else "cancelled"
    client.cancel(futures)
    return len(blocks) - len(failed), len(failed), first
