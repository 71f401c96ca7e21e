"""The spec of a ``tile_process`` run: what it computes (input, plan, parameters, fn).

Kept in the run directory as ``spec.json`` (with the fn as ``fn.pkl``, and ``fn.json`` where it
has an import path), so that a resumed run, ``resubmit`` and every worker do the same work:
:func:`read_spec` refuses a damaged spec or one of another release, and
:meth:`RunSpec.differences` names what a resume would change.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import cloudpickle

from blockbuster.io.sources import ImageSource
from blockbuster.pipeline.plan import TilePlan
from blockbuster.run.files import write_atomic
from blockbuster.run.rundir import RunDir, RunDirError

#: the spec format this release reads and writes; another one is refused with the fix
SPEC_VERSION = 5  # 5: faces logs


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
    #: digest of the image statistics the fn was prepared with (``stats.npz``)
    stats_digest: str = ""
    #: ``""`` (no mask), ``"auto"`` or ``"array"``, and the digest of ``foreground.npy``
    mask: str = ""
    mask_digest: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "run_id": self.run_id,
            "fn_fingerprint": self.fn_fingerprint,
            "input_fingerprint": self.input_fingerprint,
            "stats_digest": self.stats_digest,
            "mask": self.mask,
            "mask_digest": self.mask_digest,
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
            stats_digest=str(data["stats_digest"]),
            mask=str(data["mask"]),
            mask_digest=str(data["mask_digest"]),
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
        inputs = [(d.pop("input_fingerprint"), d.pop("stats_digest")) for d in (a, b)]
        if inputs[0] != inputs[1]:
            out.append("input")
        for key in ("sys_path", "sequential_labels", "run_id"):
            a.pop(key)
            b.pop(key)
        if a != b:
            out.append("parameters")
        return out


def work_digest(spec: RunSpec) -> str:
    """A digest of what a run computes (input, fn, plan, parameters); kept in a finished
    output's attributes so that repeating the call can tell it is done."""
    data = spec.to_json()
    for key in ("sys_path", "run_id"):
        data.pop(key)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


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


def write_spec(run: RunDir, spec: RunSpec) -> None:
    run.create()
    write_atomic(run.spec_file, json.dumps(spec.to_json(), indent=2).encode())


def read_spec(run: RunDir) -> RunSpec:
    """The run's spec.

    Raises
    ------
    RunDirError
        If ``spec.json`` is missing, unreadable or not a spec of this release.
    """
    try:
        data = json.loads(run.spec_file.read_bytes())
    except FileNotFoundError:
        raise RunDirError(
            f"{run.root} is not a blockbuster run directory (no spec.json); pass the "
            "<write_to>.blockbuster directory of a run"
        ) from None
    except (OSError, ValueError) as e:
        raise RunDirError(
            f"{run.spec_file} is damaged ({e.__class__.__name__}: {e}); the run cannot be "
            "resumed: start it again with overwrite=True (--overwrite)"
        ) from None
    if not isinstance(data, dict):
        raise RunDirError(
            f"{run.spec_file} is damaged (not a JSON object); the run cannot be resumed: "
            "start it again with overwrite=True (--overwrite)"
        )
    version = data.get("version")
    if version != SPEC_VERSION:
        raise RunDirError(
            f"{run.spec_file} was written by another blockbuster release (spec version "
            f"{version}, this one reads {SPEC_VERSION}); finish it with that release or "
            "start again with overwrite=True (--overwrite)"
        )
    try:
        return RunSpec.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RunDirError(
            f"{run.spec_file} is damaged (bad field: {e}); the run cannot be resumed: "
            "start it again with overwrite=True (--overwrite)"
        ) from None


def write_fn(run: RunDir, payload: bytes, ref: dict[str, Any] | None) -> None:
    """Store the fn: always cloudpickled, plus its import path where it has one."""
    write_atomic(run.fn_file, payload)
    if ref is None:
        run.fn_ref_file.unlink(missing_ok=True)
    else:
        write_atomic(run.fn_ref_file, json.dumps(ref, indent=2).encode())


def load_fn(run: RunDir) -> Any:
    """Load the fn by import path when it has one, else unpickle it."""
    if run.fn_ref_file.exists():
        return load_fn_ref(json.loads(run.fn_ref_file.read_text()))
    return cloudpickle.loads(run.fn_file.read_bytes())
