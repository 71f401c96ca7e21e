"""The run directory: everything a worker (local or on another node) needs to do its part.

Layout::

    <write_to>.blockbuster/
        spec.json             parameters, input description, tile plan, the driver's sys.path
        config.json           the run's RunConfig: workers, timeout, retries, host, launcher
        tasks/<task>.pkl      each task, for its workers (and tasks/<task>.json: what it is)
        server/<task>.json    the address of each task's daisy server (for workers elsewhere)
        fn.json               the fn's import path and keyword arguments, where it has one
        fn.pkl                the fn, cloudpickled (by value for __main__/notebook functions)
        stage.zarr            staged per-tile labels (core + halo), one chunk per tile
        faces/                faces logs: each labelled tile's side of its faces, for stitch,
                              appended to one log per segment worker process (faces.py)
        equivalences.sqlite   the equivalence table (written by the driver only)
        records/<task>/       record logs, one per worker process and task (see records.py)
        logs/                 per-worker logs written by daisy
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle

from blockbuster.config import RunConfig
from blockbuster.run.files import write_atomic
from blockbuster.run.records import TaskRecords

if TYPE_CHECKING:
    from blockbuster.run.task import Task


RUN_DIR_SUFFIX = ".blockbuster"
"""What ``write_to``'s name gets for the name of its run directory."""


class RunDirError(ValueError):
    """A run directory that cannot be used as it is (damaged, or not one); the message says
    which file and what to do."""


class RunDir:
    """Paths inside one run directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def for_output(cls, write_to: Path | str) -> RunDir:
        out = Path(write_to)
        return cls(out.with_name(out.name + RUN_DIR_SUFFIX))

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
    def stats_file(self) -> Path:
        """The input's intensity statistics (:mod:`blockbuster.pipeline.stats`)."""
        return self.root / "stats.npz"

    @property
    def foreground_file(self) -> Path:
        """Per tile, whether it is segmented (``tile_process(mask=...)``)."""
        return self.root / "foreground.npy"

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
        here = [str(Path(p).absolute()) if p else str(Path.cwd()) for p in sys.path]
        for task in tasks:
            try:  # the first driver's import paths first: a resume may start elsewhere
                earlier = list(self.task_meta(task.name).get("sys_path", []))
            except RunDirError:
                earlier = []
            meta = {
                "name": task.name,
                "order": order.setdefault(task.name, len(order)),
                "unit_name": task.unit_name,
                "total": task.num_units,
                "upstream": [up.name for up in task.upstream],
                "fingerprint": task_fingerprint(task),
                "sys_path": earlier + [p for p in here if p not in earlier],
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

    def load_tasks(self) -> list[Task]:
        """Every task of the run, with ``upstream`` naming the loaded tasks themselves (each
        pickle holds its own copy of the tasks upstream of it)."""
        tasks = {name: self.load_task(name) for name in self.task_names()}
        for task in tasks.values():
            task.upstream = tuple(tasks.get(up.name, up) for up in task.upstream)
        return list(tasks.values())

    def task_records(self, task: Task) -> TaskRecords:
        """The record files of ``task``, validated by its ``record_fields``."""
        return TaskRecords(self.records(task.name), task.name, task.record_fields)

    def create(self) -> None:
        """Create the run directory, private to this user (0700): whoever can write it can run
        code as the user who resumes it (workers load ``fn.pkl`` and import from ``sys_path``)."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    def write_config(self, config: RunConfig) -> None:
        write_atomic(self.config_file, json.dumps(config.to_json(), indent=2).encode())

    def read_config(self) -> RunConfig:
        """The run's configuration (the defaults where none was written).

        Raises
        ------
        RunDirError
            If ``config.json`` is damaged.
        """
        if not self.config_file.exists():
            return RunConfig()
        try:
            data = json.loads(self.config_file.read_bytes())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return RunConfig.from_json(data)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise RunDirError(
                f"{self.config_file} is damaged ({e.__class__.__name__}: {e}); remove it and "
                "resubmit with the options you want (--workers, --timeout, --launcher)"
            ) from None

    @property
    def fn_ref_file(self) -> Path:
        return self.root / "fn.json"
