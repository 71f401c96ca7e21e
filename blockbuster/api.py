"""The public entry points, and the observers (progress, status page, reports) they attach.

The drivers (:mod:`blockbuster.pipeline.driver`, :mod:`blockbuster.run.driver`) emit events
and import no UI module; this module is where a call's ``progress`` and ``status_page`` turn
into observers of its run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from blockbuster.config import RunConfig
from blockbuster.pipeline import driver
from blockbuster.pipeline.driver import RunResult
from blockbuster.pipeline.segment import SegmentFn
from blockbuster.run.driver import TasksResult
from blockbuster.run.engines import engine_for, local_zygote
from blockbuster.run.events import Observer
from blockbuster.run.rundir import RunDir
from blockbuster.run.task import Task

C = RunConfig  # the defaults below are RunConfig's: they exist there only


def observers(config: RunConfig, progress: bool) -> list[Observer]:
    """What watches a run: the summary table, block map and the status page's final copy
    always, the live status page where ``config.status_page`` asks for one, progress bars or
    lines with ``progress``."""
    from blockbuster.ui.live import StageClock, StatusPageObserver, write_status_page
    from blockbuster.ui.progress import ProgressMonitor
    from blockbuster.ui.report import Reporter

    out: list[Observer] = []
    if progress:
        out.append(ProgressMonitor())
    # the report writes the status page's final copy beside the block map; before the live
    # page, which then shows the map the report drew instead of drawing it again
    report = Reporter(print_table=progress, page_writer=write_status_page, clock=StageClock())
    out.append(report)
    if config.status_page is not None:
        out.append(StatusPageObserver(config.status_page, final_map=lambda: report.last_png))
    return out


def tile_process(
    image: Any,
    fn: SegmentFn,
    tile_shape: tuple[int, ...],
    overlap: int | tuple[int, ...] | None = C.overlap,
    *,
    write_to: str | Path,
    mask: Any = C.mask,
    num_workers: int = C.num_workers,
    progress: bool = C.progress,
    keep_stage: bool = C.keep_stage,
    sequential_labels: bool = C.sequential_labels,
    merge_threshold: float = C.merge_threshold,
    timeout: float = C.timeout,
    max_retries: int = C.max_retries,
    overwrite: bool = C.overwrite,
    channels: bool | None = C.channels,
    host: str | None = C.host,
    launcher: str = C.launcher,
    use_gpu: bool = C.use_gpu,
    backend: str = C.backend,
    status_page: str | None = C.status_page,
    level: int | str = C.level,
    max_worker_restarts: int | None = C.max_worker_restarts,
    performance_report: str | None = C.performance_report,
) -> RunResult:
    """Segment an image tile by tile and stitch the labels into one consistent
        label array.

        Parameters
        ----------
        image
            Path of a zarr array or OME-Zarr image group (a SpatialData image element
            ``<store>/images/<name>`` is one), a ``zarr.Array[Any]`` or a
            ``funlib.persistence.Array`` (on disk). 2D or 3D, plus optionally one leading
            channel axis (see ``channels``).
        fn
            Picklable callable ``fn(block) -> labels``: ``block`` is the tile plus its halo (real
            image data, clipped at the image edges, channels first); ``labels`` is an integer
            array of the block's spatial shape, 0 = background. Called exactly once per tile.
        write_to
            Output path: a zarr array, or an OME-Zarr image group when it ends in ``.ome.zarr``
            (or is ``<image>/labels/<name>``), or a SpatialData labels element when it is
            ``<store>/labels/<name>`` and ``image`` is ``<store>/images/<other>`` (the image's
            transformations copied). Output labels are uint32, or uint64 when there are
            2**32 labels or more; chunked by tile.
    {config}

        Returns
        -------
        RunResult
            Output path, label count, tile counts, fn calls and seconds per stage.

        Raises
        ------
        TileFailureError
            If any tile failed; nothing is written to ``write_to`` and the run directory is kept
            so that running the same call again resumes.
    """
    config = RunConfig(
        tile_shape=tile_shape,
        overlap=overlap,
        num_workers=num_workers,
        progress=progress,
        keep_stage=keep_stage,
        sequential_labels=sequential_labels,
        merge_threshold=merge_threshold,
        timeout=timeout,
        max_retries=max_retries,
        overwrite=overwrite,
        channels=channels,
        host=host,
        launcher=launcher,
        use_gpu=use_gpu,
        backend=backend,
        status_page=status_page,
        level=level,
        max_worker_restarts=max_worker_restarts,
        performance_report=performance_report,
        mask=mask if mask is None or isinstance(mask, str) else "array",
    )
    arrays = None if mask is None or isinstance(mask, (str, Path)) else mask
    if isinstance(mask, Path):
        config = replace(config, mask=str(mask))
    return run_config(image, fn, config, write_to, mask=arrays)


tile_process.__doc__ = (tile_process.__doc__ or "").format(
    config=RunConfig.describe([*RunConfig.flags(), "progress"])
)


def run_config(
    image: Any, fn: SegmentFn, config: RunConfig, write_to: str | Path, mask: Any = None
) -> RunResult:
    """:func:`tile_process` with its parameters in a :class:`~blockbuster.config.RunConfig`
    (``mask``: a mask given as an array; ``config.mask`` is then ``"array"``)."""
    with driver.arguments():
        config, client, gpu_budget = driver.check_config(config, fn)
        watchers = observers(config, config.progress)  # before the lease is taken
    # the workers' zygote imports while the input is described and fingerprinted
    with local_zygote(config, engine_for(config.backend, client)) as zygote:
        with driver.arguments():
            run, spec, _, held = driver.prepare(image, fn, config, write_to, gpu_budget, mask)
        if isinstance(held, driver.Finished):
            return driver.finished_result(held, spec)
        if zygote is not None:
            zygote.keep_log = run.logs / "zygote.log"
        try:
            run.write_config(config)
        except BaseException:
            held.release()
            raise
        return driver.execute_run(run, config, client=client, lease=held, observers=watchers)


def resubmit(
    run_dir: str | Path, progress: bool = True, **overrides: Any
) -> RunResult | TasksResult:
    """Run a run directory again (what failed or is missing), with its own configuration
    except ``overrides`` (``num_workers``, ``timeout``, ...): a ``tile_process`` run, or the
    tasks of a ``run_tasks`` one (loaded from the run directory)."""
    from blockbuster.run import driver as run_driver

    run = RunDir(run_dir)
    with driver.arguments():
        if not run.spec_file.exists() and not run.task_names():
            raise FileNotFoundError(
                f"{run.root} is not a blockbuster run directory (no spec.json, no tasks); give "
                "the <write_to>.blockbuster directory of a run, or the run_dir of run_tasks"
            )
        config = replace(run.read_config(), **overrides)
        # the same checks as the first call: the engine (a Dask client for backend='dask'),
        # the addresses, the GPUs
        config, client, _ = driver.check_config(config, None)
    watchers = observers(config, progress)
    if run.spec_file.exists():
        return driver.execute_run(run, config, client=client, observers=watchers)
    return run_driver.run_tasks(run.load_tasks(), run.root, config, watchers)


def run_tasks(
    tasks: Sequence[Task],
    run_dir: str | Path,
    *,
    num_workers: int = C.num_workers,
    backend: str = C.backend,
    timeout: float = C.timeout,
    max_retries: int = C.max_retries,
    max_worker_restarts: int | None = C.max_worker_restarts,
    host: str | None = C.host,
    launcher: str = C.launcher,
    overwrite: bool = C.overwrite,
    progress: bool = C.progress,
    status_page: str | None = C.status_page,
    performance_report: str | None = C.performance_report,
    observers: Sequence[Observer] = (),
) -> TasksResult:
    """Run blockwise tasks, recording each block in ``run_dir``; resume what is not done.

        Parameters
        ----------
        tasks
            :class:`~blockbuster.run.task.Task` objects; those they read from (``upstream``)
            must be among them. A block starts once the upstream blocks it reads are done.
        run_dir
            A folder blockbuster creates (or an empty one) for the tasks, their per-block
            records and logs. Running the same tasks again with it skips every block done.
    {config}
        overwrite
            Start again when ``run_dir`` holds these tasks' run with other code or geometry
            (their records are removed) instead of refusing.
        progress
            A bar (or plain lines) per task while it runs.
        observers
            More callables receiving the run's events (:mod:`blockbuster.run.events`).

        Returns
        -------
        TasksResult
            Per task: blocks done, failed, the first error.

        Raises
        ------
        BlockFailureError
            If blocks failed or could not be verified done (the run directory is kept).
    """
    from blockbuster.run import driver as run_driver
    from blockbuster.ui.live import StatusPageObserver
    from blockbuster.ui.progress import ProgressMonitor

    config = RunConfig(
        num_workers=num_workers,
        backend=backend,
        timeout=timeout,
        max_retries=max_retries,
        max_worker_restarts=max_worker_restarts,
        host=host,
        launcher=launcher,
        overwrite=overwrite,
        progress=progress,
        status_page=status_page,
        performance_report=performance_report,
    )
    watchers: list[Observer] = [*([ProgressMonitor()] if progress else []), *observers]
    if status_page is not None:
        watchers.append(StatusPageObserver(status_page))
    return run_driver.run_tasks(tasks, run_dir, config, watchers)


_RUN_TASKS_PARAMS = ["num_workers", "backend", "timeout", "max_retries", "max_worker_restarts"]
run_tasks.__doc__ = (run_tasks.__doc__ or "").format(
    config=RunConfig.describe([*_RUN_TASKS_PARAMS, "host", "launcher", "performance_report"])
)
