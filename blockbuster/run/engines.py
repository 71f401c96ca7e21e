"""The engines that run tasks: daisy workers, a Dask client, or this process.

Each takes the same :class:`~blockbuster.run.task.Task` objects and the same run directory,
runs every block through :func:`~blockbuster.run.blocks.process_block` (so records, resume and
failures are the same everywhere) and returns one :class:`TaskReport` per task: what the
engine counted. The records, not these counts, decide whether a block is done (see
:func:`blockbuster.run.driver.verify`).

* ``daisy``: one daisy pipeline over the tasks (a block waits for the upstream blocks it
  reads), workers started by :class:`~blockbuster.run.launch.WorkerLauncher`, here or
  through a launch script, each supervised.
* ``dask``: the tasks one after the other on the client's process workers
  (:mod:`blockbuster.run.dask_engine`).
* ``serial``: every block in this process, in dependency order (small tasks, debugging).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import daisy
from funlib.geometry import Roi

from blockbuster.config import RunConfig
from blockbuster.run.blocks import process_block
from blockbuster.run.launch import LOCAL, WorkerLauncher, server_dir
from blockbuster.run.rundir import RunDir
from blockbuster.run.task import Task, TaskReport
from blockbuster.run.zygote import Zygote

Engine = Literal["daisy", "dask", "serial"]


def in_order(tasks: Sequence[Task]) -> list[Task]:
    """``tasks`` with every task after the tasks it reads from (stable otherwise).

    Raises
    ------
    ValueError
        If a task's upstream is not among ``tasks``, names repeat, or the tasks form a cycle.
    """
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks={names} must have distinct names")
    by_name = {t.name: t for t in tasks}
    out: list[Task] = []
    placed: set[str] = set()
    visiting: set[str] = set()

    def place(task: Task) -> None:
        if task.name in placed:
            return
        if task.name in visiting:
            raise ValueError(f"tasks form a cycle through {task.name!r}")
        visiting.add(task.name)
        for up in task.upstream:
            if by_name.get(up.name) is not up:
                why = (
                    "a different Task object of that name was passed: build the tasks "
                    "together, or pass the one it names in upstream"
                    if up.name in by_name
                    else "it is not among the tasks run; pass it too"
                )
                raise ValueError(f"task {task.name!r} reads from {up.name!r}: {why}")
            place(up)
        visiting.discard(task.name)
        placed.add(task.name)
        out.append(task)

    for task in tasks:
        place(task)
    return out


# -- daisy -------------------------------------------------------------------------------------


def daisy_task(
    task: Task, run: RunDir, options: RunConfig, zygote: str | None = None
) -> daisy.Task:
    """The daisy task that runs ``task``'s blocks in blockbuster workers (local ones forked
    by the ``zygote`` at that socket, when given)."""
    write = Roi(task.roi.begin, task.block_shape)
    return daisy.Task(
        task.name,
        task.total_roi,
        write.grow(task.context, task.context),
        write,
        process_function=WorkerLauncher(
            run.root,
            task.name,
            options.launcher,
            options.gpus if task.uses_gpu else None,
            options.timeout,
            zygote,
        ),
        read_write_conflict=False,
        fit=task.fit,
        max_workers=options.num_workers,
        max_retries=options.max_retries,
        max_worker_restarts=options.worker_restarts(task.num_blocks),
        timeout=task.block_timeout(options.timeout),
        # no daisy done markers: the workers' records already make a resumed run skip done
        # blocks, and daisy 2.0's tracking writer dies with SIGBUS (taking the driver with it)
        # when its disk fills up, where a worker's write fails with a clear ENOSPC instead
        tracking_path=None,
        # no shared resource pool between tasks: idle downstream workers waiting for a block
        # would hold the slots a retried upstream block needs, and the run would deadlock
    )


def daisy_pipeline(
    tasks: Sequence[Task], run: RunDir, options: RunConfig, zygote: str | None = None
) -> Any:
    """One daisy pipeline over ``tasks`` with an edge for each upstream relation."""
    made = {t.name: daisy.Pipeline.from_task(daisy_task(t, run, options, zygote)) for t in tasks}
    pipe = made[tasks[0].name]
    for t in tasks[1:]:
        pipe = pipe | made[t.name]
    for t in tasks:
        for up in t.upstream:
            pipe = pipe | (made[up.name] + made[t.name])
    return pipe


class _AddressAnnouncer(threading.Thread):
    """Prints each task's server address once it is known (for workers on other machines)."""

    def __init__(self, run: RunDir) -> None:
        super().__init__(daemon=True)
        self.folder = server_dir(run.root)
        self.stop = threading.Event()
        self.seen: set[str] = set()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.announce()
        self.announce()  # the last ones, if the run ended within a poll

    def announce(self) -> None:
        for path in sorted(self.folder.glob("*.json")):
            if path.name not in self.seen:
                self.seen.add(path.name)
                info = json.loads(path.read_text())
                print(
                    f"blockbuster: {info['task']} workers connect to "
                    f"{info['host']}:{info['port']} (recorded in {path})",
                    flush=True,
                )


_SHARED_ZYGOTE: ContextVar[Zygote | None] = ContextVar("blockbuster_zygote", default=None)


@contextmanager
def local_zygote(
    options: RunConfig, engine: Engine, log: Path | None = None
) -> Iterator[Zygote | None]:
    """One zygote for the daisy runs inside (a run has two or more: segment and stitch,
    relabel, the pyramid's levels), so that each does not start its own and wait for its
    imports. Started before the input is described, those imports overlap the driver's own
    work. Inside another one, that one is used; for other engines and launchers, none.
    ``log``: the zygote's output (else kept in its folder, see :attr:`Zygote.keep_log`)."""
    shared = _SHARED_ZYGOTE.get()
    if shared is not None or engine != "daisy" or options.launcher != LOCAL:
        yield shared
        return
    zygote = Zygote.start(log)
    token = _SHARED_ZYGOTE.set(zygote)
    try:
        yield zygote
    finally:
        _SHARED_ZYGOTE.reset(token)
        if zygote is not None:
            zygote.close()


def run_daisy(tasks: Sequence[Task], run: RunDir, options: RunConfig) -> dict[str, TaskReport]:
    """Run ``tasks`` as one daisy pipeline (its local workers forked by the zygote of an
    enclosing :func:`local_zygote`, else by one of its own)."""
    from daisy import logging as daisy_logging

    daisy_logging.set_log_basedir(str(run.logs))
    start = time.perf_counter()
    for task in tasks:  # a stale address from an earlier run would mislead
        (server_dir(run.root) / f"{task.name}.json").unlink(missing_ok=True)
    announcer = _AddressAnnouncer(run) if options.host not in ("127.0.0.1", "localhost") else None
    if announcer is not None:
        announcer.start()
    # local workers forked with their imports done (a launch script's run elsewhere)
    shared = _SHARED_ZYGOTE.get() if options.launcher == LOCAL else None
    own = (
        Zygote.start(run.logs / "zygote.log")
        if shared is None and options.launcher == LOCAL
        else None
    )
    zygote = shared or own
    if zygote is not None and zygote.proc.poll() is not None:
        zygote = None  # gone (killed?): the workers are started as interpreters
    try:
        states = daisy.Server().run_blockwise(
            daisy_pipeline(tasks, run, options, zygote.path if zygote else None),
            progress=False,
            host=options.host,
            summary=False,
            block_tracking=False,
        )
    finally:
        if own is not None:
            own.close()
        if announcer is not None:
            announcer.stop.set()
            announcer.join()
    seconds = time.perf_counter() - start
    return {t.name: TaskReport.from_state(states[t.name], seconds) for t in tasks}


# -- this process --------------------------------------------------------------------------------


def run_serial(tasks: Sequence[Task], run: RunDir, options: RunConfig) -> dict[str, TaskReport]:
    """Run every block of ``tasks`` in this process, in dependency order, with retries.

    A task whose blocks failed stops the tasks after it (they would read missing data).
    """
    import traceback

    reports: dict[str, TaskReport] = {}
    for task in tasks:
        blocks = task.blocks()
        if any(not r.ok_by_engine for r in reports.values()):
            reports[task.name] = TaskReport(len(blocks), 0, 0, len(blocks), 0.0)
            continue
        start = time.perf_counter()
        records = run.task_records(task)
        failed, error = 0, None
        with task.opened() as fn:
            for block in blocks:
                for attempt in range(options.max_retries + 1):
                    try:
                        process_block(task, fn, records, block)
                        break
                    except Exception:
                        if attempt == options.max_retries:
                            failed += 1
                            error = error or traceback.format_exc()
        reports[task.name] = TaskReport(
            len(blocks), len(blocks) - failed, failed, 0, time.perf_counter() - start, error
        )
    return reports


def engine_for(backend: str, client: Any | None) -> Engine:
    """The engine a run with ``backend`` uses: Dask when it has a client."""
    if client is not None:
        return "dask"
    return "serial" if backend == "serial" else "daisy"


def run_engine(
    engine: Engine,
    tasks: Sequence[Task],
    run: RunDir,
    options: RunConfig,
    client: Any | None = None,
) -> dict[str, TaskReport]:
    """Run ``tasks`` (in dependency order) on ``engine``; the tasks must be written to the run
    directory (:meth:`RunDir.write_tasks`)."""
    ordered = in_order(tasks)
    if engine == "serial":
        return run_serial(ordered, run, options)
    if engine == "dask":
        from blockbuster.run.dask_engine import run_dask

        return run_dask(client, ordered, run, options)
    return run_daisy(ordered, run, options)
