"""The one configuration of a run: every parameter, its default and its documentation.

:class:`RunConfig` is what ``tile_process``'s keywords fill (their defaults are read from it),
what the command line is built from (flags, help texts and defaults), what the run directory
keeps (``config.json``, read back by ``blockbuster resubmit``) and what the engines and the
workers' launchers read. A default exists here and nowhere else.

It is a frozen dataclass rather than a pydantic model: every bad value must raise a one-line
``TypeError`` or ``ValueError`` that names the parameter (the CLI rewrites it to the flag,
see :func:`blockbuster.cli.cli_words`) and the fix, of the type users and tests expect, and
before anything is written; pydantic would wrap those in its own multi-line
``ValidationError``. The checks are plain functions in :meth:`RunConfig.validate`, and the
JSON form is ``dataclasses.asdict``.

>>> RunConfig(num_workers=4).validate().num_workers
4
>>> RunConfig(num_workers=0).validate()
Traceback (most recent call last):
...
ValueError: num_workers=0 must be a positive number
>>> RunConfig.num_workers  # the default tile_process uses
1
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

#: ``backend`` values: the active Dask client or daisy, daisy's workers, a Dask client, or
#: every block in this process
BACKENDS = ("auto", "daisy", "dask", "serial")


def _doc(
    default: Any,
    help: str,  # noqa: A002 (argparse's word)
    *,
    flag: str | None = None,
    computes: bool = False,
    cli: dict[str, Any] | None = None,
) -> Any:
    """A field with its documentation (``help``), its command-line ``flag`` (None: no flag)
    and whether it changes what the run computes (``computes``: kept in the run's spec, so a
    resume must not change it)."""
    meta = {"help": help, "flag": flag, "computes": computes, "cli": cli or {}}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    """Every parameter of a run, with its default; see each field's ``help``
    (:meth:`describe`) or ``tile_process``'s docstring, which is made from them."""

    # -- what the run computes (a resume must keep these) ------------------------------------
    tile_shape: tuple[int, ...] = _doc(
        (),
        "Tile size in voxels per spatial axis (clipped to the image), e.g. (64, 256, 256).",
        flag="--tile",
        computes=True,
    )
    overlap: int | tuple[int, ...] | None = _doc(
        None,
        "Halo in voxels per side. An int applies to every axis whose tile is longer than one "
        "voxel ((1, 2048, 2048) with 20 means (0, 20, 20)); a tuple sets each axis. None: "
        "what the fn suggests (fn.suggest_overlap(); cellpose_fn: from its diameter), else 0.",
        flag="--overlap",
        computes=True,
    )
    merge_threshold: float = _doc(
        0.5,
        "Fraction in [0, 1): two labels touching across a tile face merge when their overlap "
        "on the face is at least this fraction of the smaller one (see blockbuster.pipeline."
        "stitch); 0 merges any shared voxel (exact for connected-component fns).",
        flag="--merge-threshold",
        computes=True,
    )
    sequential_labels: bool = _doc(
        False, "Final labels are 1..N without gaps.", flag="--sequential", computes=True
    )
    channels: bool | None = _doc(
        None,
        "Whether the image has one leading channel axis (passed to fn whole). None accepts one "
        "only where the metadata marks it (funlib axis name ending in '^', OME axis type "
        "'channel').",
        flag="--channels",
        computes=True,
    )
    level: int | str = _doc(
        0,
        "Resolution level of an OME-Zarr input: an index into its multiscale datasets "
        "(negative counts from the coarsest) or a dataset path; 0 is full resolution.",
        flag="--level",
        computes=True,
    )
    mask: str | None = _doc(
        None,
        "Foreground mask: tiles whose halo-grown box holds no foreground are never read nor "
        "passed to fn (their output is background; shown as skipped). 'auto' finds the "
        "foreground in the image statistics' coarse copy; or the path of a zarr array or "
        "OME-Zarr image at any resolution covering the image (tile_process also takes a numpy "
        "or zarr array); None segments every tile.",
        flag="--mask",
        computes=True,
    )
    # -- how it runs (may change between resumes) --------------------------------------------
    num_workers: int = _doc(1, "Worker processes per task.", flag="--workers")
    timeout: float = _doc(
        3600.0,
        "Seconds a block may run before its worker is killed and the block retried (daisy "
        "and Dask alike; on Dask the retries of a killed worker's block are Dask's "
        "distributed.scheduler.allowed-failures).",
        flag="--timeout",
    )
    max_retries: int = _doc(
        2, "Times a failed block is retried before it counts as failed.", flag="--max-retries"
    )
    max_worker_restarts: int | None = _doc(
        None,
        "Worker processes daisy may start again per task after one died (OOM, preemption, a "
        "job's time limit, SIGKILL) before it gives the task up; None scales with the run: "
        "max(10, 4 x num_workers, blocks / 10).",
        flag="--max-worker-restarts",
    )
    host: str | None = _doc(
        "127.0.0.1",
        "Address the task servers listen on and give to workers. 127.0.0.1 keeps them "
        "private to this machine; for workers on other nodes give this node's name or address "
        "on the cluster network, or None (CLI: auto) to let daisy choose (it then listens on "
        "every interface). The addresses are printed and written to "
        "<run_dir>/server/<task>.json.",
        flag="--host",
    )
    launcher: str = _doc(
        "local",
        "'local' starts each worker here as python -m blockbuster.worker; the path of an "
        "executable launch script (templates in workers/: slurm.sh, lsf.sh, local.sh) starts "
        "each through it, e.g. as a SLURM job.",
        flag="--launcher",
    )
    backend: str = _doc(
        "auto",
        "'auto': the active Dask distributed client if there is one, else daisy's workers; "
        "'daisy', 'dask', or 'serial' (every block in this process, one after the other: "
        "small images, debugging an fn; no timeout applies there).",
        flag="--backend",
    )
    use_gpu: bool = _doc(
        False,
        "Size tiles to the GPU: tile_shape becomes the largest tile no bigger than asked whose "
        "working set (tile plus halo times fn.bytes_per_voxel, 400 if the fn does not say) "
        "fits in half the free memory of the smallest GPU (nvidia-ml-py; 8 GiB assumed, with "
        "a warning, without it). Each worker then uses one thread and one GPU "
        "(CUDA_VISIBLE_DEVICES cycles over the GPUs); give num_workers = GPUs.",
        flag="--gpu",
    )
    status_page: str | None = _doc(
        "127.0.0.1:0",
        "HOST:PORT of a live status page the driver serves while it runs (counts per stage "
        "and the block map, refreshed every few seconds); its URL is printed at the start. "
        "127.0.0.1:0 is private to this machine on any free port; None (CLI: off) serves none.",
        flag="--status-page",
    )
    performance_report: str | None = _doc(
        None,
        "On Dask: write Dask's performance report of the whole run (task stream, worker "
        "profiles, bandwidth) to this HTML file, and a plot of the cluster's memory over time "
        "per stage beside the block map; None writes neither. Each stage's tasks also run in "
        "the span ('blockbuster', <stage>) on the dashboard.",
        flag="--performance-report",
    )
    progress: bool = _doc(
        False,
        "Show progress per stage: tqdm bars (tiles done/total, rate, ETA) on a terminal, else "
        "one plain line per stage every 10 s and a final line each; then the summary table.",
    )
    keep_stage: bool = _doc(
        False,
        "Keep the run directory (staged tile labels, equivalence table, logs) after success.",
        flag="--keep-stage",
    )
    overwrite: bool = _doc(
        False,
        "Replace an existing output and run directory (blockbuster's own only) instead of "
        "refusing.",
        flag="--overwrite",
    )
    # -- filled in by the driver -------------------------------------------------------------
    gpus: tuple[str, ...] | None = _doc(
        None,
        "Set by the driver: None for CPU runs; with use_gpu, the CUDA_VISIBLE_DEVICES values "
        "segment workers are spread over (empty when unknown).",
    )

    # -- validation --------------------------------------------------------------------------

    def validate(self) -> RunConfig:
        """Check every field; return the config with numbers normalised and the launcher as
        an absolute path.

        Raises
        ------
        TypeError, ValueError
            One line naming the parameter and what it must be.
        """
        _check_tiles(self.tile_shape, self.overlap)
        if self.mask is not None and not isinstance(self.mask, str):
            raise TypeError(
                f"mask={self.mask!r} must be 'auto', a path or None (tile_process also takes an "
                "array)"
            )
        _check_fraction("merge_threshold", self.merge_threshold)
        for name in ("sequential_labels", "overwrite", "progress", "keep_stage", "use_gpu"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name}={value!r} must be True or False")
        if self.channels is not None and not isinstance(self.channels, (bool, np.bool_)):
            raise TypeError(f"channels={self.channels!r} must be True, False or None")
        if self.timeout is None:
            raise ValueError(
                "timeout=None: give the seconds a block may run before its worker is killed "
                f"(default {RunConfig.default('timeout')}); a run never waits on a block forever"
            )
        for name in ("num_workers", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive number")
        if int(self.num_workers) != self.num_workers:
            raise ValueError(f"num_workers={self.num_workers!r} must be a positive integer")
        if not math.isfinite(float(self.timeout)):
            raise ValueError(f"timeout={self.timeout!r} must be a finite number of seconds")
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"max_retries={retries!r} must be an integer >= 0")
        restarts = self.max_worker_restarts
        if restarts is not None and (
            isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0
        ):
            raise ValueError(
                f"max_worker_restarts={restarts!r} must be an integer >= 0, or None for the "
                "default (scales with the run)"
            )
        if self.status_page is not None:
            host, sep, port = str(self.status_page).rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                raise ValueError(
                    f"status_page={self.status_page!r} must look like HOST:PORT, e.g. "
                    "'127.0.0.1:8787' (port 0 takes any free port), or be None for no page"
                )
        if self.performance_report is not None:
            report = Path(str(self.performance_report)).expanduser()
            if report.suffix.lower() not in (".html", ".htm") or not report.parent.is_dir():
                raise ValueError(
                    f"performance_report={self.performance_report!r} must be an .html file in "
                    "an existing folder, or None"
                )
        if self.host is not None and (not isinstance(self.host, str) or not self.host):
            raise ValueError(f"host={self.host!r} must be a host name or address, or None")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"backend={self.backend!r} must be one of {', '.join(map(repr, BACKENDS))}"
            )
        launcher = self.launcher
        if launcher != "local":
            path = Path(launcher).absolute()
            if not path.is_file() or not os.access(path, os.X_OK):
                raise ValueError(
                    f"launcher={launcher!r} must be 'local' or an executable launch script "
                    "(see workers/: local.sh, slurm.sh, lsf.sh)"
                )
            launcher = str(path)
        return replace(self, num_workers=int(self.num_workers), launcher=launcher)

    def check_addresses(self, servers: bool = True) -> None:
        """Check that the task servers' ``host`` (unless ``servers=False``: Dask runs) and the
        status page's address can be bound here, before anything is written (a bad one would
        orphan every block, or fail the run after its directory is made).

        Raises
        ------
        ValueError
            Naming the parameter, when an address does not resolve or cannot be bound.
        """
        if servers and self.host is not None:
            _try_bind("host", self.host, 0, "the name or address of this machine")
        if self.status_page is not None:
            host, _, port = self.status_page.rpartition(":")
            _try_bind("status_page", host, int(port), "a free HOST:PORT of this machine")

    def worker_restarts(self, blocks: int) -> int:
        """daisy's cap on worker restarts for a task of ``blocks`` blocks.

        The default grows with the run, so a long cluster run survives many worker deaths
        (preemption, a job's time limit, OOM), while a task whose every worker dies at once
        still stops: ``max(10, 4 * num_workers, blocks // 10)``.
        """
        if self.max_worker_restarts is not None:
            return self.max_worker_restarts
        return max(10, 4 * self.num_workers, blocks // 10)

    # -- serialisation and documentation -------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """The config ``data`` holds (unknown keys refused, lists back to tuples)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown parameters {unknown}")
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**values)

    @classmethod
    def field(cls, name: str) -> Field[Any]:
        return next(f for f in fields(cls) if f.name == name)

    @classmethod
    def default(cls, name: str) -> Any:
        f = cls.field(name)
        return None if f.default is MISSING else f.default

    @classmethod
    def describe(cls, names: list[str] | None = None, indent: str = "    ") -> str:
        """The numpydoc ``Parameters`` entries of ``names`` (default: all documented ones)."""
        import textwrap

        out = []
        for f in fields(cls):
            if names is not None and f.name not in names:
                continue
            body = textwrap.fill(
                f"{f.metadata['help']} Default: {f.default!r}.",
                width=92,
                initial_indent=indent + "    ",
                subsequent_indent=indent + "    ",
            )
            out.append(f"{indent}{f.name}\n{body}")
        return "\n".join(out)

    @classmethod
    def flags(cls) -> dict[str, str]:
        """Parameter -> command-line flag, for the parameters the CLI has."""
        return {f.name: f.metadata["flag"] for f in fields(cls) if f.metadata.get("flag")}


def _check_tiles(tile_shape: Any, overlap: Any) -> None:
    """Type checks of ``tile_shape`` and ``overlap`` (their values are checked against the
    image in :mod:`blockbuster.pipeline.plan`)."""
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
    if overlap is None:
        return
    values = [overlap] if isinstance(overlap, (int, np.integer)) else overlap
    if isinstance(overlap, (str, bytes, bool)) or not hasattr(values, "__iter__"):
        raise TypeError(f"overlap={overlap!r} must be an int or a tuple of ints (voxels per side)")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"overlap={overlap!r} must be an int or a tuple of ints")


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}={value!r} must be a number in [0, 1)")
    if not (0 <= float(value) < 1):
        raise ValueError(f"{name}={value} must be in [0, 1)")


def _try_bind(param: str, host: str, port: int, what: str) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise ValueError(f"{param}={host!r} does not resolve ({e}); give {what}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        try:
            sock.bind(address)
        except OSError as e:
            value = f"{host}:{port}" if param == "status_page" else host
            raise ValueError(
                f"{param}={value!r} cannot be bound here ({e.strerror or e}); give {what}"
            ) from None
