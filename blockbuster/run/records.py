"""Per-block records that workers write as files, and the driver gathers.

Workers never write a shared database: each block writes its own small files, created under a
temporary name and renamed into place, which is safe on the network filesystems that
multi-node runs share (SQLite is not). Layout under ``<run_dir>/records/<task>/``:

``<tile>.json``
    The block succeeded: host, start time, seconds, and task-specific counts. A block of
    several tiles (stitch, relabel) is recorded under its first tile and lists its ``tiles``.
``<tile>.edges.npy``
    stitch only: the tile's equivalences, an ``(n, 4)`` int64 array
    ``(tile_a, label_a, tile_b, label_b)``.
``<tile>.call.<id>``
    segment only: one file per call of ``fn``, created just before the call, so calls are
    counted even when the worker is killed inside ``fn``.
``<tile>.plane.npy``
    segment and relabel, tiles crossing the block map's plane only: that plane's piece of the
    tile (image, or final labels), strided (see :mod:`.thumbnail`).
``<tile>.error.<id>.json``
    One per failed attempt: host, time and the traceback.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from blockbuster.run.files import write_atomic

logger = logging.getLogger("blockbuster")


def npy_bytes(array: NDArray[Any]) -> bytes:
    """``array`` in the ``.npy`` format."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is missing, empty, truncated or not an
    object (each bad file is logged once)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        _warn_once(path, f"unreadable ({e.__class__.__name__}: {e})")
        return None
    if not isinstance(data, dict):
        _warn_once(path, "not a JSON object")
        return None
    return data


_warned: set[str] = set()


def _warn_once(path: Path, why: str) -> None:
    if str(path) not in _warned:
        _warned.add(str(path))
        logger.warning("ignoring %s: %s; its block is treated as not done", path, why)


Fields = Mapping[str, type | tuple[type, ...]]
"""Fields a done record must hold, with their types (a task's ``record_fields``)."""


def valid_record(tile: int, record: dict[str, Any], required: Fields = {}) -> bool:  # noqa: B006
    """Whether ``record`` is a complete done record of the block keyed by ``tile``."""
    if record.get("tile") != tile or not isinstance(record.get("seconds"), (int, float)):
        return False
    return all(isinstance(record.get(k), t) for k, t in required.items())


def parse_record_name(name: str) -> tuple[int, str] | None:
    """``(key, kind)`` of a file in a record folder, or None (a temporary file, or not one of
    ours); kind is ``"done"``, ``"error"``, ``"call"``, ``"edges"`` or ``"plane"``.

    >>> parse_record_name("12.error.ab12.json"), parse_record_name(".12.json.x.tmp")
    ((12, 'error'), None)
    """
    if name.startswith("."):
        return None
    head, _, rest = name.partition(".")
    if not head.isdigit():
        return None
    if rest.startswith("call."):
        return int(head), "call"
    if rest == "json":
        return int(head), "done"
    if rest.startswith("error.") and rest.endswith(".json"):
        return int(head), "error"
    if rest in ("edges.npy", "plane.npy"):
        return int(head), rest.partition(".")[0]
    return None


@dataclass(frozen=True)
class TileError:
    """One failed attempt at a block."""

    task: str
    tile: int
    host: str
    time: float
    traceback: str
    tiles: tuple[int, ...] = ()
    """Every tile of the failed block (stitch and relabel blocks hold several)."""

    @property
    def message(self) -> str:
        lines = self.traceback.strip().splitlines()
        return lines[-1] if lines else ""


class TaskRecords:
    """The record files of one task.

    Parameters
    ----------
    root
        ``<run_dir>/records/<task>``; created by the first write.
    task
        Task name, kept in error records.
    required
        Fields a done record must hold to count (the task's ``record_fields``).
    """

    def __init__(self, root: Path, task: str, required: Fields | None = None) -> None:
        self.root = Path(root)
        self.task = task
        self.required: Fields = dict(required or {})
        self.host = socket.gethostname()
        self._made = False

    def _folder(self) -> Path:
        """The record folder, created on the first write (readers never create it)."""
        if not self._made:
            self.root.mkdir(parents=True, exist_ok=True)
            self._made = True
        return self.root

    # -- worker side -----------------------------------------------------------------------

    def is_done(self, tile: int) -> bool:
        """Whether ``tile`` has a valid done record (an unreadable one counts as none)."""
        return self.record(tile) is not None

    def record(self, tile: int) -> dict[str, Any] | None:
        """The done record of ``tile`` (the block keyed by it), or None if it has no valid one."""
        record = read_json(self.root / f"{tile}.json")
        return record if record is not None and valid_record(tile, record, self.required) else None

    def discard(self, tile: int) -> None:
        """Forget the done record of the block keyed by ``tile`` (it is redone)."""
        (self.root / f"{tile}.json").unlink(missing_ok=True)
        self.edges_file(tile).unlink(missing_ok=True)

    def call_started(self, tile: int) -> None:
        (self._folder() / f"{tile}.call.{uuid.uuid4().hex}").touch()

    def done(self, tile: int, start: float, seconds: float, **info: Any) -> None:
        record = {"tile": tile, "host": self.host, "start": start, "seconds": seconds, **info}
        write_atomic(self._folder() / f"{tile}.json", json.dumps(record).encode(), sync_dir=False)

    def edges_file(self, tile: int) -> Path:
        return self.root / f"{tile}.edges.npy"

    def write_edges(self, tile: int, edges: NDArray[Any]) -> Path:
        """Write the edges of the stitch block keyed by ``tile``; return the file."""
        data = npy_bytes(np.asarray(edges, dtype=np.int64).reshape(-1, 4))
        path = self._folder() / self.edges_file(tile).name
        write_atomic(path, data, sync_dir=False)
        return path

    def read_edges(self, tile: int) -> NDArray[Any] | None:
        """The edges of the stitch block keyed by ``tile``; None if missing or unreadable."""
        path = self.edges_file(tile)
        try:
            edges: NDArray[Any] = np.load(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as e:
            _warn_once(path, f"unreadable ({e.__class__.__name__}: {e})")
            return None
        if edges.ndim != 2 or edges.shape[1] != 4 or edges.dtype != np.int64:
            _warn_once(path, f"edges of shape {edges.shape} and dtype {edges.dtype}")
            return None
        return edges

    def write_plane(self, tile: int, piece: NDArray[Any]) -> None:
        """Save the tile's piece of the block map's plane (see :mod:`.thumbnail`)."""
        write_atomic(self._folder() / f"{tile}.plane.npy", npy_bytes(piece), durable=False)

    def failed(self, tile: int, traceback: str, tiles: list[int] | None = None) -> None:
        record = {
            "task": self.task,
            "tile": tile,
            "tiles": tiles if tiles is not None else [tile],
            "host": self.host,
            "time": time.time(),
            "traceback": traceback,
        }
        name = f"{tile}.error.{uuid.uuid4().hex}.json"
        write_atomic(self._folder() / name, json.dumps(record).encode(), sync_dir=False)

    # -- driver side -----------------------------------------------------------------------

    def files(self, kind: str) -> Iterator[tuple[int, Path]]:
        """``(key, path)`` of every file of ``kind`` (see :func:`parse_record_name`)."""
        if not self.root.exists():
            return
        for entry in os.scandir(self.root):
            parsed = parse_record_name(entry.name)
            if parsed is not None and parsed[1] == kind:
                yield parsed[0], Path(entry.path)

    def done_records(self) -> dict[int, dict[str, Any]]:
        """Successful blocks by tile (unreadable or invalid records are left out)."""
        out = {}
        for tile, path in self.files("done"):
            record = read_json(path)
            if record is not None and valid_record(tile, record, self.required):
                out[tile] = record
        return out

    def edges(self, keys: Iterator[int] | list[int]) -> NDArray[Any]:
        """The equivalences of the stitch blocks keyed by ``keys``, ``(n, 4)`` int64.

        Raises
        ------
        ValueError
            If a block's edges are missing or unreadable (verify them first).
        """
        parts = []
        for key in keys:
            edges = self.read_edges(key)
            if edges is None:
                raise ValueError(f"the edges of stitch block {key} are missing or unreadable")
            parts.append(edges)
        return np.concatenate(parts) if parts else np.empty((0, 4), dtype=np.int64)

    def call_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for tile, _ in self.files("call"):
            counts[tile] = counts.get(tile, 0) + 1
        return counts

    def errors(self) -> list[TileError]:
        out = []
        for _, path in self.files("error"):
            d = read_json(path)
            try:
                assert d is not None
                tiles = tuple(int(t) for t in d.get("tiles", [d["tile"]]))
                err = TileError(
                    str(d["task"]),
                    int(d["tile"]),
                    str(d["host"]),
                    float(d["time"]),
                    str(d["traceback"]),
                    tiles,
                )
            except (AssertionError, KeyError, TypeError, ValueError):
                if d is not None:
                    _warn_once(path, "an error record without its fields")
                continue
            out.append(err)
        return sorted(out, key=lambda e: (e.tile, e.time))

    def failed_tiles(self) -> dict[int, list[TileError]]:
        """Tiles with failed attempts and no success, each with its errors (oldest first)."""
        done = self.done_records()
        out: dict[int, list[TileError]] = {}
        for err in self.errors():
            if err.tile not in done:
                out.setdefault(err.tile, []).append(err)
        return out


# -- counting while workers write -------------------------------------------------------


def record_tiles(record: dict[str, Any], tile: int) -> list[int]:
    """The tiles a record stands for.

    Parameters
    ----------
    record
        A parsed record file (done or error).
    tile
        The tile id in the record's file name (``<tile>.json``, ``<tile>.error.<id>.json``).

    Returns
    -------
    list of int
        The record's ``"tiles"`` list where it has one (a block covering several tiles), else
        ``[tile]``.
    """
    tiles = record.get("tiles")
    if isinstance(tiles, list) and tiles:
        return [int(t) for t in tiles]
    return [tile]


@dataclass
class TileCounts:
    """The tiles of one task by state.

    Attributes
    ----------
    done
        Seconds per done tile (a record's seconds split evenly over the tiles it covers).
    failed
        Tiles with at least one failed attempt and no success.
    started
        Tiles whose ``fn`` was called (segment's ``<tile>.call.<id>`` files), done or not.
    skipped
        Done tiles that were never read (outside the mask: their record says ``skipped``).
    """

    done: dict[int, float] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    started: set[int] = field(default_factory=set)
    skipped: set[int] = field(default_factory=set)

    def copy(self) -> TileCounts:
        return TileCounts(dict(self.done), set(self.failed), set(self.started), set(self.skipped))

    @property
    def num_done(self) -> int:
        return len(self.done)

    @property
    def num_failed(self) -> int:
        return len(self.failed)

    def pending(self, total: int) -> int:
        """Tiles of ``total`` neither done nor failed."""
        return max(total - self.num_done - self.num_failed, 0)

    @property
    def running(self) -> set[int]:
        """Tiles started and neither done nor failed (running, or their worker died)."""
        return self.started - self.done.keys() - self.failed

    def states(self, total: int) -> dict[str, int]:
        """``{"done", "skipped", "running", "failed", "pending"}`` of ``total`` tiles: the
        five add up to ``total`` (``skipped``: done without being read, outside the mask;
        ``running``: ``fn`` was called without a result yet; both segment only)."""
        running = len(self.running)
        skipped = len(self.skipped & self.done.keys())
        return {
            "done": self.num_done - skipped,
            "skipped": skipped,
            "running": running,
            "failed": self.num_failed,
            "pending": max(self.pending(total) - running, 0),
        }


class RecordScanner:
    """Counts one task's tiles from its record folder, cheaply and repeatedly.

    Parameters
    ----------
    root
        The task's record folder, ``<run_dir>/records/<task>``. It may not exist yet (or any
        more): it then counts no tiles.

    Notes
    -----
    Each :meth:`scan` lists the folder once and parses only record files it has not seen
    before, so polling a folder of thousands of records costs one directory listing (about
    20 ms for 10,000 tiles). A file that disappears (a task's records are cleared before it
    reruns) is forgotten.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._seen: set[str] = set()  # names handled (parsed, or not records)
        self._done: dict[str, tuple[list[int], float, bool]] = {}
        self._errors: dict[str, list[int]] = {}
        self._calls: dict[str, int] = {}
        self._counts: TileCounts | None = None
        self._lock = threading.Lock()

    def scan(self) -> TileCounts:
        """Read the folder now.

        Returns
        -------
        TileCounts
            Done tiles with their seconds, failed tiles (errors without a success) and
            started tiles.
        """
        with self._lock:
            try:
                names = set(os.listdir(self.root))
            except FileNotFoundError:
                names = set()
            gone, new = self._seen - names, names - self._seen
            if not gone and not new and self._counts is not None:
                return self._counts.copy()  # nothing changed since the last scan
            for name in gone:
                self._seen.discard(name)
                self._done.pop(name, None)
                self._errors.pop(name, None)
                self._calls.pop(name, None)
            unread: list[tuple[int, str]] = []  # records not readable yet: counted by name
            for name in new:
                parsed = parse_record_name(name)
                if parsed is None:
                    self._seen.add(name)
                elif parsed[1] == "call":
                    self._calls[name] = parsed[0]
                    self._seen.add(name)
                elif self._parse(name, *parsed):
                    self._seen.add(name)
                else:
                    unread.append(parsed)
            done = list(self._done.values())
            done += [([t], 0.0, False) for t, k in unread if k == "done"]
            errors = list(self._errors.values()) + [[t] for t, k in unread if k == "error"]
            counts = TileCounts(started=set(self._calls.values()))
            for tiles, seconds, skipped in done:
                for t in tiles:
                    counts.done[t] = seconds / len(tiles)
                if skipped:
                    counts.skipped.update(tiles)
            for tiles in errors:
                counts.failed.update(t for t in tiles if t not in counts.done)
            self._counts = None if unread else counts.copy()
            return counts

    def _parse(self, name: str, tile: int, kind: str) -> bool:
        """Cache the record ``name``; False when it could not be read (try again next scan)."""
        try:
            record = json.loads((self.root / name).read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(record, dict):
            return False
        tiles = record_tiles(record, tile)
        if kind == "done":
            seconds = float(record.get("seconds", 0.0))
            self._done[name] = (tiles, seconds, bool(record.get("skipped", False)))
        else:
            self._errors[name] = tiles
        return True
