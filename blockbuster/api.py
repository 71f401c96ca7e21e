"""The public entry points, and the observers (progress, status page, reports) they attach.

The drivers (:mod:`blockbuster.pipeline.driver`, :mod:`blockbuster.run.driver`) emit events
and import no UI module; this module is where a call's ``progress`` and ``status_page`` turn
into observers of its run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blockbuster.pipeline import driver
from blockbuster.pipeline.driver import RunResult
from blockbuster.pipeline.segment import SegmentFn
from blockbuster.run.events import Observer
from blockbuster.run.launch import LOCAL
from blockbuster.run.rundir import RunDir, RunOptions

DEFAULT_TIMEOUT = 3600.0


def observers(run: RunDir, options: RunOptions, progress: bool) -> list[Observer]:
    """What watches a run: the summary table and block map always, the live status page
    where ``options.status_page`` asks for one, progress bars or lines with ``progress``."""
    from blockbuster.ui.live import StatusPageObserver
    from blockbuster.ui.progress import ProgressMonitor
    from blockbuster.ui.report import Reporter

    out: list[Observer] = []
    if progress:
        out.append(ProgressMonitor())
    if options.status_page is not None:
        out.append(StatusPageObserver(options.status_page))
    out.append(Reporter(print_table=progress))
    return out


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
    with driver._arguments():
        options, client, gpu_budget = driver._check_run_arguments(
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
        run, spec, _, held = driver._prepare(
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
    if isinstance(held, driver._Finished):
        return driver._finished_result(held, spec)
    try:
        run.write_options(options)
    except BaseException:
        held.release()
        raise
    return driver.execute_run(
        run, options, client=client, lease=held, observers=observers(run, options, progress)
    )
