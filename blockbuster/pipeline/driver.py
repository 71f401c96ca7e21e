"""``tile_process``: the driver that plans a run and runs its three daisy tasks.

segment -> stitch run as one daisy pipeline (a stitch block waits for the segment blocks of its
tile and neighbours); the driver then resolves the equivalence table once and runs relabel.
Workers are separate processes (``python -m blockbuster.worker``) that daisy starts and
watches: a worker that dies or hangs past ``timeout`` costs one block, which daisy retries.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cloudpickle
import daisy
import numpy as np
from daisy import logging as daisy_logging

from blockbuster.io import ome
from blockbuster.io.outputs import check_output, create_output, is_ome_path
from blockbuster.io.sources import ImageSource, describe_source
from blockbuster.pipeline.fingerprint import fn_fingerprint, input_fingerprint, same_fn
from blockbuster.pipeline.plan import TilePlan, normalize_overlap, normalize_tile_shape
from blockbuster.pipeline.resolve import resolve
from blockbuster.pipeline.segment import SegmentFn
from blockbuster.pipeline.stage import create_stage
from blockbuster.pipeline.table import EquivalenceTable
from blockbuster.pipeline.verify import block_keys, check_segment, missing_blocks
from blockbuster.run.dask_engine import active_client, check_client, run_task
from blockbuster.run.gpu import bytes_per_voxel, find_gpus, size_tile
from blockbuster.run.launch import LOCAL, WorkerLauncher, server_dir
from blockbuster.run.lease import LEASE_FILE, Lease
from blockbuster.run.ownership import (
    check_replaceable,
    check_write_to,
    is_our_run_dir,
    mark_output,
    mark_run_dir,
    new_run_id,
    output_mark,
    remove_created,
    remove_debris,
    run_dir_marker,
)
from blockbuster.run.records import TaskRecords, TileError
from blockbuster.run.rundir import (
    RunDir,
    RunDirError,
    RunOptions,
    RunSpec,
    describe_fn,
    work_digest,
)

logger = logging.getLogger("blockbuster")

DEFAULT_TIMEOUT = 3600.0


@dataclass
class TaskReport:
    """How one daisy task ended."""

    total: int
    completed: int
    failed: int
    orphaned: int
    seconds: float
    error: str | None = None
    #: blocks (by the tile they are recorded under) that daisy counted as done but that have
    #: no valid record in the run directory
    missing: tuple[int, ...] = ()
    #: why daisy gave the task up (its worker-restart cap), or None
    abandoned: str | None = None

    @classmethod
    def from_state(cls, state: Any, seconds: float) -> TaskReport:
        return cls(
            total=state.total_block_count,
            completed=state.completed_count,
            failed=state.failed_count,
            orphaned=state.orphaned_count,
            seconds=seconds,
            error=state.first_worker_error or state.last_worker_error,
            abandoned=(
                f"daisy gave the task up after {state.worker_restart_count} worker restarts "
                f"({state.abandon_reason or 'its worker-restart cap'}); raise "
                "max_worker_restarts if workers die for reasons outside the run (preemption, "
                "time limits), or find why they die in the logs"
                if state.abandoned
                else None
            ),
        )

    @property
    def ok_by_daisy(self) -> bool:
        """Whether daisy counted every block done (what the records say is :attr:`ok`)."""
        return self.failed == 0 and self.orphaned == 0 and self.completed == self.total

    @property
    def ok(self) -> bool:
        return self.ok_by_daisy and not self.missing


@dataclass
class RunResult:
    """Summary of a ``tile_process`` run.

    Attributes
    ----------
    output
        Path of the label array written.
    num_labels
        Distinct objects in the output.
    tiles_total, tiles_completed, tiles_failed
        Tiles of the segment task (failed includes orphaned tiles).
    fn_calls
        Times ``fn`` ran across all workers (equals ``tiles_total`` on a clean run).
    seconds
        Wall seconds per stage: ``segment+stitch``, ``resolve``, ``relabel``, ``total``.
    tasks
        Per daisy task: block counts and the first worker error.
    run_dir
        The run directory (removed after success unless ``keep_stage``).
    failed
        Per task, the tiles that failed, each with the errors of its attempts (tracebacks).
    table
        Per stage: tiles done and failed, seconds and voxels per second; and the label count.
    block_map
        PNG of the volume's mid-plane with the tile grid coloured by state and seconds per
        tile: ``<run_dir>/block_map.png`` while the run directory is kept, else
        ``<write_to>.block_map.png``.
    """

    output: str
    num_labels: int
    tiles_total: int
    tiles_completed: int
    tiles_failed: int
    fn_calls: int
    seconds: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, TaskReport] = field(default_factory=dict)
    run_dir: str = ""
    failed: dict[str, dict[int, list[TileError]]] = field(default_factory=dict)
    table: str = ""
    block_map: str | None = None
    #: ``write_to`` already held this call's finished output: nothing was run
    already_finished: bool = False

    @property
    def ok(self) -> bool:
        if self.already_finished:
            return True
        return all(t.ok for t in self.tasks.values()) and "relabel" in self.tasks

    def summary(self, table: bool = True) -> str:
        """The run in a few lines: output, labels, tiles, fn calls, block map; then the
        per-stage table unless ``table=False`` (a run with progress on printed it already)."""
        lines = [
            f"output          {self.output}",
            f"labels          {self.num_labels:,}",
            f"tiles           {self.tiles_completed}/{self.tiles_total} completed, "
            f"{self.tiles_failed} failed",
            f"fn calls        {self.fn_calls}",
        ]
        if self.block_map:
            lines.append(f"block map       {self.block_map}")
        if self.table and table:
            lines += ["", self.table, ""]
        elif not self.table:
            lines += [f"{k:<16}{v:.2f} s" for k, v in self.seconds.items()]
        if self.already_finished:
            lines.append("already finished by an earlier run: nothing was redone")
        for name, t in self.tasks.items():
            if not t.ok:
                lines.append(
                    f"FAILED {name}: {t.failed} failed, {t.orphaned} orphaned of {t.total}"
                )
                if t.abandoned:
                    lines.append(f"  {t.abandoned}")
                if t.missing:
                    shown = ", ".join(map(str, t.missing[:10]))
                    lines.append(
                        f"  {len(t.missing)} block(s) counted done by daisy left no valid "
                        f"record (tiles {shown}{', ...' if len(t.missing) > 10 else ''})"
                    )
                for tile, errors in sorted(self.failed.get(name, {}).items()):
                    err = errors[-1]
                    lines.append(
                        f"  tile {tile} on {err.host}, {len(errors)} attempt(s): {err.message}"
                    )
                if t.error and not self.failed.get(name):
                    lines.append("  first error: " + t.error.strip().splitlines()[-1])
        return "\n".join(lines)


class TileFailureError(RuntimeError):
    """Raised when tiles failed; the run directory is kept so the run can be resumed."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


def _validate_fn(fn: Any) -> bytes:
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking a numpy block, got {type(fn).__name__}")
    try:
        return cloudpickle.dumps(fn)
    except Exception as e:
        raise TypeError(
            f"fn cannot be sent to worker processes ({e}); define it at module level or build "
            "unpicklable objects (models, files, locks) inside it"
        ) from None


def plan_run(
    image: Any,
    tile_shape: tuple[int, ...],
    overlap: int | tuple[int, ...],
    channels: bool | None = None,
    gpu_budget: tuple[int, int] | None = None,
    level: int | str = 0,
) -> tuple[ImageSource, TilePlan]:
    """Describe the input and cut it into tiles (no data is read).

    ``gpu_budget`` is ``(free_bytes, bytes_per_voxel)``: shrink the tile to fit it. An image
    with a time axis gets a plan whose first axis is time, one time point per tile, never
    stitched across.
    """
    if isinstance(tile_shape, (int, np.integer)):
        raise ValueError(
            f"tile_shape={tile_shape} must give one size per spatial axis, e.g. (64, 256, 256)"
        )
    spatial_ndim = len(tuple(tile_shape))
    if spatial_ndim not in (2, 3):
        raise ValueError(
            f"tile_shape={tuple(tile_shape)} must have 2 or 3 entries (y, x or z, y, x)"
        )
    source = describe_source(image, spatial_ndim, channels, param="image", level=level)
    if 0 in source.shape:
        raise ValueError(
            f"image has shape {source.shape}: an axis of size 0 holds nothing to segment"
        )
    tile = normalize_tile_shape(tile_shape, source.spatial_shape)
    halo = normalize_overlap(overlap, tile)
    if gpu_budget is not None:
        tile = size_tile(tile, halo, gpu_budget[1], gpu_budget[0])
        halo = normalize_overlap(overlap, tile)
        logger.info("tile shape %s sized for the GPU", tile)
    integral = all(float(v).is_integer() for v in source.scale + source.translation)
    t: tuple[int, ...] = (1,) if source.time_axis else ()
    plan = TilePlan(
        shape=(source.time_points,) * len(t) + source.spatial_shape,
        tile=t + tile,
        overlap=(0,) * len(t) + halo,
        voxel_size=t + (tuple(int(v) for v in source.scale) if integral else (1,) * spatial_ndim),
        offset=(0,) * len(t)
        + (tuple(int(v) for v in source.translation) if integral else (0,) * spatial_ndim),
        time_axis=source.time_axis,
    )
    return source, plan


def _context(name: str, plan: TilePlan) -> tuple[int, ...]:
    """The context (halo) each task's blocks read around their tile."""
    # stitch reads the neighbouring tiles; daisy v2 needs the context symmetric to compute the
    # dependencies right, so it is one tile on both sides
    stitch = ((0,) + plan.tile[1:]) if plan.time_axis else plan.tile  # time is never stitched
    return {"segment": plan.overlap, "stitch": stitch}.get(name, (0,) * plan.ndim)


def make_task(name: str, plan: TilePlan, run: RunDir, options: RunOptions) -> daisy.Task:
    """The daisy task ``name`` (segment, stitch or relabel).

    segment has one block per tile; stitch and relabel blocks are groups of tiles
    (:meth:`TilePlan.group_shape`).
    """
    total, read, write = plan.task_rois(_context(name, plan), plan.group_shape(name))
    gpus = options.gpus if name == "segment" else None
    return daisy.Task(
        name,
        total,
        read,
        write,
        process_function=WorkerLauncher(run.root, name, options.launcher, gpus, options.timeout),
        read_write_conflict=False,
        fit="shrink",
        max_workers=options.num_workers,
        max_retries=options.max_retries,
        max_worker_restarts=options.worker_restarts(sum(1 for _ in plan.groups(name))),
        timeout=options.timeout,
        # no daisy done markers: the workers' records already make a resumed run skip finished
        # tiles, and daisy 2.0's tracking writer dies with SIGBUS (taking the driver with it)
        # when its disk fills up, where a worker's write fails with a clear ENOSPC instead
        tracking_path=None,
        # no shared resource pool between tasks: idle stitch workers waiting for a block
        # would hold the slots a retried segment block needs, and the run would deadlock
    )


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


def _run_pipeline(
    pipeline: Any, names: list[str], run: RunDir, options: RunOptions, progress: bool
) -> tuple[dict[str, TaskReport], float]:
    start = time.perf_counter()
    for name in names:  # a stale address from an earlier run would mislead
        (server_dir(run.root) / f"{name}.json").unlink(missing_ok=True)
    announcer = _AddressAnnouncer(run) if options.host not in ("127.0.0.1", "localhost") else None
    if announcer is not None:
        announcer.start()
    try:
        states = daisy.Server().run_blockwise(
            pipeline,
            progress=progress,
            host=options.host,
            summary=False,
            block_tracking=False,
        )
    finally:
        if announcer is not None:
            announcer.stop.set()
            announcer.join()
    seconds = time.perf_counter() - start
    return {n: TaskReport.from_state(states[n], seconds) for n in names}, seconds


def _check_parameters(
    tile_shape: Any, overlap: Any, merge_threshold: Any, sequential_labels: Any, overwrite: Any
) -> None:
    """Type checks that must come before anything else (the messages name the parameter)."""
    if isinstance(tile_shape, (str, bytes)) or not (
        isinstance(tile_shape, (int, np.integer)) or hasattr(tile_shape, "__iter__")
    ):
        raise TypeError(
            f"tile_shape={tile_shape!r} must be a tuple of ints, one per spatial axis, "
            "e.g. (64, 256, 256)"
        )
    if not isinstance(tile_shape, (int, np.integer)):
        for v in tile_shape:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(
                    f"tile_shape={tuple(tile_shape)!r} must hold ints, e.g. (64, 256, 256)"
                )
    values = [overlap] if isinstance(overlap, (int, np.integer)) else overlap
    if isinstance(overlap, (str, bytes, bool)) or not hasattr(values, "__iter__"):
        raise TypeError(f"overlap={overlap!r} must be an int or a tuple of ints (voxels per side)")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"overlap={overlap!r} must be an int or a tuple of ints")
    if isinstance(merge_threshold, bool) or not isinstance(
        merge_threshold, (int, float, np.floating, np.integer)
    ):
        raise TypeError(f"merge_threshold={merge_threshold!r} must be a number in [0, 1)")
    if not (0 <= float(merge_threshold) < 1):
        raise ValueError(f"merge_threshold={merge_threshold} must be in [0, 1)")
    for name, value in (("sequential_labels", sequential_labels), ("overwrite", overwrite)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name}={value!r} must be True or False")


@dataclass(frozen=True)
class _Finished:
    """A ``write_to`` that already holds the finished output of the same work."""

    output: Path
    mark: dict[str, Any]


def _prepare(
    image: Any,
    fn: SegmentFn,
    tile_shape: tuple[int, ...],
    overlap: int | tuple[int, ...],
    *,
    write_to: str | Path,
    sequential_labels: bool,
    merge_threshold: float,
    overwrite: bool,
    channels: bool | None = None,
    gpu_budget: tuple[int, int] | None = None,
    level: int | str = 0,
) -> tuple[RunDir, RunSpec, bool, Lease | _Finished]:
    """Validate every parameter, take the run's lease, then write the run directory.

    Nothing is written before all checks pass (the lease is taken last, and released again if
    the run directory turns out to hold other work).
    """
    if write_to is None or (isinstance(write_to, str) and not write_to.strip()):
        raise ValueError("write_to is required: the path of the output label array")
    if not isinstance(write_to, (str, os.PathLike)):
        raise TypeError(f"write_to={write_to!r} must be a path")
    _check_parameters(tile_shape, overlap, merge_threshold, sequential_labels, overwrite)
    payload = _validate_fn(fn)
    ref = describe_fn(fn)
    source, plan = plan_run(image, tile_shape, overlap, channels, gpu_budget, level)
    out = Path(write_to).absolute()
    is_label = ome.label_parent(out) is not None
    check_write_to(out, Path(source.store), input_path=source.path, is_ome_label=is_label)
    check_output(out, source)
    _check_writable(out)
    run = RunDir.for_output(out)
    if overwrite:
        check_replaceable(out, run.root)
    elif run.root.exists() and not is_our_run_dir(run.root):
        raise ValueError(
            f"{str(run.root)!r} (the run directory of write_to) exists and is not a blockbuster "
            "run directory; move it away or choose another write_to"
        )
    spec = RunSpec(
        source=source,
        plan=plan,
        output_store=str(out),
        output_path="0" if is_ome_path(out) else "",
        merge_threshold=float(merge_threshold),
        sequential_labels=bool(sequential_labels),
        sys_path=[str(Path(p).absolute()) if p else str(Path.cwd()) for p in sys.path],
        run_id=new_run_id(),
        fn_fingerprint=fn_fingerprint(ref, fn),
        input_fingerprint=input_fingerprint(source.open()),
    )
    resume = False
    # a run directory without a spec (a driver killed at its start) has nothing to resume
    resumable = not overwrite and run.root.is_dir() and run.spec_file.exists()
    if out.exists() and not overwrite and not resumable:
        mark = output_mark(out)
        finished = (
            mark is not None and mark.get("complete") and mark.get("work") == work_digest(spec)
        )
        if finished and not run.root.exists():
            assert mark is not None
            remove_debris(run.root)
            return run, spec, False, _Finished(out, mark)
        raise ValueError(
            f"write_to={str(out)!r} already exists; pass overwrite=True to replace it or "
            "choose another path"
        )
    if not run.root.is_dir():
        run.create()
        mark_run_dir(run.root, spec.run_id, out)  # at once: a driver killed now leaves it ours
    lease = Lease(run.root).acquire()
    try:
        if not resumable:
            _clear_run_dir(run)
            remove_created(out)  # absent, or checked replaceable (overwrite=True) above
        else:
            previous = run.read_spec()
            _check_same_work(run, previous, spec, payload)
            spec = replace(spec, run_id=previous.run_id)
            mark = output_mark(out) if out.exists() else None
            if out.exists() and (mark is None or mark.get("run_id") != spec.run_id):
                raise ValueError(
                    f"write_to={str(out)!r} exists and is not the output of the run in "
                    f"{run.root}; move it away, or pass overwrite=True to start again"
                )
            resume = True
        mark_run_dir(run.root, spec.run_id, out)
        run.write_spec(spec)
        if not resume:
            run.write_fn(payload, ref)
            create_stage(run.stage, plan)
        EquivalenceTable.open_or_rebuild(run.table).close()
    except BaseException:
        lease.release()
        raise
    return run, spec, resume, lease


def _clear_run_dir(run: RunDir) -> None:
    """Empty a run directory blockbuster made, keeping the lease this driver holds."""
    for entry in run.root.iterdir():
        if entry.name != LEASE_FILE:
            remove_created(entry)


def _check_same_work(run: RunDir, previous: RunSpec, spec: RunSpec, payload: bytes) -> None:
    """Refuse to resume a run with another fn, another input or other parameters."""
    differences = previous.differences(spec)
    try:
        stored = run.fn_file.read_bytes()
    except FileNotFoundError:
        stored = b""
    if "fn" not in differences and not same_fn(stored, payload):
        differences.insert(0, "fn")
    if not differences:
        return
    what = {
        "fn": "fn is not the one it was started with",
        "input": "the input image changed since it started (its metadata or sampled chunks)",
        "parameters": "it was started with other parameters",
    }
    raise ValueError(
        f"{run.root} holds an unfinished run, and {'; '.join(what[d] for d in differences)}: "
        "resuming would mix tiles of two runs. Pass overwrite=True (--overwrite) to discard it "
        "and start again, or repeat the original call to resume it"
    )


def prepare_run(
    image: Any,
    fn: SegmentFn,
    tile_shape: tuple[int, ...],
    overlap: int | tuple[int, ...],
    *,
    write_to: str | Path,
    sequential_labels: bool,
    merge_threshold: float,
    overwrite: bool,
    channels: bool | None = None,
    gpu_budget: tuple[int, int] | None = None,
    level: int | str = 0,
) -> tuple[RunDir, RunSpec, bool]:
    """Validate every parameter, then write the run directory (spec, fn, stage, table).

    Nothing is written before all checks pass. Returns ``(run_dir, spec, resume)``; the lease
    taken meanwhile is released (:func:`execute_run` takes it again).
    """
    run, spec, resume, held = _prepare(
        image,
        fn,
        tile_shape,
        overlap,
        write_to=write_to,
        sequential_labels=sequential_labels,
        merge_threshold=merge_threshold,
        overwrite=overwrite,
        channels=channels,
        gpu_budget=gpu_budget,
        level=level,
    )
    if isinstance(held, _Finished):
        raise ValueError(f"write_to={str(held.output)!r} already holds this run's finished output")
    held.release()
    return run, spec, resume


def tile_process(
    image: Any,
    fn: SegmentFn,
    tile_shape: tuple[int, ...],
    overlap: int | tuple[int, ...] = 0,
    *,
    write_to: str | Path,
    num_workers: int = 1,
    progress: bool = False,
    keep_stage: bool = False,
    sequential_labels: bool = False,
    merge_threshold: float = 0.5,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_retries: int = 2,
    overwrite: bool = False,
    channels: bool | None = None,
    host: str | None = "127.0.0.1",
    launcher: str = LOCAL,
    use_gpu: bool = False,
    backend: str = "auto",
    status_page: str | None = "127.0.0.1:0",
    level: int | str = 0,
    max_worker_restarts: int | None = None,
) -> RunResult:
    """Segment an image tile by tile and stitch the labels into one consistent label array.

    Parameters
    ----------
    image
        Path of a zarr array or OME-Zarr image group, a ``zarr.Array`` or a
        ``funlib.persistence.Array`` (on disk). 2D or 3D, plus optionally one leading
        channel axis (see ``channels``).
    fn
        Picklable callable ``fn(block) -> labels``: ``block`` is the tile plus its halo (real
        image data, clipped at the image edges, channels first); ``labels`` is an integer array
        of the block's spatial shape, 0 = background. Called exactly once per tile.
    tile_shape
        Tile size in voxels per spatial axis (clipped to the image).
    overlap
        Halo in voxels per side. An int applies to every axis whose tile is longer than one
        voxel (``(1, 2048, 2048)`` with ``20`` means ``(0, 20, 20)``); a tuple sets each axis.
    write_to
        Output path: a zarr array, or an OME-Zarr image group when it ends in ``.ome.zarr``.
        Output labels are uint32, or uint64 when there are 2**32 labels or more; chunked by
        tile.
    num_workers
        Worker processes the driver starts on this machine.
    progress
        Show progress per stage: tqdm bars (tiles done/total, rate, ETA) on a terminal, else
        one plain line per stage every 10 s and a final line each; then the summary table.
    level
        Resolution level of an OME-Zarr input: an index into its multiscale datasets
        (negative counts from the coarsest) or a dataset path. Default 0, full resolution.
    status_page
        ``HOST:PORT`` of a live status page the driver serves while it runs (counts per stage
        and the block map, refreshed every few seconds); its URL is printed at the start.
        ``"127.0.0.1:0"`` (default) is private to this machine on any free port; ``None``
        serves no page.
    keep_stage
        Keep the run directory (staged tile labels, equivalence table, logs) after success.
    sequential_labels
        Final labels are ``1..N`` without gaps.
    merge_threshold
        Fraction in ``[0, 1)``; see :mod:`.stitch` for the merge rule. ``0`` merges
        any shared voxel (exact for connected-component fns).
    timeout
        Seconds a block may run before its worker is killed and the block retried (daisy
        and Dask backends alike; on Dask the retries of a killed worker's block are Dask's
        ``distributed.scheduler.allowed-failures``).
    max_retries
        Times a failed block is retried before it counts as failed.
    max_worker_restarts
        Worker processes daisy may start again per task after one died (OOM, preemption, a
        job's time limit, SIGKILL) before it gives the task up. None (default) scales with the
        run: ``max(10, 4 * num_workers, blocks // 10)``.
    overwrite
        Replace an existing output and run directory instead of refusing.
    host
        Address the task servers listen on and give to workers. ``"127.0.0.1"`` (default)
        keeps them private to this machine; for workers on other nodes give this node's name
        or address on the cluster network, or ``None`` to let daisy detect one (it then
        listens on every interface). The addresses are printed and written to
        ``<run_dir>/server/<task>.json``.
    use_gpu
        Size tiles to the GPU: ``tile_shape`` becomes the largest tile no bigger than asked
        whose working set (tile plus halo times ``fn.bytes_per_voxel``, 400 if the fn does not
        say) fits in half the free memory of the smallest GPU (read with ``nvidia-ml-py``;
        8 GiB assumed, with a warning, without it). Each worker then uses one thread and one
        GPU (``CUDA_VISIBLE_DEVICES`` cycles over the GPUs); give ``num_workers`` = GPUs.
    backend
        ``"auto"`` (default): run on the active Dask distributed client if there is one, else
        on daisy's workers; ``"daisy"`` or ``"dask"`` to choose. A Dask client whose workers
        are threads (``processes=False``) is refused with ``RuntimeError``.
    launcher
        ``"local"`` (default) starts each worker here as ``python -m blockbuster.worker``;
        the path of an executable launch script (templates in ``workers/``: ``slurm.sh``,
        ``lsf.sh``, ``local.sh``) starts each through it, e.g. as a SLURM job.
    channels
        Whether ``image`` has one leading channel axis (passed to ``fn`` whole). ``None``
        accepts one only where the metadata marks it (funlib axis name ending in ``^``, OME axis
        type ``channel``).

    Returns
    -------
    RunResult
        Output path, label count, tile counts, fn calls and seconds per stage.

    Raises
    ------
    TileFailureError
        If any tile failed; nothing is written to ``write_to`` and the run directory is kept so
        that running the same call again resumes.
    """
    with _arguments():
        options, client, gpu_budget = _check_run_arguments(
            fn,
            num_workers=num_workers,
            timeout=timeout,
            max_retries=max_retries,
            keep_stage=keep_stage,
            host=host,
            launcher=launcher,
            status_page=status_page,
            max_worker_restarts=max_worker_restarts,
            progress=progress,
            use_gpu=use_gpu,
            backend=backend,
        )
        run, spec, _, held = _prepare(
            image,
            fn,
            tile_shape,
            overlap,
            write_to=write_to,
            sequential_labels=sequential_labels,
            merge_threshold=merge_threshold,
            overwrite=overwrite,
            channels=channels,
            gpu_budget=gpu_budget,
            level=level,
        )
    if isinstance(held, _Finished):
        return _finished_result(held, spec)
    try:
        run.write_options(options)
    except BaseException:
        held.release()
        raise
    return execute_run(run, options, progress=progress, client=client, lease=held)


@contextmanager
def _arguments() -> Iterator[None]:
    """Mark errors raised while the call's arguments are checked as bad arguments (the CLI's
    exit status 2); the same types raised later are internal errors (3)."""
    try:
        yield
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        setattr(e, "bad_argument", True)  # noqa: B010 (exception types differ)
        raise


def _check_run_arguments(
    fn: Any,
    *,
    num_workers: int,
    timeout: float | None,
    max_retries: int,
    keep_stage: bool,
    host: str | None,
    launcher: str,
    status_page: str | None,
    max_worker_restarts: int | None,
    progress: bool,
    use_gpu: bool,
    backend: str,
) -> tuple[RunOptions, Any, tuple[int, int] | None]:
    """Check how the call wants to run; return the options, the Dask client and the GPU
    budget."""
    options = RunOptions(
        num_workers=num_workers,
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        max_retries=max_retries,
        keep_stage=keep_stage,
        host=host,
        launcher=launcher,
        status_page=status_page,
        max_worker_restarts=max_worker_restarts,
    ).validate()
    for name, value in (("progress", progress), ("keep_stage", keep_stage), ("use_gpu", use_gpu)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name}={value!r} must be True or False")
    client = None
    if backend not in ("auto", "daisy", "dask"):
        raise ValueError(f"backend={backend!r} must be 'auto', 'daisy' or 'dask'")
    if backend != "daisy":
        client = active_client()
        if client is None and backend == "dask":
            raise ValueError(
                "backend='dask' needs an active dask.distributed Client; start one with "
                "client, cluster = blockbuster.make_local_cluster()"
            )
        if client is not None:
            check_client(client)
    if client is None:
        options.check_addresses()
    elif options.status_page is not None:
        replace(options, host=None).check_addresses()
    gpu_budget = None
    if use_gpu:
        gpus = find_gpus()
        gpu_budget = (min(gpus.free), bytes_per_voxel(fn))
        options = replace(options, gpus=gpus.devices)
    return options, client, gpu_budget


def _finished_result(done: _Finished, spec: RunSpec) -> RunResult:
    """The result of a call whose output was already finished by an earlier run."""
    logger.warning("%s already holds the finished output of this call; nothing to do", done.output)
    total = spec.plan.num_tiles
    return RunResult(
        output=str(done.output),
        num_labels=int(done.mark.get("num_labels", 0)),
        tiles_total=total,
        tiles_completed=total,
        tiles_failed=0,
        fn_calls=0,
        already_finished=True,
    )


def _run_on_dask(
    client: Any, run: RunDir, names: list[str], options: RunOptions
) -> tuple[dict[str, TaskReport], float]:
    """Run tasks one after the other on a Dask client; a task with failures stops the rest."""
    plan = run.read_spec().plan
    start = time.perf_counter()
    reports: dict[str, TaskReport] = {}
    for name in names:
        total = sum(1 for _ in plan.groups(name))
        if reports and not all(r.ok for r in reports.values()):
            reports[name] = TaskReport(total, 0, 0, total, 0.0)
            continue
        t = time.perf_counter()
        completed, failed, error = run_task(client, run, name, options.max_retries, options.timeout)
        reports[name] = TaskReport(total, completed, failed, 0, time.perf_counter() - t, error)
    return reports, time.perf_counter() - start


def execute_run(
    run: RunDir,
    options: RunOptions,
    progress: bool = False,
    client: Any | None = None,
    lease: Lease | None = None,
) -> RunResult:
    """Run (or resume) the three tasks of a prepared run directory.

    Tiles already staged are not segmented again (the workers' records), so calling this
    again after failures or a crash redoes only what is missing. With a Dask ``client`` the
    tasks run on its workers instead of daisy's. The live status page (``options.status_page``)
    is served while this runs; the summary table and the block map are made at the end,
    whether the run finished or not.

    Raises
    ------
    LeaseHeldError
        If another driver is running this run (``lease`` is the one the caller already holds).
    TileFailureError
        If tiles failed, or could not be verified as done.
    """
    options = options.validate()
    if lease is None:
        run.read_spec()  # a one-line error for a missing or damaged run directory
        if run_dir_marker(run.root) is None:
            raise RunDirError(f"{run.root} is not a run directory blockbuster made")
        if client is None:
            options.check_addresses()
        lease = Lease(run.root).acquire()
    page = None
    try:
        page = _start_status_page(run, options.status_page)
        return _execute(run, options, progress, client, lease)
    finally:
        if page is not None:
            page.close()
        lease.release()


def _start_status_page(run: RunDir, address: str | None) -> Any:
    if address is None:
        return None
    from blockbuster.ui.live import start_status_server

    host, _, port = address.rpartition(":")
    page = start_status_server(run, host=host, port=int(port))
    print(f"blockbuster: live status page at {page.url}", file=sys.stderr, flush=True)
    return page


#: passes over segment+stitch (and over relabel) before blocks that daisy reported done but
#: that left no valid record fail the run
MAX_PASSES = 3


def _execute(
    run: RunDir, options: RunOptions, progress: bool, client: Any | None, lease: Lease
) -> RunResult:
    t0 = time.perf_counter()
    spec = run.read_spec()
    plan, source, out = spec.plan, spec.source, Path(spec.output_store)
    daisy_logging.set_log_basedir(str(run.logs))
    stage_seconds: dict[str, float] = {}
    mark = output_mark(out) if out.exists() else None
    if mark is not None and mark.get("complete") and mark.get("run_id") == spec.run_id:
        # finished before: the driver was stopped while removing the run directory
        return _cleanup_finished(run, spec, mark, options, lease)

    def run_tasks(names: list[str]) -> tuple[dict[str, TaskReport], float]:
        """Run ``names`` in order (later tasks wait for the blocks they read)."""
        from blockbuster.ui.progress import ProgressMonitor

        monitor = ProgressMonitor(run, names, plan.num_tiles) if progress else nullcontext()
        with monitor:
            if client is not None:
                reports, seconds = _run_on_dask(client, run, names, options)
            else:
                pipeline = daisy.Pipeline.from_task(make_task(names[0], plan, run, options))
                for name in names[1:]:
                    pipeline = pipeline + make_task(name, plan, run, options)
                reports, seconds = _run_pipeline(pipeline, names, run, options, False)
        if isinstance(monitor, ProgressMonitor):
            stage_seconds.update(monitor.seconds)
        return reports, seconds

    done: dict[int, dict[str, Any]] = {}

    def verified(names: list[str], reports: dict[str, TaskReport]) -> bool:
        """Hold daisy's counts against the records: a block is done when its record is."""
        nonlocal done
        whole = True
        for name in names:
            if name == "segment":
                done, missing = check_segment(run, plan)
            else:
                missing = missing_blocks(run, plan, name)
            reports[name] = replace(reports[name], missing=tuple(missing))
            whole = whole and not missing
        return whole

    if not (run.stage / "zarr.json").is_file():
        # the stage array itself is gone: an empty one makes every tile with labels missing,
        # so the passes below segment them again
        logger.warning("%s is missing; it is created again", run.stage)
        remove_created(run.stage)
        create_stage(run.stage, plan)
    check_segment(run, plan)  # what a resumed run finds damaged is redone in the first pass
    seconds = 0.0
    for attempt in range(MAX_PASSES):
        lease.check()
        # stitch reruns in full: a tile segmented again may carry other local labels
        remove_created(run.records("stitch"))
        reports, pass_seconds = run_tasks(["segment", "stitch"])
        seconds += pass_seconds
        daisy_ok = all(r.failed == 0 and r.orphaned == 0 for r in reports.values())
        if verified(["segment", "stitch"], reports) or not daisy_ok:
            break
        lost = {n: r.missing for n, r in reports.items() if r.missing}
        logger.warning(
            "pass %d: daisy counted every block done, but %s left no valid record; redoing them",
            attempt + 1,
            "; ".join(f"{len(v)} {n} block(s)" for n, v in lost.items()),
        )
    seg_records = TaskRecords(run.records("segment"), "segment")
    result = RunResult(
        output=str(out),
        num_labels=0,
        tiles_total=plan.num_tiles,
        tiles_completed=len(done),
        tiles_failed=plan.num_tiles - len(done),
        fn_calls=sum(seg_records.call_counts().values()),
        seconds={"segment+stitch": seconds},
        tasks=reports,
        run_dir=str(run.root),
    )
    result.failed = {
        task: TaskRecords(run.records(task), task).failed_tiles() for task in ("segment", "stitch")
    }
    if not all(r.ok for r in reports.values()):
        _report(run, result, stage_seconds, progress, keep=True)
        _fail(result)
    lease.check()
    start = time.perf_counter()
    with EquivalenceTable.open_or_rebuild(run.table) as table:
        table.replace_tiles((t, r["n_core"], r["n_labels"]) for t, r in sorted(done.items()))
        stitch_records = TaskRecords(run.records("stitch"), "stitch")
        table.replace_edges(stitch_records.edges(sorted(block_keys(plan, "stitch"))))
        resolution = resolve(table, plan.num_tiles, spec.sequential_labels)
    result.num_labels = resolution.num_labels
    result.seconds["resolve"] = time.perf_counter() - start
    out_dtype = "uint32" if resolution.max_id < 2**32 else "uint64"
    create_output(out, source, plan, out_dtype, keep_time=plan.time_axis)
    mark_output(out, run_id=spec.run_id, complete=False)

    # relabel reruns in full: the resolution above was rewritten, so no block may be skipped
    remove_created(run.records("relabel"))
    relabel_seconds = 0.0
    for attempt in range(MAX_PASSES):
        lease.check()
        rep, pass_seconds = run_tasks(["relabel"])
        relabel_seconds += pass_seconds
        if verified(["relabel"], rep) or not rep["relabel"].ok_by_daisy:
            break
        logger.warning(
            "pass %d: daisy counted every relabel block done, but %d left no record; redoing them",
            attempt + 1,
            len(rep["relabel"].missing),
        )
    result.tasks.update(rep)
    result.failed["relabel"] = TaskRecords(run.records("relabel"), "relabel").failed_tiles()
    result.seconds["relabel"] = relabel_seconds
    if result.ok and spec.output_path:  # an OME-Zarr label image: fill its lower levels
        from blockbuster.pipeline.pyramid import build_pyramid

        start = time.perf_counter()
        build_pyramid(
            out,
            num_workers=options.num_workers,
            progress=False,
            timeout=options.timeout,
            max_retries=options.max_retries,
        )
        result.seconds["pyramid"] = time.perf_counter() - start
    result.seconds["total"] = time.perf_counter() - t0
    _report(run, result, stage_seconds, progress, keep=options.keep_stage)
    if not result.ok:
        _fail(result)
    lease.check()
    mark_output(out, complete=True, num_labels=result.num_labels, work=work_digest(spec))
    _remove_run_dir(run, options, lease)
    return result


def _remove_run_dir(run: RunDir, options: RunOptions, lease: Lease) -> None:
    """Remove a finished run's directory, lease and all, unless ``keep_stage``."""
    if not options.keep_stage:
        lease.stop_heartbeat()
        remove_created(run.root)


def _cleanup_finished(
    run: RunDir, spec: RunSpec, mark: dict[str, Any], options: RunOptions, lease: Lease
) -> RunResult:
    """Finish the cleanup of a run whose output was completed and marked."""
    result = _finished_result(_Finished(Path(spec.output_store), mark), spec)
    result.run_dir = str(run.root)
    _remove_run_dir(run, options, lease)
    return result


def _report(
    run: RunDir,
    result: RunResult,
    stage_seconds: dict[str, float],
    progress: bool,
    keep: bool,
) -> None:
    """Fill the summary table and draw the block map (before the run directory goes)."""
    from blockbuster.ui.report import summary_table, write_block_map

    seconds = {**stage_seconds, **result.seconds}
    result.table = summary_table(run, seconds, num_labels=result.num_labels or None)
    path = run.root / "block_map.png" if keep else Path(result.output + ".block_map.png")
    try:
        result.block_map = str(write_block_map(run, path))
    except Exception as e:  # a picture must never fail a run
        logger.warning("could not draw the block map: %s", e)
    if progress:
        print(result.table, file=sys.stderr, flush=True)


def _fail(result: RunResult) -> None:
    bad = {n: t for n, t in result.tasks.items() if not t.ok}
    detail = "; ".join(
        f"{n}: {t.failed} failed, {t.orphaned} orphaned of {t.total}" for n, t in bad.items()
    )
    first_record = next(
        (errs[-1].traceback for tiles in result.failed.values() for errs in tiles.values()), None
    )
    first = first_record or next((t.error for t in bad.values() if t.error), None)
    msg = (
        f"blockbuster run incomplete ({detail}); the output was not finished. "
        f"The run directory {result.run_dir} is kept: fix the cause and run the same call again "
        "to resume."
    )
    for name, t in bad.items():
        if t.abandoned:
            msg += f"\n{name}: {t.abandoned}."
        if t.missing:
            msg += (
                f"\n{name}: {len(t.missing)} block(s) that daisy counted done left no valid "
                f"record after {MAX_PASSES} passes (tiles {', '.join(map(str, t.missing[:10]))}"
                f"{', ...' if len(t.missing) > 10 else ''}): another process may be reporting "
                "blocks to the task server without doing them."
            )
    texts = [e.traceback for tiles in result.failed.values() for es in tiles.values() for e in es]
    texts += [t.error for t in result.tasks.values() if t.error]
    if any("No space left on device" in t or "[Errno 28]" in t for t in texts):
        msg += (
            f"\nThe disk holding {result.run_dir} is full (No space left on device): free space "
            "there, then run the same call again; tiles already staged are kept."
        )
    if first:
        msg += "\nfirst error:\n" + first.strip()
    raise TileFailureError(msg, result)


def _check_writable(out: Path) -> None:
    """Refuse an output path that cannot be created, before anything is written."""
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(
            f"write_to={str(out)!r} cannot be created: {parent} is a file, not a directory; "
            "choose another path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"write_to={str(out)!r} cannot be created: no write permission in {parent}; "
            "choose a writable location"
        )
    try:  # permissions are not everything (read-only mounts, /proc, root squash)
        probe = tempfile.mkdtemp(prefix=".blockbuster-probe-", dir=parent)
    except OSError as e:
        raise ValueError(
            f"write_to={str(out)!r} cannot be created: {parent} does not accept new folders "
            f"({e.strerror or e}); choose a writable location"
        ) from None
    os.rmdir(probe)
