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
import inspect
import json
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blockbuster.pipeline.spec import read_spec
from blockbuster.plugins.catalog import PLUGINS
from blockbuster.ui.text import plain


def load_fn(
    spec: str | None, kwargs: dict[str, Any], plugin: str = "watershed"
) -> Callable[..., Any]:
    """Resolve ``--fn module:function`` (kwargs bound by keyword), or build a plugin (kwargs
    passed to :func:`blockbuster.plugins.watershed_fn` or
    :func:`blockbuster.plugins.cellpose.cellpose_fn`)."""
    if spec is None:
        from blockbuster.plugins.catalog import builder

        build = builder(plugin)
        known = inspect.signature(build).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in known.values()):
            unknown = sorted(set(kwargs) - set(known))
            if unknown:
                raise ValueError(
                    f"--fn-kwargs: the {plugin} plugin takes no {', '.join(unknown)}; its "
                    f"parameters are {', '.join(known)} (see blockbuster plugins {plugin})"
                )
        fn: Callable[..., Any] = build(**kwargs)
        return fn
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"--fn {spec!r} must look like package.module:function or path/to/file.py:function"
        )
    module = _import_fn_module(spec, module_name)
    found = getattr(module, attr, None)
    if found is None:
        raise ValueError(f"--fn {spec!r}: module {module_name!r} has no attribute {attr!r}")
    return functools.partial(found, **kwargs) if kwargs else found


def _import_fn_module(spec: str, module_name: str) -> Any:
    """The module ``--fn`` names: a file path (its folder joins ``sys.path``, as ``python
    file.py`` does) or a module name looked up from the current directory too (as
    ``python -m`` does). The workers get the same ``sys.path`` from the run's spec."""
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        path = Path(module_name).expanduser().absolute()
        if path.suffix != ".py" or not path.is_file():
            raise ValueError(f"--fn {spec!r}: {str(path)!r} is not a Python file")
        folder, module_name = str(path.parent), path.stem
        known = sys.modules.get(module_name)
        if known is not None and Path(getattr(known, "__file__", "") or "") != path:
            raise ValueError(
                f"--fn {spec!r}: a module named {module_name!r} is already imported from "
                f"{getattr(known, '__file__', None)!r}; rename {path.name}"
            )
    else:
        folder = os.getcwd()
    if folder not in sys.path and not (folder == os.getcwd() and "" in sys.path):
        sys.path.insert(0, folder)
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--fn {spec!r}: cannot import {module_name!r} ({e})") from None


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


def _level(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _or_none(word: str) -> Callable[[str], str | None]:
    def parse(text: str) -> str | None:
        return None if text == word else text

    return parse


#: how the command line spells values that are not plain numbers or strings
_PARSE: dict[str, Callable[[str], Any]] = {
    "tile_shape": _ints,
    "overlap": _overlap,
    "level": _level,
    "host": _or_none("auto"),
    "status_page": _or_none("off"),
}
_METAVAR = {"tile_shape": "Z,Y,X", "overlap": "N|Z,Y,X", "status_page": "HOST:PORT"}


def _add_config_flags(
    parser: argparse.ArgumentParser, names: list[str], keep_run_values: bool = False
) -> None:
    """Add the flags of ``names`` with the help, type and default :class:`RunConfig` gives
    them (``keep_run_values``: no defaults, an absent flag keeps the run's value)."""
    from blockbuster.config import RunConfig

    for name in names:
        f = RunConfig.field(name)
        flag, default = f.metadata["flag"], f.default
        help_text = plain(f.metadata["help"])
        if not keep_run_values and default not in (None, (), "") and not isinstance(default, bool):
            help_text += f" (default: {_cli_value(default)})"
        kwargs: dict[str, Any] = {"dest": name, "help": help_text}
        if keep_run_values:
            kwargs["default"] = argparse.SUPPRESS
        elif name == "channels":
            kwargs.update(action="store_const", const=True, default=None)
        elif isinstance(default, bool):
            kwargs.update(action="store_true", default=default)
        else:
            kwargs["default"] = default
        if "action" not in kwargs:
            kind: Any = _PARSE.get(name)
            if kind is None:
                kind = type(default) if isinstance(default, (int, float)) else str
                if name == "max_worker_restarts":
                    kind = int
            kwargs["type"] = kind
            if name in _METAVAR:
                kwargs["metavar"] = _METAVAR[name]
            if name == "backend":
                from blockbuster.config import BACKENDS

                kwargs["choices"] = BACKENDS
        if name == "tile_shape" and not keep_run_values:
            kwargs["required"] = True
            del kwargs["default"]
        parser.add_argument(flag, **kwargs)


def _cli_value(value: Any) -> str:
    """A default as the command line spells it (tuples comma-separated)."""
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


#: the run options ``resubmit`` may change
RESUBMIT = ["num_workers", "timeout", "max_retries", "max_worker_restarts", "launcher", "backend"]


def build_parser() -> argparse.ArgumentParser:
    """The command line; every run parameter's flag, help and default come from
    :class:`blockbuster.config.RunConfig`."""
    from blockbuster.config import RunConfig

    # the module docstring is reST for the API docs; the terminal gets it plain
    parser = argparse.ArgumentParser(prog="blockbuster", description=plain(__doc__ or ""))
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment SRC tile by tile into DST")
    seg.add_argument("src", help="input zarr array or OME-Zarr image group")
    seg.add_argument("dst", help="output label array (.ome.zarr for an OME-Zarr group)")
    seg.add_argument(
        "--fn",
        help="module:function (modules in the current directory included) or "
        "path/to/file.py:function (default: the --plugin)",
    )
    seg.add_argument(
        "--plugin",
        choices=tuple(PLUGINS),
        default="watershed",
        help="built-in fn when --fn is not given; --fn-kwargs configure it, e.g. "
        '\'{"model": "cyto3", "gpu": true, "diameter": 30}\' for cellpose; '
        "blockbuster plugins lists their parameters (default: watershed, thresholded at the "
        "whole image's Otsu threshold)",
    )
    seg.add_argument(
        "--fn-kwargs",
        default="{}",
        help="JSON object of keyword arguments for --fn or the --plugin (default: {})",
    )
    _add_config_flags(seg, list(RunConfig.flags()))
    seg.add_argument("--no-progress", action="store_true", help="no progress bars or lines")

    st = sub.add_parser("status", help="tiles done/failed/pending per task of a run directory")
    st.add_argument("run_dir", help="the <DST>.blockbuster directory of a run")
    st.add_argument("--tracebacks", action="store_true", help="print failed tiles' tracebacks")

    pl = sub.add_parser("plugins", help="the built-in fns (--plugin) and their parameters")
    pl.add_argument("name", nargs="?", choices=tuple(PLUGINS), help="one plugin (default: all)")

    vf = sub.add_parser(
        "verify", help="check staged tiles against the input and their files on disk"
    )
    vf.add_argument("run_dir", help="the <DST>.blockbuster directory of a run")

    rs = sub.add_parser(
        "resubmit",
        help="redo failed or missing tiles, then stitch and relabel; flags given replace the "
        "run's own settings",
    )
    rs.add_argument("run_dir", help="the <DST>.blockbuster directory of a run")
    _add_config_flags(rs, RESUBMIT, keep_run_values=True)
    _add_config_flags(rs, ["status_page"])
    rs.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    return parser


def cli_words(message: str) -> str:
    """A library error message in the command line's words (flags, not parameters).

    >>> cli_words("pass overwrite=True to replace it; num_workers=0 must be positive")
    'pass --overwrite to replace it; --workers 0 must be positive'
    >>> cli_words("status_page must be HOST:PORT, or None for no page")
    '--status-page must be HOST:PORT, or off for no page'
    """
    from blockbuster.config import RunConfig

    flags = {**RunConfig.flags(), "overwrite": "--overwrite", "write_to": "DST", "image": "SRC"}
    switches = {"channels", "overwrite"} | {
        n for n in RunConfig.flags() if isinstance(RunConfig.field(n).default, bool)
    }
    name = r"(?<![-\w]){}"  # a parameter's name, not part of a flag or a longer word
    for param, flag in flags.items():
        if param in switches:
            message = re.sub(name.format(param) + r"=True\b", flag, message)
            message = re.sub(name.format(param) + r"=(False|None)\b", f"no {flag}", message)
        message = re.sub(
            name.format(param) + "=", f"{flag} " if flag.startswith("-") else f"{flag}=", message
        )
        message = re.sub(name.format(param) + r"\b(?!\.)", flag, message)
    # the words the command line takes for None
    for flag, word in (("--status-page", "off"), ("--host", "auto")):
        if flag in message:
            message = re.sub(r"\bNone\b", word, message)
    return message


def _verify(args: argparse.Namespace) -> int:
    from blockbuster.pipeline.verify import damaged_tiles, verify_inputs
    from blockbuster.run.rundir import RunDir

    run = RunDir(args.run_dir)
    plan = read_spec(run).plan
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
    from blockbuster.ui.status import finished_output, run_status

    out = finished_output(Path(args.run_dir))
    if out is not None:
        print(f"finished: the run directory was removed when the run ended; the labels are {out}")
        return 0
    status = run_status(RunDir(args.run_dir))
    print(status.tracebacks() if args.tracebacks else status.format())
    return 1 if any(t.failed for t in status.tasks.values()) else 0


def _resubmit(args: argparse.Namespace) -> int:
    from blockbuster.api import resubmit
    from blockbuster.run.driver import TasksResult
    from blockbuster.run.rundir import RunDir

    run = RunDir(args.run_dir)
    if not run.spec_file.exists() and not run.task_names():
        raise FileNotFoundError(
            f"{run.root} is not a blockbuster run directory (no spec.json, no tasks)"
        )
    overrides = {name: getattr(args, name) for name in RESUBMIT if hasattr(args, name)}
    result = resubmit(
        run.root, progress=not args.no_progress, status_page=args.status_page, **overrides
    )
    if isinstance(result, TasksResult):
        print(result.summary())
    else:
        print(result.summary(table=args.no_progress))  # with progress, stderr has the table
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from blockbuster.api import run_config
    from blockbuster.run.driver import BlockFailureError
    from blockbuster.run.lease import LeaseHeldError
    from blockbuster.run.rundir import RunDirError

    try:
        if args.command == "status":
            return _status(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "resubmit":
            return _resubmit(args)
        if args.command == "plugins":
            from blockbuster.plugins.catalog import describe

            print("\n\n".join(describe(n) for n in ([args.name] if args.name else PLUGINS)))
            return 0
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
        from blockbuster.config import RunConfig

        values = {name: getattr(args, name) for name in RunConfig.flags()}
        config = RunConfig(**values, progress=not args.no_progress)
        result = run_config(args.src, fn, config, args.dst)
    except BlockFailureError as e:
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
