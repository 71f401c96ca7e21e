"""Running the pipeline on a Dask distributed cluster instead of daisy's workers.

The same stage, stitch and relabel code runs in the Dask workers, one Dask task per tile, with
the same run directory and records: ``fn`` is still called once per tile (a tile whose record
says it is staged is never segmented again, whatever Dask recomputes or retries), and the
result is the same as with daisy. Segment, stitch and relabel are separated by barriers.

Workers must be processes. A ``Client(processes=False)`` runs its worker as a thread of the
client's process; an fn that holds the GIL (every PyTorch/CUDA evaluation) then starves the
worker's heartbeats, the scheduler declares it dead and the run falls apart minutes in. Such
clients are refused up front; :func:`make_local_cluster` always starts process workers.
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import Any

from blockbuster.geometry import Box
from blockbuster.rundir import RunDir

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
    memory_limit: str | float | None = "auto",
    **cluster_kwargs: Any,
) -> tuple[Any, Any]:
    """Start a local Dask cluster whose workers are processes with one thread each.

    Parameters
    ----------
    use_gpu
        One worker (one GPU evaluation at a time) unless ``n_workers`` says otherwise.
    n_workers
        Worker processes; default 1 with ``use_gpu``, else the number of CPU cores.
    memory_limit
        Per-worker memory limit, as ``distributed.LocalCluster`` takes it.
    **cluster_kwargs
        Passed to ``LocalCluster`` (``processes`` and ``threads_per_worker`` are fixed).

    Returns
    -------
    (client, cluster)
        Close both when done. ``client.dashboard_link`` is printed.
    """
    import os

    from distributed import Client, LocalCluster

    for fixed in ("processes", "threads_per_worker"):
        if fixed in cluster_kwargs:
            raise ValueError(f"make_local_cluster fixes {fixed}; do not pass it")
    if n_workers is None:
        n_workers = 1 if use_gpu else (os.cpu_count() or 1)
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        memory_limit=memory_limit,
        **cluster_kwargs,
    )
    client = Client(cluster)
    print(f"Dask dashboard: {client.dashboard_link}", flush=True)
    return client, cluster


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


_HANDLERS: dict[tuple[str, str], Any] = {}


def run_block(run_dir: str, task: str, group: Box) -> float:
    """Dask task: run one block of ``task`` in this worker process; returns seconds.

    Handlers (and so ``fn``) are built once per worker process and reused.
    """
    from blockbuster.worker import make_handler, record_failure

    key = (run_dir, task)
    if key not in _HANDLERS:
        _HANDLERS[key] = make_handler(RunDir(run_dir), task)
    plan, records, handle = _HANDLERS[key]
    start = time.perf_counter()
    try:
        handle(group)
    except Exception:
        record_failure(plan, records, group, traceback.format_exc())
        raise
    return time.perf_counter() - start


def run_task(client: Any, run: RunDir, task: str, retries: int) -> tuple[int, int, str | None]:
    """Run every block of ``task`` on ``client``.

    Returns ``(completed, failed, first_error)`` counted in blocks.
    """
    from distributed import wait

    plan = run.read_spec().plan
    tiles = list(plan.groups(task))
    stamp = time.time_ns()
    futures = client.map(
        run_block,
        [str(run.root)] * len(tiles),
        [task] * len(tiles),
        tiles,
        pure=False,
        retries=retries,
        key=[f"blockbuster-{task}-{plan.tile_id([a for a, _ in g])}-{stamp}" for g in tiles],
    )
    wait(futures)
    failed = [f for f in futures if f.status != "finished"]
    first = None
    if failed:
        exc = failed[0].exception()
        first = "".join(traceback.format_exception(exc)) if exc is not None else "cancelled"
    client.cancel(futures)
    return len(tiles) - len(failed), len(failed), first
