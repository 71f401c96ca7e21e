"""The ``blockbuster`` command line.

``blockbuster segment SRC DST`` segments a zarr image with the built-in watershed or with any
importable ``module:function``; ``blockbuster status RUN_DIR`` shows what a run has done and
what failed; ``blockbuster resubmit RUN_DIR`` redoes only failed or missing tiles, then stitches
and relabels. Exit codes: 0 done, 1 tiles failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any


def load_fn(
    spec: str | None, kwargs: dict[str, Any], plugin: str = "watershed"
) -> Callable[..., Any]:
    """Resolve ``--fn module:function`` (kwargs bound by keyword), or build a plugin (kwargs
    passed to :func:`blockbuster.plugins.watershed_fn` or
    :func:`blockbuster.plugins.cellpose.cellpose_fn`)."""
    if spec is None:
        if plugin == "cellpose":
            from blockbuster.plugins.cellpose import cellpose_fn

            return cellpose_fn(**kwargs)
        from blockbuster.plugins import watershed_fn

        return watershed_fn(**kwargs)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--fn {spec!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--fn {spec!r}: cannot import {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"--fn {spec!r}: module {module_name!r} has no attribute {attr!r}")
    return functools.partial(fn, **kwargs) if kwargs else fn


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints") from (
            None
        )


def _overlap(text: str) -> int | tuple[int, ...]:
    values = _ints(text)
    return values[0] if len(values) == 1 else values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blockbuster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment SRC tile by tile into DST")
    seg.add_argument("src", help="input zarr array or OME-Zarr image group")
    seg.add_argument("dst", help="output label array (.ome.zarr for an OME-Zarr group)")
    seg.add_argument(
        "--level", default="0", help="resolution level of an OME-Zarr input: index or path"
    )
    seg.add_argument("--fn", help="package.module:function (default: the --plugin)")
    seg.add_argument(
        "--plugin",
        choices=("watershed", "cellpose"),
        default="watershed",
        help="built-in fn when --fn is not given; --fn-kwargs configure it, e.g. "
        '\'{"model": "cyto3", "gpu": true, "diameter": 30}\' for cellpose',
    )
    seg.add_argument("--fn-kwargs", default="{}", help="JSON object of keyword arguments")
    seg.add_argument("--gpu", action="store_true", help="size tiles to the free GPU memory")
    seg.add_argument("--tile", type=_ints, required=True, help="tile shape, e.g. 64,256,256")
    seg.add_argument("--overlap", type=_overlap, default=0, help="halo voxels: int or per axis")
    seg.add_argument("--workers", type=int, default=1)
    seg.add_argument("--merge-threshold", type=float, default=0.5)
    seg.add_argument("--timeout", type=float, default=3600.0, help="seconds per block")
    seg.add_argument("--max-retries", type=int, default=2)
    seg.add_argument("--channels", action="store_true", help="first axis holds channels")
    seg.add_argument("--sequential", action="store_true", help="final labels 1..N, no gaps")
    seg.add_argument("--keep-stage", action="store_true")
    seg.add_argument("--overwrite", action="store_true")
    seg.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the task servers give workers; 'auto' lets daisy choose "
        "(needed for workers on other nodes)",
    )
    seg.add_argument(
        "--launcher", default="local", help="'local' or a launch script such as workers/slurm.sh"
    )
    seg.add_argument("--no-progress", action="store_true")
    seg.add_argument(
        "--status-page",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the live status page listens while the run goes (default 127.0.0.1:0, any "
        "free port on this machine; its URL is printed); 'off' for none",
    )

    st = sub.add_parser("status", help="tiles done/failed/pending per task of a run directory")
    st.add_argument("run_dir", help="the <DST>.blockbuster directory of a run")
    st.add_argument("--tracebacks", action="store_true", help="print failed tiles' tracebacks")

    rs = sub.add_parser("resubmit", help="redo failed or missing tiles, then stitch and relabel")
    rs.add_argument("run_dir", help="the <DST>.blockbuster directory of a run")
    rs.add_argument("--workers", type=int, help="override the run's number of workers")
    rs.add_argument("--timeout", type=float, help="override the run's block timeout")
    rs.add_argument("--max-retries", type=int, help="override the run's retries")
    rs.add_argument("--launcher", help="override the run's launcher")
    rs.add_argument("--no-progress", action="store_true")
    rs.add_argument(
        "--status-page",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the live status page listens while the run goes (default 127.0.0.1:0, any "
        "free port on this machine; its URL is printed); 'off' for none",
    )
    return parser


def _page(value: str) -> str | None:
    return None if value == "off" else value


def _status(args: argparse.Namespace) -> int:
    from blockbuster.rundir import RunDir
    from blockbuster.status import run_status

    status = run_status(RunDir(args.run_dir))
    print(status.tracebacks() if args.tracebacks else status.format())
    return 1 if any(t.failed for t in status.tasks.values()) else 0


def _resubmit(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from blockbuster.driver import execute_run
    from blockbuster.rundir import RunDir

    run = RunDir(args.run_dir)
    if not run.spec_file.exists():
        raise FileNotFoundError(f"{run.root} is not a blockbuster run directory (no spec.json)")
    options = run.read_options()
    overrides = {
        "num_workers": args.workers,
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "launcher": args.launcher,
    }
    options = replace(options, status_page=_page(args.status_page))
    options = replace(options, **{k: v for k, v in overrides.items() if v is not None})
    result = execute_run(run, options, progress=not args.no_progress)
    print(result.summary(table=args.no_progress))  # with progress, stderr has the table
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from blockbuster.driver import TileFailureError, tile_process

    try:
        if args.command == "status":
            return _status(args)
        if args.command == "resubmit":
            return _resubmit(args)
        kwargs = json.loads(args.fn_kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError("--fn-kwargs must be a JSON object")
        fn = load_fn(args.fn, kwargs, args.plugin)
        result = tile_process(
            args.src,
            fn,
            args.tile,
            args.overlap,
            write_to=args.dst,
            num_workers=args.workers,
            progress=not args.no_progress,
            keep_stage=args.keep_stage,
            sequential_labels=args.sequential,
            merge_threshold=args.merge_threshold,
            timeout=args.timeout,
            max_retries=args.max_retries,
            overwrite=args.overwrite,
            channels=True if args.channels else None,
            host=None if args.host == "auto" else args.host,
            launcher=args.launcher,
            use_gpu=args.gpu,
            status_page=_page(args.status_page),
            level=int(args.level) if args.level.lstrip("-").isdigit() else args.level,
        )
    except TileFailureError as e:
        print(e.result.summary(), file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.summary(table=args.no_progress))  # with progress, stderr has the table
    return 0


if __name__ == "__main__":
    sys.exit(main())
