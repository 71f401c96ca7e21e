"""The ``blockbuster`` command line.

``blockbuster segment SRC DST`` segments a zarr image with the built-in watershed or with any
importable ``module:function``; it exits 1 when any tile failed, after printing which.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any


def load_fn(spec: str | None, kwargs: dict[str, Any]) -> Callable[..., Any]:
    """Resolve ``--fn module:function`` (kwargs bound by keyword), or the default watershed
    (kwargs passed to :func:`blockbuster.plugins.watershed_fn`)."""
    if spec is None:
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
    seg.add_argument("--fn", help="package.module:function (default: built-in watershed)")
    seg.add_argument("--fn-kwargs", default="{}", help="JSON object of keyword arguments")
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
    seg.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from blockbuster.driver import TileFailureError, tile_process

    try:
        kwargs = json.loads(args.fn_kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError("--fn-kwargs must be a JSON object")
        fn = load_fn(args.fn, kwargs)
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
        )
    except TileFailureError as e:
        print(e.result.summary(), file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
