"""The run directory: everything a worker (local or on another node) needs to do its part.

Layout::

    <write_to>.blockbuster/
        spec.json             parameters, input description, tile plan, the driver's sys.path
        options.json          how to run: workers, timeout, retries, server host, launcher
        server/<task>.json    the address of each task's daisy server (for workers elsewhere)
        fn.json               the fn's import path and keyword arguments, where it has one
        fn.pkl                the fn, cloudpickled (by value for __main__/notebook functions)
        stage.zarr            staged per-tile labels (core + halo), one chunk per tile
        faces/                each labelled tile's side of its faces, for stitch (faces.py)
        equivalences.sqlite   the equivalence table (written by the driver only)
        records/<task>/       per-block record files written by workers (see records.py)
        logs/                 per-worker logs written by daisy
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cloudpickle

from blockbuster.geometry import TilePlan
from blockbuster.io import ImageSource

SPEC_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    """The parameters of one run, as written to ``spec.json``."""

    source: ImageSource
    plan: TilePlan
    output_store: str
    output_path: str
    merge_threshold: float
    sequential_labels: bool
    sys_path: list[str] = field(default_factory=list)
    version: int = SPEC_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source.to_json(),
            "plan": asdict(self.plan),
            "output_store": self.output_store,
            "output_path": self.output_path,
            "merge_threshold": self.merge_threshold,
            "sequential_labels": self.sequential_labels,
            "sys_path": self.sys_path,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSpec:
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data["plan"].items()
        }
        plan = TilePlan(**fields)
        return cls(
            source=ImageSource.from_json(data["source"]),
            plan=plan,
            output_store=data["output_store"],
            output_path=data["output_path"],
            merge_threshold=float(data["merge_threshold"]),
            sequential_labels=bool(data["sequential_labels"]),
            sys_path=list(data["sys_path"]),
            version=int(data["version"]),
        )

    def same_work(self, other: RunSpec) -> bool:
        """True when ``other`` would stage and stitch exactly the same tiles."""
        a, b = self.to_json(), other.to_json()
        for key in ("sys_path", "sequential_labels"):
            a.pop(key)
            b.pop(key)
        return a == b


@dataclass(frozen=True)
class RunOptions:
    """How a run is executed (not what it computes): may change between resumes.

    Parameters are those of :func:`blockbuster.tile_process`.
    """

    num_workers: int = 1
    timeout: float = 3600.0
    max_retries: int = 2
    keep_stage: bool = False
    host: str | None = "127.0.0.1"
    launcher: str = "local"
    #: GPU workers: None for CPU runs; the ``CUDA_VISIBLE_DEVICES`` values to spread segment
    #: workers over (empty when unknown: one thread per worker, devices left as they are)
    gpus: tuple[str, ...] | None = None
    #: ``HOST:PORT`` of the live status page (port 0: any free one), or None for no page
    status_page: str | None = "127.0.0.1:0"

    def validate(self) -> RunOptions:
        """Check every field; return ``self`` with the launcher as an absolute path."""
        for name in ("num_workers", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive number")
        if int(self.num_workers) != self.num_workers:
            raise ValueError(f"num_workers={self.num_workers!r} must be a positive integer")
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"max_retries={retries!r} must be an integer >= 0")
        if self.status_page is not None:
            host, sep, port = str(self.status_page).rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                raise ValueError(
                    f"status_page={self.status_page!r} must look like HOST:PORT, e.g. "
                    "'127.0.0.1:8787' (port 0 takes any free port), or be None for no page"
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


class RunDir:
    """Paths inside one run directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def for_output(cls, write_to: Path | str) -> RunDir:
        out = Path(write_to)
        return cls(out.with_name(out.name + ".blockbuster"))

    @property
    def spec_file(self) -> Path:
        return self.root / "spec.json"

    @property
    def fn_file(self) -> Path:
        return self.root / "fn.pkl"

    @property
    def stage(self) -> Path:
        return self.root / "stage.zarr"

    @property
    def faces(self) -> Path:
        return self.root / "faces"

    @property
    def table(self) -> Path:
        return self.root / "equivalences.sqlite"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def records(self, task: str) -> Path:
        return self.root / "records" / task

    def write_spec(self, spec: RunSpec) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.spec_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec.to_json(), indent=2))
        tmp.replace(self.spec_file)

    @property
    def options_file(self) -> Path:
        return self.root / "options.json"

    def write_options(self, options: RunOptions) -> None:
        tmp = self.options_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(options), indent=2))
        tmp.replace(self.options_file)

    def read_options(self) -> RunOptions:
        if not self.options_file.exists():
            return RunOptions()
        data = json.loads(self.options_file.read_text())
        if data.get("gpus") is not None:
            data["gpus"] = tuple(str(g) for g in data["gpus"])
        return RunOptions(**data)

    def read_spec(self) -> RunSpec:
        return RunSpec.from_json(json.loads(self.spec_file.read_text()))

    @property
    def fn_ref_file(self) -> Path:
        return self.root / "fn.json"

    def write_fn(self, payload: bytes, ref: dict[str, Any] | None) -> None:
        """Store the fn: always cloudpickled, plus its import path where it has one."""
        tmp = self.fn_file.with_suffix(".tmp")
        tmp.write_bytes(payload)
        tmp.replace(self.fn_file)
        if ref is None:
            self.fn_ref_file.unlink(missing_ok=True)
        else:
            tmp = self.fn_ref_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(ref, indent=2))
            tmp.replace(self.fn_ref_file)

    def load_fn(self) -> Any:
        """Load the fn by import path when it has one, else unpickle it."""
        if self.fn_ref_file.exists():
            return load_fn_ref(json.loads(self.fn_ref_file.read_text()))
        return cloudpickle.loads(self.fn_file.read_bytes())


def describe_fn(fn: Any) -> dict[str, Any] | None:
    """``{"ref": "package.module:function", "kwargs": {...}}`` for an importable fn.

    A plain module-level function, or a ``functools.partial`` of one with JSON-serialisable
    keyword arguments and no positional ones, gets a reference. Anything else (lambdas,
    closures, ``__main__`` functions, callable objects) returns None and is loaded from the
    cloudpickle alone.
    """
    kwargs: dict[str, Any] = {}
    target = fn
    if isinstance(fn, functools.partial):
        if fn.args:
            return None
        kwargs, target = dict(fn.keywords), fn.func
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname or "." in qualname:
        return None
    try:
        if getattr(importlib.import_module(module), qualname, None) is not target:
            return None
        json.dumps(kwargs)
    except (ImportError, TypeError, ValueError):
        return None
    return {"ref": f"{module}:{qualname}", "kwargs": kwargs}


def load_fn_ref(ref: dict[str, Any]) -> Any:
    """The fn a :func:`describe_fn` reference names."""
    module, _, name = ref["ref"].partition(":")
    fn = getattr(importlib.import_module(module), name)
    return functools.partial(fn, **ref["kwargs"]) if ref["kwargs"] else fn


def restore_sys_path(spec: RunSpec) -> None:
    """Make the driver's import paths visible in a worker, so fns pickled by reference load."""
    for p in reversed(spec.sys_path):
        if p not in sys.path:
            sys.path.insert(0, p)
