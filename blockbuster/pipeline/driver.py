"""``tile_process``: the driver that plans a run and runs its three daisy tasks.

segment -> stitch run as one daisy pipeline (a stitch block waits for the segment blocks of its
tile and neighbours); the driver then resolves the equivalence table once and runs relabel.
Workers are separate processes (``python -m blockbuster.worker``) that daisy starts and
watches: a worker that dies or hangs past ``timeout`` costs one block, which daisy retries.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

from blockbuster.config import RunConfig
from blockbuster.io import ome, sdstore
from blockbuster.io.outputs import check_output, create_output, is_ome_path
from blockbuster.io.sources import ImageSource, describe_source
from blockbuster.pipeline.mask import mask_tiles, save_tiles, tiles_digest
from blockbuster.pipeline.plan import TilePlan, normalize_overlap, normalize_tile_shape
from blockbuster.pipeline.pyramid import pyramid_tasks
from blockbuster.pipeline.relabel import RelabelTask
from blockbuster.pipeline.resolve import resolve
from blockbuster.pipeline.segment import SegmentFn, SegmentTask
from blockbuster.pipeline.spec import (
    RunSpec,
    describe_fn,
    read_spec,
    work_digest,
    write_fn,
    write_spec,
)
from blockbuster.pipeline.stage import create_stage
from blockbuster.pipeline.stats import ImageStats, compute_stats, load_stats, prepare_fn, save_stats
from blockbuster.pipeline.stitch import StitchTask
from blockbuster.pipeline.table import EquivalenceTable
from blockbuster.run.dask_engine import active_client, check_client, performance_report
from blockbuster.run.driver import (
    MAX_PASSES,
    BlockFailureError,
    check_performance_report,
    choose_engine,
    execute_tasks,
    task_infos,
)
from blockbuster.run.engines import engine_for, local_zygote
from blockbuster.run.events import Events, Observer, RunFinished, RunStarted
from blockbuster.run.fingerprint import fn_fingerprint, input_fingerprint, same_fn
from blockbuster.run.gpu import bytes_per_voxel, find_gpus, size_tile
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
from blockbuster.run.records import TileError
from blockbuster.run.rundir import RunDir, RunDirError
from blockbuster.run.task import TaskReport

logger = logging.getLogger("blockbuster")


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
    status_page
        The status page's final state, a self-contained HTML file beside the block map:
        ``<run_dir>/status.html``, else ``<write_to>.status.html``.
    dask_memory
        On Dask with ``performance_report``: a PNG of the cluster's memory over time per
        stage, beside the block map (``dask_memory.png``); else None.
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
    status_page: str | None = None
    dask_memory: str | None = None
    #: ``write_to`` already held this call's finished output: nothing was run
    already_finished: bool = False
    #: tiles outside the mask (``tile_process(mask=...)``): done without reading them
    tiles_skipped: int = 0
    #: the input's intensity statistics the fn was prepared with
    stats: ImageStats | None = field(default=None, repr=False)

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
            f"tiles           {self.tiles_completed}/{self.tiles_total} completed"
            + (f" ({self.tiles_skipped} skipped: no foreground)" if self.tiles_skipped else "")
            + f", {self.tiles_failed} failed",
            f"fn calls        {self.fn_calls}",
        ]
        if self.stats is not None:
            lines += self.stats.summary()
        if self.block_map:
            lines.append(f"block map       {self.block_map}")
        if self.status_page:
            lines.append(f"status page     {self.status_page}")
        if self.dask_memory:
            lines.append(f"dask memory     {self.dask_memory}")
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
                        f"  {len(t.missing)} block(s) counted done by the engine left no valid "
                        f"record (tiles {shown}{', ...' if len(t.missing) > 10 else ''})"
                    )
                for key, errors in sorted(self.failed.get(name, {}).items()):
                    err = errors[-1]
                    where = (
                        f"tile {key}"
                        if len(err.tiles) <= 1
                        else f"block {key} ({len(err.tiles)} tiles from tile {err.tiles[0]})"
                    )
                    lines.append(
                        f"  {where} on {err.host}, {len(errors)} attempt(s): {err.message}"
                    )
                if t.error and not self.failed.get(name):
                    lines.append("  first error: " + t.error.strip().splitlines()[-1])
        return "\n".join(lines)


class TileFailureError(BlockFailureError):
    """Raised when tiles failed; the run directory is kept so the run can be resumed."""


def _validate_fn(fn: Any) -> bytes:
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking a numpy block, got {type(fn).__name__}")
    try:
        return bytes(cloudpickle.dumps(fn))
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


@dataclass(frozen=True)
class Finished:
    """A ``write_to`` that already holds the finished output of the same work."""

    output: Path
    mark: dict[str, Any]


def prepare(
    image: Any,
    fn: SegmentFn,
    config: RunConfig,
    write_to: str | Path,
    gpu_budget: tuple[int, int] | None = None,
    mask_array: Any = None,
) -> tuple[RunDir, RunSpec, bool, Lease | Finished]:
    """Validate every parameter, measure the image's statistics and prepare the fn with
    them, take the run's lease, then write the run directory.

    Nothing is written before all checks pass (the lease is taken last, and released again if
    the run directory turns out to hold other work). ``mask_array`` is a mask given as an
    array (``config.mask`` holds only ``"auto"`` or a path).
    """
    if write_to is None or (isinstance(write_to, str) and not write_to.strip()):
        raise ValueError("write_to is required: the path of the output label array")
    if not isinstance(write_to, (str, os.PathLike)):
        raise TypeError(f"write_to={write_to!r} must be a path")
    overwrite = config.overwrite
    _validate_fn(fn)
    overlap = config.overlap if config.overlap is not None else suggested_overlap(fn)
    source, plan = plan_run(
        image, config.tile_shape, overlap, config.channels, gpu_budget, config.level
    )
    mask = config.mask if mask_array is None else mask_array
    if mask_array is None and config.mask == "array":
        raise ValueError("mask='array' stands for a mask array: pass the array itself")
    if isinstance(mask, str) and mask != "auto":
        mask = Path(mask)
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
    # a run directory without a spec (a driver killed at its start) has nothing to resume
    resumable = not overwrite and run.root.is_dir() and run.spec_file.exists()
    # the pass reads the whole image (or its coarse level): only for those who use it
    stats = _image_stats(run, source, resumable) if _needs_stats(fn, mask) else None
    if stats is not None:
        fn = prepare_fn(fn, stats)
    payload = _validate_fn(fn)
    ref = describe_fn(fn)
    foreground = mask_tiles(mask, source, plan, stats)
    spec = RunSpec(
        source=source,
        plan=plan,
        output_store=str(out),
        output_path="0" if is_ome_path(out) else "",
        merge_threshold=float(config.merge_threshold),
        sequential_labels=bool(config.sequential_labels),
        sys_path=[str(Path(p).absolute()) if p else str(Path.cwd()) for p in sys.path],
        run_id=new_run_id(),
        fn_fingerprint=fn_fingerprint(ref, fn),
        input_fingerprint=input_fingerprint(source.open()),
        stats_digest="" if stats is None else stats.digest(),
        mask="" if mask is None else "auto" if isinstance(mask, str) else "array",
        mask_digest="" if foreground is None else tiles_digest(foreground),
    )
    resume = False
    if out.exists() and not overwrite and not resumable:
        mark = output_mark(out)
        finished = (
            mark is not None and mark.get("complete") and mark.get("work") == work_digest(spec)
        )
        if finished and not run.root.exists():
            assert mark is not None
            remove_debris(run.root)
            return run, spec, False, Finished(out, mark)
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
            previous = read_spec(run)
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
        if stats is None:
            run.stats_file.unlink(missing_ok=True)
        else:
            save_stats(run.stats_file, stats)
        if foreground is None:
            run.foreground_file.unlink(missing_ok=True)
        else:
            save_tiles(run.foreground_file, foreground)
        write_spec(run, spec)
        if not resume:
            write_fn(run, payload, ref)
            create_stage(run.stage, plan)
        EquivalenceTable.open_or_rebuild(run.table).close()
    except BaseException:
        lease.release()
        raise
    return run, spec, resume, lease


def suggested_overlap(fn: Any) -> int | tuple[int, ...]:
    """The halo ``fn.suggest_overlap()`` asks for, 0 for a fn without the method."""
    suggest = getattr(fn, "suggest_overlap", None)
    if suggest is None or not callable(suggest):
        return 0
    value = suggest()
    logger.info("overlap %s, as the fn suggests", value)
    return value  # type: ignore[no-any-return]


def _needs_stats(fn: Any, mask: Any) -> bool:
    """Whether the run uses the image statistics: a fn with ``prepare(stats)`` or
    ``mask="auto"``."""
    return callable(getattr(fn, "prepare", None)) or (isinstance(mask, str) and mask == "auto")


def _image_stats(run: RunDir, source: ImageSource, resumable: bool) -> ImageStats:
    """The statistics a resumed run kept (when whole and the ones its spec names), else
    measured now."""
    if resumable:
        try:
            digest = read_spec(run).stats_digest
        except RunDirError:
            digest = None
        kept = load_stats(run.stats_file, digest) if digest else None
        if kept is not None:
            return kept
    stats = compute_stats(source)
    logger.info("image statistics from %s in %.1f s", stats.origin, stats.seconds)
    return stats


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
    sequential_labels: bool = RunConfig.sequential_labels,
    merge_threshold: float = RunConfig.merge_threshold,
    overwrite: bool = RunConfig.overwrite,
    channels: bool | None = RunConfig.channels,
    gpu_budget: tuple[int, int] | None = None,
    level: int | str = RunConfig.level,
) -> tuple[RunDir, RunSpec, bool]:
    """Validate every parameter, then write the run directory (spec, fn, stage, table).

    Nothing is written before all checks pass. Returns ``(run_dir, spec, resume)``; the lease
    taken meanwhile is released (:func:`execute_run` takes it again).
    """
    config = RunConfig(
        tile_shape=tile_shape,
        overlap=overlap,
        sequential_labels=sequential_labels,
        merge_threshold=merge_threshold,
        overwrite=overwrite,
        channels=channels,
        level=level,
    ).validate()
    run, spec, resume, held = prepare(image, fn, config, write_to, gpu_budget)
    if isinstance(held, Finished):
        raise ValueError(f"write_to={str(held.output)!r} already holds this run's finished output")
    held.release()
    return run, spec, resume


@contextmanager
def arguments() -> Iterator[None]:
    """Mark errors raised while the call's arguments are checked as bad arguments (the CLI's
    exit status 2); the same types raised later are internal errors (3)."""
    try:
        yield
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        setattr(e, "bad_argument", True)  # noqa: B010 (exception types differ)
        raise


def check_config(config: RunConfig, fn: Any) -> tuple[RunConfig, Any, tuple[int, int] | None]:
    """Check how the call wants to run; return the validated config (with the GPUs), the Dask
    client and the GPU budget ``(free bytes, bytes per voxel)``."""
    config = config.validate()
    engine, client = choose_engine(config.backend, active_client, check_client)
    check_performance_report(config, engine)
    if engine != "serial" or config.status_page is not None:
        config.check_addresses(servers=engine == "daisy")
    gpu_budget = None
    if config.use_gpu:
        gpus = find_gpus()
        gpu_budget = (min(gpus.free), bytes_per_voxel(fn))
        config = replace(config, gpus=gpus.devices)
    return config, client, gpu_budget


def finished_result(done: Finished, spec: RunSpec) -> RunResult:
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


def stage_tasks(run: RunDir, plan: TilePlan) -> tuple[SegmentTask, StitchTask, RelabelTask]:
    """The pipeline's three tasks for ``run``."""
    segment = SegmentTask(str(run.root), plan)
    return (
        segment,
        StitchTask(str(run.root), plan, upstream=(segment,)),
        RelabelTask(str(run.root), plan),
    )


def execute_run(
    run: RunDir,
    options: RunConfig,
    client: Any | None = None,
    lease: Lease | None = None,
    observers: Sequence[Observer] = (),
) -> RunResult:
    """Run (or resume) the tasks of a prepared run directory.

    Tiles already staged are not segmented again (the workers' records), so calling this
    again after failures or a crash redoes only what is missing. With a Dask ``client`` the
    tasks run on its workers instead of daisy's. ``observers`` receive the run's events
    (progress, the live status page, the summary table and the block map are observers).

    Raises
    ------
    LeaseHeldError
        If another driver is running this run (``lease`` is the one the caller already holds).
    TileFailureError
        If tiles failed, or could not be verified as done.
    """
    options = options.validate()
    if lease is None:
        read_spec(run)  # a one-line error for a missing or damaged run directory
        if run_dir_marker(run.root) is None:
            raise RunDirError(f"{run.root} is not a run directory blockbuster made")
        if client is None:
            options.check_addresses()
        lease = Lease(run.root).acquire()
    events = Events(tuple(observers))
    try:
        engine = engine_for(options.backend, client)
        with (
            performance_report(client, options.performance_report),
            local_zygote(options, engine, run.logs / "zygote.log"),
        ):
            return _execute(run, options, client, lease, events)
    finally:
        if not events.finished:  # stopped by an exception: let the observers close
            events.emit(RunFinished(run.root, None, keep=True))
        lease.release()


def _execute(
    run: RunDir, options: RunConfig, client: Any | None, lease: Lease, events: Events
) -> RunResult:
    t0 = time.perf_counter()
    spec = read_spec(run)
    plan, source, out = spec.plan, spec.source, Path(spec.output_store)
    engine = engine_for(options.backend, client)
    segment, stitch, relabel = stage_tasks(run, plan)
    mark = output_mark(out) if out.exists() else None
    if mark is not None and mark.get("complete") and mark.get("run_id") == spec.run_id:
        # finished before: the driver was stopped while removing the run directory
        return _cleanup_finished(run, spec, mark, options, lease)
    events.emit(RunStarted(run.root, task_infos([segment, stitch, relabel])))
    if not (run.stage / "zarr.json").is_file():
        # the stage array itself is gone: an empty one makes every tile with labels missing,
        # so the passes below segment them again
        logger.warning("%s is missing; it is created again", run.stage)
        remove_created(run.stage)
        create_stage(run.stage, plan)
    reports, checked, seconds = execute_tasks(
        [segment, stitch],
        run,
        options,
        lease,
        engine=engine,
        client=client,
        events=events,
        # stitch reruns in full: a tile segmented again may carry other local labels
        before_pass=lambda: remove_created(run.records("stitch")),
    )
    done = checked["segment"].done
    seg_records = run.task_records(segment)
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
        tiles_skipped=sum(1 for r in done.values() if r.get("skipped")),
        stats=load_stats(run.stats_file, spec.stats_digest) if spec.stats_digest else None,
    )
    result.failed = {t.name: run.task_records(t).failed_tiles() for t in (segment, stitch)}
    if not all(r.ok for r in reports.values()):
        events.emit(RunFinished(run.root, result, keep=True))
        _fail(result)
    lease.check()
    start = time.perf_counter()
    with EquivalenceTable.open_or_rebuild(run.table) as table:
        table.replace_tiles((t, r["n_core"], r["n_labels"]) for t, r in sorted(done.items()))
        stitch_records = run.task_records(stitch)
        table.replace_edges(stitch_records.edges(sorted(b.key for b in stitch.blocks())))
        resolution = resolve(table, plan.num_tiles, spec.sequential_labels)
    result.num_labels = resolution.num_labels
    result.seconds["resolve"] = time.perf_counter() - start
    out_dtype = "uint32" if resolution.max_id < 2**32 else "uint64"
    create_output(out, source, plan.tile, out_dtype, keep_time=plan.time_axis)
    mark_output(out, run_id=spec.run_id, complete=False)

    # relabel reruns in full: the resolution above was rewritten, so no block may be skipped
    remove_created(run.records("relabel"))
    rep, _, result.seconds["relabel"] = execute_tasks(
        [relabel], run, options, lease, engine=engine, client=client, events=events
    )
    result.tasks.update(rep)
    result.failed["relabel"] = run.task_records(relabel).failed_tiles()
    if result.ok and spec.output_path:  # an OME-Zarr label image: fill its lower levels
        start = time.perf_counter()
        for tasks, level_engine in pyramid_tasks(out):
            for task in tasks:
                remove_created(run.records(task.name))  # level 0 was written anew
            rep, _, _ = execute_tasks(
                tasks,
                run,
                options,
                lease,
                engine=engine if level_engine is None else level_engine,
                client=client,
                events=events,
            )
            result.tasks.update(rep)
            for task in tasks:
                result.failed[task.name] = run.task_records(task).failed_tiles()
            if not all(r.ok for r in rep.values()):
                break  # the levels below would be built from a half-written one
        result.seconds["pyramid"] = time.perf_counter() - start
    result.seconds["total"] = time.perf_counter() - t0
    events.emit(RunFinished(run.root, result, keep=options.keep_stage or not result.ok))
    if not result.ok:
        _fail(result)
    lease.check()
    mark_output(out, complete=True, num_labels=result.num_labels, work=work_digest(spec))
    _remove_run_dir(run, options, lease)
    _publish(out)
    return result


def _publish(out: Path) -> None:
    """Make a finished SpatialData labels element visible: ``spatialdata.read_zarr`` lists the
    elements in the store's consolidated metadata, rewritten here (after the run directory
    is gone)."""
    found = sdstore.labels_element(out)
    if found is not None:
        sdstore.consolidate(found[0])


def _remove_run_dir(run: RunDir, options: RunConfig, lease: Lease) -> None:
    """Remove a finished run's directory, lease and all, unless ``keep_stage``."""
    if not options.keep_stage:
        lease.stop_heartbeat()
        remove_created(run.root)


def _cleanup_finished(
    run: RunDir, spec: RunSpec, mark: dict[str, Any], options: RunConfig, lease: Lease
) -> RunResult:
    """Finish the cleanup of a run whose output was completed and marked."""
    result = finished_result(Finished(Path(spec.output_store), mark), spec)
    result.run_dir = str(run.root)
    _remove_run_dir(run, options, lease)
    _publish(Path(spec.output_store))
    return result


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
                f"\n{name}: {len(t.missing)} block(s) that the engine counted done left no valid "
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
