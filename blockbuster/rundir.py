"""The run directory: everything a worker (local or on another node) needs to do its part.

Layout::

    <write_to>.blockbuster/
        spec.json             parameters, input description, tile plan, the driver's sys.path
        fn.pkl                the user's fn, cloudpickled (by reference when importable)
        stage.zarr            staged per-tile labels (core + halo), one chunk per tile
        equivalences.sqlite   the equivalence table (written by the driver only)
        records/<task>/       per-block record files written by workers (see records.py)
        tracking/<task>/      daisy done markers (resume)
        logs/                 per-worker logs written by daisy
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
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
        plan = TilePlan(**{k: tuple(v) for k, v in data["plan"].items()})
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
    def table(self) -> Path:
        return self.root / "equivalences.sqlite"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def records(self, task: str) -> Path:
        return self.root / "records" / task

    def tracking(self, task: str) -> Path:
        return self.root / "tracking" / task

    def write_spec(self, spec: RunSpec) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.spec_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec.to_json(), indent=2))
        tmp.replace(self.spec_file)

    def read_spec(self) -> RunSpec:
        return RunSpec.from_json(json.loads(self.spec_file.read_text()))

    def write_fn(self, payload: bytes) -> None:
        tmp = self.fn_file.with_suffix(".tmp")
        tmp.write_bytes(payload)
        tmp.replace(self.fn_file)

    def load_fn(self) -> Any:
        return cloudpickle.loads(self.fn_file.read_bytes())


def restore_sys_path(spec: RunSpec) -> None:
    """Make the driver's import paths visible in a worker, so fns pickled by reference load."""
    for p in reversed(spec.sys_path):
        if p not in sys.path:
            sys.path.insert(0, p)
