"""The ``blockbuster`` command line.

``blockbuster segment SRC DST`` segments a zarr image with the built-in watershed or with any
importable ``module:function``; ``blockbuster status RUN_DIR`` shows what a run has done and
what failed; ``blockbuster resubmit RUN_DIR`` redoes only failed or missing tiles, then stitches
and relabels; ``blockbuster verify RUN_DIR`` checks a run's staged tiles against its input.
Exit codes: 0 done, 1 tiles failed (or, for verify, found wrong), 2 bad arguments or a run
that cannot be used as it is (another driver holds it, a damaged file), 3 an internal error
(its traceback is printed).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import re
import sys
import traceback
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
    seg.add_argument(
        "--max-worker-restarts",
        type=int,
        default=None,
        help="worker deaths per task daisy restarts before giving it up (default: scales "
        "with the run, max(10, 4 x workers, blocks / 10))",
    )
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

    vf = sub.add_parser(
        "verify", help="check staged tiles against the input and their files on disk"
    )
    vf.add_argument("run_dir", help="the <DST>.blockbuster directory of a run")

    rs = sub.add_parser("resubmit", help="redo failed or missing tiles, then stitch and relabel")
    rs.add_argument("run_dir", help="the <DST>.blockbuster directory of a run")
    rs.add_argument("--workers", type=int, help="override the run's number of workers")
    rs.add_argument("--timeout", type=float, help="override the run's block timeout")
    rs.add_argument("--max-retries", type=int, help="override the run's retries")
    rs.add_argument("--launcher", help="override the run's launcher")
    rs.add_argument("--max-worker-restarts", type=int, help="override the restart cap")
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


#: ``tile_process`` parameters as the command line spells them
FLAGS = {
    "tile_shape": "--tile",
    "overlap": "--overlap",
    "num_workers": "--workers",
    "merge_threshold": "--merge-threshold",
    "timeout": "--timeout",
    "max_retries": "--max-retries",
    "max_worker_restarts": "--max-worker-restarts",
    "sequential_labels": "--sequential",
    "keep_stage": "--keep-stage",
    "channels": "--channels",
    "host": "--host",
    "launcher": "--launcher",
    "status_page": "--status-page",
    "level": "--level",
    "write_to": "DST",
    "image": "SRC",
}


def cli_words(message: str) -> str:
    """A library error message in the command line's words (flags, not parameters)."""
    message = message.replace("overwrite=True", "--overwrite")
    for param, flag in FLAGS.items():
        message = re.sub(
            rf"\b{param}=", f"{flag} " if flag.startswith("-") else f"{flag}=", message
        )
        message = re.sub(rf"\b{param}\b(?!\.)", flag, message)
    return message


def _verify(args: argparse.Namespace) -> int:
    from blockbuster.pipeline.verify import damaged_tiles, verify_inputs
    from blockbuster.run.rundir import RunDir

    run = RunDir(args.run_dir)
    plan = run.read_spec().plan
    damaged = damaged_tiles(run, plan)
    inputs = verify_inputs(run)
    print(f"run dir   {run.root.absolute()}")
    print(f"checked   {inputs.checked} staged tile(s) against the input")
    ok = True
    if inputs.changed:
        ok = False
        shown = ", ".join(map(str, inputs.changed[:20]))
        print(f"{len(inputs.changed)} tile(s) read other input than fn was given: {shown}")
        print("the input changed since these tiles ran: start again with --overwrite")
    if damaged:
        ok = False
        for tile, why in sorted(damaged.items())[:20]:
            print(f"tile {tile}: {why} (resubmit segments it again)")
    if inputs.unrecorded:
        print(f"{len(inputs.unrecorded)} tile(s) have no input digest (staged by an older release)")
    if ok:
        print("every staged tile matches its input and its files are whole")
    return 0 if ok else 1


def _status(args: argparse.Namespace) -> int:
    from blockbuster.run.rundir import RunDir
    from blockbuster.ui.status import run_status

    status = run_status(RunDir(args.run_dir))
    print(status.tracebacks() if args.tracebacks else status.format())
    return 1 if any(t.failed for t in status.tasks.values()) else 0


def _resubmit(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from blockbuster.pipeline.driver import execute_run
    from blockbuster.run.rundir import RunDir

    run = RunDir(args.run_dir)
    if not run.spec_file.exists():
        raise FileNotFoundError(f"{run.root} is not a blockbuster run directory (no spec.json)")
    options = run.read_options()
    overrides = {
        "num_workers": args.workers,
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "launcher": args.launcher,
        "max_worker_restarts": args.max_worker_restarts,
    }
    options = replace(options, status_page=_page(args.status_page))
    options = replace(options, **{k: v for k, v in overrides.items() if v is not None})
    from blockbuster.api import observers

    result = execute_run(run, options, observers=observers(run, options, not args.no_progress))
    print(result.summary(table=args.no_progress))  # with progress, stderr has the table
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from blockbuster.api import tile_process
    from blockbuster.pipeline.driver import TileFailureError
    from blockbuster.run.lease import LeaseHeldError
    from blockbuster.run.rundir import RunDirError

    try:
        if args.command == "status":
            return _status(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "resubmit":
            return _resubmit(args)
        try:
            kwargs = json.loads(args.fn_kwargs)
        except ValueError as e:
            raise _argument_error(ValueError(f"--fn-kwargs is not JSON ({e})")) from None
        if not isinstance(kwargs, dict):
            raise _argument_error(ValueError("--fn-kwargs must be a JSON object"))
        try:
            fn = load_fn(args.fn, kwargs, args.plugin)
        except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
            raise _argument_error(e) from None
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
            max_worker_restarts=args.max_worker_restarts,
        )
    except TileFailureError as e:
        print(e.result.summary(), file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (LeaseHeldError, RunDirError) as e:
        print(f"error: {cli_words(str(e))}", file=sys.stderr)
        return 2
    except Exception as e:
        if getattr(e, "bad_argument", False) or (
            args.command != "segment" and isinstance(e, FileNotFoundError)
        ):
            print(f"error: {cli_words(str(e))}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(
            f"error: internal error ({e.__class__.__name__}: {e}); the run directory, if any, "
            "is kept: run the same command again to resume, and report this with the traceback",
            file=sys.stderr,
        )
        return 3
    print(result.summary(table=args.no_progress))  # with progress, stderr has the table
    return 0


def _argument_error(e: Exception) -> Exception:
    e.bad_argument = True  # type: ignore[attr-defined]
    return e


if __name__ == "__main__":
    sys.exit(main())
