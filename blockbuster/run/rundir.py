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
import hashlib
import importlib
import json
import math
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle

from blockbuster.io.sources import ImageSource
from blockbuster.pipeline.plan import TilePlan
from blockbuster.run.records import TaskRecords, write_atomic

if TYPE_CHECKING:
    from blockbuster.run.task import Task

SPEC_VERSION = 2


class RunDirError(ValueError):
    """A run directory that cannot be used as it is (damaged, or not one); the message says
    which file and what to do."""


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
    #: the run's identity, also written into the output's attributes
    run_id: str = ""
    #: see :mod:`blockbuster.run.fingerprint`
    fn_fingerprint: str = ""
    input_fingerprint: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "run_id": self.run_id,
            "fn_fingerprint": self.fn_fingerprint,
            "input_fingerprint": self.input_fingerprint,
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
            run_id=str(data.get("run_id", "")),
            fn_fingerprint=str(data.get("fn_fingerprint", "")),
            input_fingerprint=str(data.get("input_fingerprint", "")),
        )

    def differences(self, other: RunSpec) -> list[str]:
        """What ``other`` would do differently from this run (empty: the same work).

        Items are ``"fn"``, ``"input"`` or ``"parameters"``; sequential labels, the import path
        and the run's identity may differ on a resume.
        """
        a, b = self.to_json(), other.to_json()
        out = []
        if a.pop("fn_fingerprint") != b.pop("fn_fingerprint"):
            out.append("fn")
        if a.pop("input_fingerprint") != b.pop("input_fingerprint"):
            out.append("input")
        for key in ("sys_path", "sequential_labels", "run_id"):
            a.pop(key)
            b.pop(key)
        if a != b:
            out.append("parameters")
        return out


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
    #: daisy's cap on worker restarts per task; None for :meth:`worker_restarts`' default
    max_worker_restarts: int | None = None
    #: ``"daisy"`` (workers) or ``"serial"`` (this process); a Dask client overrides it
    engine: str = "daisy"

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
        if not math.isfinite(float(self.timeout)):
            raise ValueError(f"timeout={self.timeout!r} must be a finite number of seconds")
        restarts = self.max_worker_restarts
        if restarts is not None and (
            isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0
        ):
            raise ValueError(
                f"max_worker_restarts={restarts!r} must be an integer >= 0, or None for the "
                "default (scales with the run)"
            )
        if self.host is not None and (not isinstance(self.host, str) or not self.host):
            raise ValueError(f"host={self.host!r} must be a host name or address, or None")
        return replace(self, num_workers=int(self.num_workers), launcher=launcher)

    def check_addresses(self) -> None:
        """Check that the task servers' ``host`` and the status page's address can be bound
        here, before anything is written (a bad one would orphan every block, or fail the
        run after its directory is made).

        Raises
        ------
        ValueError
            Naming the parameter, when an address does not resolve or cannot be bound.
        """
        if self.host is not None:
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


def work_digest(spec: RunSpec) -> str:
    """A digest of what a run computes (input, fn, plan, parameters); kept in a finished
    output's attributes so that repeating the call can tell it is done."""
    data = spec.to_json()
    for key in ("sys_path", "run_id"):
        data.pop(key)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


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

    # -- tasks -------------------------------------------------------------------------------

    @property
    def tasks_dir(self) -> Path:
        """``tasks/``: each task's cloudpickle (``<name>.pkl``) and description (``.json``),
        which workers load by the task's name."""
        return self.root / "tasks"

    def write_tasks(self, tasks: Sequence[Task]) -> None:
        """Store ``tasks`` for the workers (their order is the display order)."""
        from blockbuster.run.fingerprint import task_fingerprint

        self.tasks_dir.mkdir(parents=True, exist_ok=True)
        order = {name: i for i, name in enumerate(self.task_names())}
        for task in tasks:
            meta = {
                "name": task.name,
                "order": order.setdefault(task.name, len(order)),
                "unit_name": task.unit_name,
                "total": task.num_units,
                "upstream": [up.name for up in task.upstream],
                "fingerprint": task_fingerprint(task),
                "sys_path": [str(Path(p).absolute()) if p else str(Path.cwd()) for p in sys.path],
            }
            write_atomic(self.tasks_dir / f"{task.name}.pkl", cloudpickle.dumps(task))
            write_atomic(self.tasks_dir / f"{task.name}.json", json.dumps(meta).encode())

    def task_meta(self, name: str) -> dict[str, Any]:
        """The description of task ``name``.

        Raises
        ------
        RunDirError
            If the run has no such task (or its file is damaged).
        """
        path = self.tasks_dir / f"{name}.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            known = ", ".join(self.task_names()) or "none"
            raise RunDirError(
                f"{self.root} has no task {name!r} (its tasks: {known}); give one of them"
            ) from None
        except (OSError, ValueError) as e:
            raise RunDirError(f"{path} is damaged ({e}); start the run again") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path} is damaged (not a JSON object); start the run again")
        return data

    def task_names(self) -> list[str]:
        """The run's tasks, in the order they were first written."""
        metas = []
        for path in self.tasks_dir.glob("*.json") if self.tasks_dir.is_dir() else ():
            try:
                data = json.loads(path.read_bytes())
                metas.append((int(data["order"]), str(data["name"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return [name for _, name in sorted(metas)]

    def load_task(self, name: str) -> Task:
        """Load task ``name`` as a worker does: the driver's import paths first."""
        meta = self.task_meta(name)
        for p in reversed(meta.get("sys_path", [])):
            if p not in sys.path:
                sys.path.insert(0, p)
        task: Task = cloudpickle.loads((self.tasks_dir / f"{name}.pkl").read_bytes())
        return task

    def task_records(self, task: Task) -> TaskRecords:
        """The record files of ``task``, validated by its ``record_fields``."""
        return TaskRecords(self.records(task.name), task.name, task.record_fields)

    def create(self) -> None:
        """Create the run directory, private to this user (0700): whoever can write it can run
        code as the user who resumes it (workers load ``fn.pkl`` and import from ``sys_path``)."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)

    def write_spec(self, spec: RunSpec) -> None:
        self.create()
        write_atomic(self.spec_file, json.dumps(spec.to_json(), indent=2).encode())

    @property
    def options_file(self) -> Path:
        return self.root / "options.json"

    def write_options(self, options: RunOptions) -> None:
        write_atomic(self.options_file, json.dumps(asdict(options), indent=2).encode())

    def read_options(self) -> RunOptions:
        """The run's options (the defaults where none were written).

        Raises
        ------
        RunDirError
            If ``options.json`` is damaged.
        """
        if not self.options_file.exists():
            return RunOptions()
        try:
            data = json.loads(self.options_file.read_bytes())
            if data.get("gpus") is not None:
                data["gpus"] = tuple(str(g) for g in data["gpus"])
            return RunOptions(**data)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise RunDirError(
                f"{self.options_file} is damaged ({e.__class__.__name__}: {e}); remove it and "
                "resubmit with the options you want (--workers, --timeout, --launcher)"
            ) from None

    def read_spec(self) -> RunSpec:
        """The run's spec.

        Raises
        ------
        RunDirError
            If ``spec.json`` is missing, unreadable or not a spec of this release.
        """
        try:
            data = json.loads(self.spec_file.read_bytes())
        except FileNotFoundError:
            raise RunDirError(
                f"{self.root} is not a blockbuster run directory (no spec.json); pass the "
                "<write_to>.blockbuster directory of a run"
            ) from None
        except (OSError, ValueError) as e:
            raise RunDirError(
                f"{self.spec_file} is damaged ({e.__class__.__name__}: {e}); the run cannot be "
                "resumed: start it again with overwrite=True (--overwrite)"
            ) from None
        if not isinstance(data, dict):
            raise RunDirError(
                f"{self.spec_file} is damaged (not a JSON object); the run cannot be resumed: "
                "start it again with overwrite=True (--overwrite)"
            )
        version = data.get("version")
        if version != SPEC_VERSION:
            raise RunDirError(
                f"{self.spec_file} was written by another blockbuster release (spec version "
                f"{version}, this one reads {SPEC_VERSION}); finish it with that release or "
                "start again with overwrite=True (--overwrite)"
            )
        try:
            return RunSpec.from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RunDirError(
                f"{self.spec_file} is damaged (bad field: {e}); the run cannot be resumed: "
                "start it again with overwrite=True (--overwrite)"
            ) from None

    @property
    def fn_ref_file(self) -> Path:
        return self.root / "fn.json"

    def write_fn(self, payload: bytes, ref: dict[str, Any] | None) -> None:
        """Store the fn: always cloudpickled, plus its import path where it has one."""
        write_atomic(self.fn_file, payload)
        if ref is None:
            self.fn_ref_file.unlink(missing_ok=True)
        else:
            write_atomic(self.fn_ref_file, json.dumps(ref, indent=2).encode())

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
