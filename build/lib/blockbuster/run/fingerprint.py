"""Fingerprints of what a run computes from: its fn and its input.

A resumed run must do the same work as the run it continues, or its output mixes tiles made
by two fns, or from two images. The run directory records

* the fn's fingerprint: a hash of its import reference and keyword arguments and of the
  source code of the function (or class) behind it, so that editing an importable fn's code
  is seen even though it is pickled by reference; and the fn's cloudpickle itself, compared
  with :func:`same_fn`;
* the input's fingerprint: a hash of the array's metadata and of a fixed sample of its chunks
  (at most :data:`SAMPLE_CHUNKS`, spread evenly over the chunk grid, so the cost does not grow
  with the image);
* per tile, in its segment record, a digest of the exact input block fn was given, which
  ``blockbuster verify`` checks against the input on demand.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import marshal
import tokenize
from typing import Any

import cloudpickle
import numpy as np
from numpy.typing import NDArray

SAMPLE_CHUNKS = 16


def input_digest(data: NDArray[Any]) -> str:
    """Digest of an input block: its dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{data.dtype.str}{data.shape}".encode())
    h.update(np.ascontiguousarray(data).data)
    return h.hexdigest()


def _source_of(fn: Any) -> str:
    target = fn.func if isinstance(fn, functools.partial) else fn
    if not (inspect.isfunction(target) or inspect.isclass(target) or inspect.ismethod(target)):
        target = type(target)
    try:
        return inspect.getsource(target)
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        # Code compiled from a string (exec, notebooks) names a file that may be
        # missing or another file of that name on sys.path; the bytecode still
        # tells one fn from another.
        code = getattr(target, "__code__", None)
        return marshal.dumps(code).hex() if code is not None else ""


def fn_fingerprint(ref: dict[str, Any] | None, fn: Any) -> str:
    """Fingerprint of an fn: its import reference (with kwargs) and its source code."""
    h = hashlib.sha256()
    h.update(json.dumps(ref, sort_keys=True).encode())
    h.update(_source_of(fn).encode())
    return h.hexdigest()


def same_fn(stored_payload: bytes, payload: bytes) -> bool:
    """Whether two pickles hold the same fn, allowing for set and dict orders that differ
    between interpreters (string hashing is salted per process)."""
    if stored_payload == payload:
        return True
    try:
        return bool(cloudpickle.dumps(cloudpickle.loads(stored_payload)) == payload)
    except Exception:
        return False


def sample_chunks(grid: tuple[int, ...], n: int = SAMPLE_CHUNKS) -> list[tuple[int, ...]]:
    """A fixed sample of at most ``n`` chunk indices spread evenly over ``grid`` (first and
    last included)."""
    total = int(np.prod(grid))
    picks = sorted({int(round(v)) for v in np.linspace(0, total - 1, min(n, total))})
    return [tuple(int(i) for i in np.unravel_index(p, grid)) for p in picks]


def input_fingerprint(array: Any) -> str:
    """Fingerprint of an input array: shape, dtype, chunks and a fixed sample of its chunks."""
    h = hashlib.sha256()
    chunks = tuple(int(c) for c in array.chunks)
    shape = tuple(int(s) for s in array.shape)
    h.update(json.dumps([shape, str(array.dtype), chunks]).encode())
    grid = tuple(-(-s // c) for s, c in zip(shape, chunks, strict=True))
    if 0 in grid:
        return h.hexdigest()
    for index in sample_chunks(grid):
        box = tuple(
            slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape, strict=True)
        )
        h.update(input_digest(np.asarray(array[box])).encode())
    return h.hexdigest()


def task_fingerprint(task: Any) -> str:
    """Fingerprint of a :class:`~blockbuster.run.task.Task`: its geometry, the fingerprints of
    its upstream tasks (a changed task makes every task reading it change too), the source of
    its class and block function, and the values the function is bound to (``partial``
    arguments, closure cells) and the task's own attributes, so a resumed run refuses a
    changed one."""
    h = hashlib.sha256()
    geometry = [
        type(task).__module__,
        type(task).__qualname__,
        str(task.roi),
        list(task.block_shape),
        list(task.context),
        task.fit,
        [task_fingerprint(up) for up in task.upstream],
    ]
    h.update(json.dumps(geometry).encode())
    if type(task).__module__ != "blockbuster.run.task":
        h.update(_source_of(type(task)).encode())
    func = getattr(task, "_process_block_func", None)
    state = {k: v for k, v in vars(task).items() if k not in ("upstream", "_process_block_func")}
    bound: list[Any] = []
    while func is not None:
        h.update(_source_of(func).encode())
        if isinstance(func, functools.partial):
            bound += [func.args, func.keywords]
            func = func.func
            continue
        cells = getattr(func, "__closure__", None) or ()
        bound += [c.cell_contents for c in cells if _filled(c)]
        func = None
    h.update(repr(_canonical([bound, state])).encode())
    return h.hexdigest()


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def _canonical(value: Any, depth: int = 0) -> Any:
    """``value`` in a form whose ``repr`` is the same in every process: sets and dict items
    sorted, arrays by digest, functions by source, other objects by type and attributes."""
    if depth > 8:
        return type(value).__qualname__
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return value
    if isinstance(value, np.ndarray):
        return ("ndarray", input_digest(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_canonical(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v, depth + 1) for v in value), key=repr)
    if isinstance(value, dict):
        items = [(_canonical(k, depth + 1), _canonical(v, depth + 1)) for k, v in value.items()]
        return sorted(items, key=repr)
    if callable(value) and (inspect.isfunction(value) or inspect.isclass(value)):
        return ("code", value.__module__, value.__qualname__, _source_of(value))
    if isinstance(value, functools.partial):
        return ("partial", _canonical([value.func, value.args, value.keywords], depth + 1))
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        return (type(value).__qualname__, _canonical(attrs, depth + 1))
    return (type(value).__qualname__, str(value) if "0x" not in repr(value) else "")
