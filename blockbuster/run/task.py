"""The public task API: a blockwise step that blockbuster's engines run, record and resume.

A :class:`Task` declares *where* it works (a region, a block shape, a read context, a fit
mode, in world units as daisy has them) and *what* it does per block: a function that opens
its resources once per worker process (a model, an array, a database) and returns the
function called for each :class:`Block` -- volara's ``process_block_func`` pattern. The same
task runs on every engine (daisy workers started here or by a launch script on SLURM/LSF, a
Dask client, or this process), each block recorded in the run directory, so a crashed run
resumes where it stopped and ``blockbuster status`` / ``resubmit`` work on it.

>>> import numpy as np
>>> from funlib.geometry import Roi
>>> def double():  # opened once per worker
...     def block(b: Block) -> None:
...         pass  # read b.read_roi, write b.write_roi
...     return block
>>> task = Task("double", Roi((0, 0), (100, 100)), (50, 50), double)
>>> [b.key for b in task.blocks()]
[0, 1, 2, 3]
>>> task.blocks()[3].write_roi
[50:100, 50:100] (50, 50)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from funlib.geometry import Coordinate, Roi

Fit = Literal["valid", "overhang", "shrink"]
"""How blocks at the upper edge of the region are treated, as daisy defines it: ``valid``
drops blocks whose read area leaves the region grown by the context, ``overhang`` keeps them
whole (their ROIs reach past it), ``shrink`` cuts them to it."""

BlockInfo = Mapping[str, Any] | None
"""What a block function may return: JSON-serialisable facts kept in the block's record."""

BlockFunction = Callable[["Block"], BlockInfo]


class UpstreamNotDone(Exception):
    """Raised by a block function that finds an upstream block's output missing although the
    engine handed the block out (so it counted that upstream block done).

    The block is left without a record and without a failure: the engine counts it done, the
    driver's check of the records finds it (and the upstream block) missing, and its next pass
    runs both again. A client that reports blocks done without doing them, or an upstream
    output removed while the run goes on, so costs a pass, never a failed run.
    """


@dataclass(frozen=True)
class Block:
    """One block of a task, as its block function receives it.

    Attributes
    ----------
    task
        The task's name.
    key
        The block's number: its position in the task's block grid, raveled in C order. Its
        record files in ``<run_dir>/records/<task>/`` are named by it.
    index
        The block's position in the task's block grid.
    read_roi, write_roi
        World-unit ROIs: the block reads ``read_roi`` (the write ROI grown by the context;
        at the region's edges it reaches past the region, clip it to the data) and writes
        ``write_roi``.
    """

    task: str
    key: int
    index: tuple[int, ...]
    read_roi: Roi
    write_roi: Roi


def _coordinate(value: int | Sequence[int], ndim: int, what: str) -> Coordinate:
    values = (value,) * ndim if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != ndim or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values
    ):
        raise ValueError(f"{what}={value!r} must be an int or {ndim} ints (one per axis)")
    return Coordinate(int(v) for v in values)


class Task:
    """A blockwise step: a region cut into blocks, and what to do with each.

    Parameters
    ----------
    name
        Unique within a run; names the task's records and its workers' command line
        (``python -m blockbuster.worker RUN_DIR NAME``). Letters, digits, ``_`` and ``-``.
    roi
        The region the task writes, in world units (a ``funlib.geometry.Roi``), or a shape,
        meaning the region from the origin with that shape.
    block_shape
        The write shape of one block, in world units (voxels times the voxel size).
    process_block_func
        Called once per worker process; opens what the blocks need and returns the block
        function ``f(block) -> dict | None`` (the dict's items go into the block's record),
        or a context manager yielding it (closed when the worker has no blocks left). It is
        sent to the workers with cloudpickle: a module-level function, a ``functools.partial``
        of one, or a function defined in ``__main__``/a notebook.
    context
        Read halo per side, in world units: each block reads its write ROI grown by it.
    fit
        How blocks at the upper edge are treated (see :data:`Fit`); ``"valid"`` as daisy.
    upstream
        Tasks this one reads the output of: a block starts once every upstream block whose
        write ROI meets its read ROI is done.

    Notes
    -----
    Subclasses may override :meth:`process_block_func`, :meth:`units` (what a block counts
    as in progress: blockbuster's stages count tiles), :meth:`damaged` (done blocks whose
    output is no longer whole), and set :attr:`record_fields`, :attr:`unit_name` and
    :attr:`uses_gpu`.

    A block is done when its record is written, after its function returned; a resumed run
    skips done blocks. Write a block's output so that running it again gives the same result
    (daisy retries failed blocks, and a worker killed mid-block leaves its block undone).
    """

    #: fields (and their types) a done record of this task must hold to count as done
    record_fields: Mapping[str, type | tuple[type, ...]] = {}
    #: what one progress unit is called ("blocks", or "tiles" for blockbuster's stages)
    unit_name: str = "blocks"
    #: its workers use a GPU: with ``use_gpu``, each local worker is pinned to one device
    #: (``CUDA_VISIBLE_DEVICES``) and one thread
    uses_gpu: bool = False
    #: its block function records each unit itself (``<unit>.json``, a failure under the
    #: unit that failed) instead of one record per block; a block is done when all its units
    #: are, and a retried block redoes only the units not done
    unit_records: bool = False

    def __init__(
        self,
        name: str,
        roi: Roi | Sequence[int],
        block_shape: int | Sequence[int],
        process_block_func: Callable[[], BlockFunction | AbstractContextManager[BlockFunction]]
        | None = None,
        *,
        context: int | Sequence[int] = 0,
        fit: Fit = "valid",
        upstream: Sequence[Task] = (),
    ) -> None:
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
            raise ValueError(
                f"name={name!r} must be a non-empty name of letters, digits, '_' and '-'"
            )
        if not isinstance(roi, Roi):
            roi = Roi((0,) * len(tuple(roi)), tuple(roi))
        ndim = roi.dims
        self.name = name
        self.roi = roi
        self.block_shape = _coordinate(block_shape, ndim, "block_shape")
        if any(v < 1 for v in self.block_shape):
            raise ValueError(f"block_shape={tuple(self.block_shape)} must be positive")
        self.context = _coordinate(context, ndim, "context")
        if any(v < 0 for v in self.context):
            raise ValueError(f"context={tuple(self.context)} must be >= 0")
        if fit not in ("valid", "overhang", "shrink"):
            raise ValueError(f"fit={fit!r} must be 'valid', 'overhang' or 'shrink'")
        self.fit: Fit = fit
        for up in upstream:
            if not isinstance(up, Task):
                raise TypeError(f"upstream must hold Tasks, got {type(up).__name__}")
        self.upstream = tuple(upstream)
        if process_block_func is not None and not callable(process_block_func):
            raise TypeError("process_block_func must be callable")
        self._process_block_func = process_block_func

    def __repr__(self) -> str:
        return (
            f"Task({self.name!r}, roi={self.roi}, block_shape={tuple(self.block_shape)}, "
            f"context={tuple(self.context)}, fit={self.fit!r})"
        )

    # -- what runs in the workers ------------------------------------------------------------

    def process_block_func(self) -> BlockFunction | AbstractContextManager[BlockFunction]:
        """Open the task's resources (once per worker) and return its block function.

        Subclasses override this instead of passing ``process_block_func``.
        """
        if self._process_block_func is None:
            raise NotImplementedError(
                f"task {self.name!r} has no process_block_func: pass one, or subclass Task and "
                "override process_block_func()"
            )
        return self._process_block_func()

    @contextmanager
    def opened(self) -> Any:
        """The block function, its resources held for the ``with`` block."""
        made = self.process_block_func()
        if isinstance(made, AbstractContextManager):
            with made as fn:
                yield fn
        else:
            yield made

    def block_timeout(self, timeout: float) -> float:
        """Seconds one block may run, given the run's ``timeout`` (default: that)."""
        return timeout

    # -- geometry ----------------------------------------------------------------------------

    @property
    def total_roi(self) -> Roi:
        """The region grown by the context: what daisy calls the task's total ROI."""
        return self.roi.grow(self.context, self.context)

    @property
    def grid(self) -> tuple[int, ...]:
        """Blocks per axis (before ``fit`` drops any)."""
        return tuple(
            math.ceil(s / b) for s, b in zip(self.roi.shape, self.block_shape, strict=True)
        )

    def _key(self, index: Sequence[int]) -> int:
        key = 0
        for i, n in zip(index, self.grid, strict=True):
            key = key * n + int(i)
        return key

    def block_at(self, index: Sequence[int]) -> Block:
        """The block at grid position ``index``, its ROIs cut to the region by ``shrink``."""
        index = tuple(int(i) for i in index)
        begin = tuple(
            o + i * b for o, i, b in zip(self.roi.begin, index, self.block_shape, strict=True)
        )
        shape = tuple(self.block_shape)
        if self.fit == "shrink":  # cut at the region's end (blocks start inside it)
            shape = tuple(
                min(s, o + n - a)
                for s, a, o, n in zip(shape, begin, self.roi.begin, self.roi.shape, strict=True)
            )
        write = Roi(begin, shape)
        read = write.grow(self.context, self.context)
        return Block(self.name, self._key(index), index, read, write)

    def block_of(self, read_roi: Roi, write_roi: Roi) -> Block:
        """The block whose write ROI is ``write_roi`` (as daisy hands it out)."""
        index = tuple(
            (int(a) - int(o)) // int(b)
            for a, o, b in zip(write_roi.begin, self.roi.begin, self.block_shape, strict=True)
        )
        return Block(self.name, self._key(index), index, read_roi, write_roi)

    def blocks(self) -> list[Block]:
        """Every block the task has, in key order (``fit`` applied)."""
        grid = self.grid
        if self.fit == "valid":  # only blocks whose write ROI lies inside the region
            grid = tuple(s // b for s, b in zip(self.roi.shape, self.block_shape, strict=True))
        out = [self.block_at(index) for index in np.ndindex(*grid)]
        return out

    @property
    def num_blocks(self) -> int:
        """How many blocks the task has (``fit`` applied), without making them."""
        if self.fit == "valid":
            return math.prod(s // b for s, b in zip(self.roi.shape, self.block_shape, strict=True))
        return math.prod(self.grid)

    def units(self, block: Block) -> list[int]:
        """The progress units ``block`` stands for (default: itself)."""
        return [block.key]

    @property
    def num_units(self) -> int:
        """Progress units of the whole task."""
        return self.num_blocks

    # -- verification ------------------------------------------------------------------------

    def damaged(self, records: Mapping[int, Mapping[str, Any]]) -> dict[int, str]:
        """Done blocks whose output is no longer whole on disk, each with the reason.

        The engine forgets their records, so they run again. Default: none (a task whose
        outputs can be checked cheaply overrides this).
        """
        return {}


@dataclass
class TaskReport:
    """How one task ended, as its engine counted it (and what verification found)."""

    total: int
    completed: int
    failed: int
    orphaned: int
    seconds: float
    error: str | None = None
    #: blocks (by key) that the engine counted as done but that have no valid record
    missing: tuple[int, ...] = ()
    #: why daisy gave the task up (its worker-restart cap), or None
    abandoned: str | None = None
    #: on Dask with a performance report: the cluster's process memory while the task ran,
    #: ``(unix time, bytes)`` samples (:class:`distributed.diagnostics.MemorySampler`)
    memory: tuple[tuple[float, float], ...] = ()

    @classmethod
    def from_state(cls, state: Any, seconds: float) -> TaskReport:
        return cls(
            total=state.total_block_count,
            completed=state.completed_count,
            failed=state.failed_count,
            orphaned=state.orphaned_count,
            seconds=seconds,
            error=state.first_worker_error or state.last_worker_error,
            abandoned=(
                f"daisy gave the task up after {state.worker_restart_count} worker restarts "
                f"({state.abandon_reason or 'its worker-restart cap'}); raise "
                "max_worker_restarts if workers die for reasons outside the run (preemption, "
                "time limits), or find why they die in the logs"
                if state.abandoned
                else None
            ),
        )

    @property
    def ok_by_engine(self) -> bool:
        """Whether the engine counted every block done (what the records say is :attr:`ok`)."""
        return self.failed == 0 and self.orphaned == 0 and self.completed == self.total

    @property
    def ok(self) -> bool:
        return self.ok_by_engine and not self.missing
