"""Per-block records that workers append to logs of their own, and the driver gathers.

Workers never write a shared database, nor a file another process writes: each process
appends its records to its own log, which is safe on the network filesystems that multi-node
runs share (SQLite is not), and keeps the run directory's file count growing with the
workers, not with the tiles. Layout under ``<run_dir>/records/<task>/``:

``log.<host>.<pid>.<id>.jsonl``
    One per process that wrote records for the task. One record a line: the record as JSON,
    a tab and the CRC-32 of the JSON (8 hex digits). Kinds of record:

    ``done``
        The block succeeded: host, start time, seconds, task-specific counts and a unique
        ``id``. A block of several tiles (stitch, relabel) is recorded under its first tile
        and lists its ``tiles``. Flushed to disk (fsync) before the worker goes on.
    ``error``
        A failed attempt: host, time and the traceback.
    ``call``
        segment only: appended just before each call of ``fn`` (host, pid, time), so calls
        are counted even when the worker is killed inside ``fn``, and the status page can
        say which worker runs a tile.
    ``discard``
        The driver found a done block damaged: the done records it names (by ``id``) no
        longer count, and the block is redone.

    A line a crash cut short, or one whose checksum does not match, is ignored (logged
    once): its block is treated as not done and runs again.
``<tile>.edges.npy``
    stitch only: the block's equivalences, an ``(n, 4)`` int64 array
    ``(tile_a, label_a, tile_b, label_b)``.
``planes/log.<host>.<pid>.<id>.jsonl``
    segment and relabel: one ``plane`` record per tile (a time series' first time point),
    the tile's piece of the plane drawn through its layer (image, or final labels), strided
    (see :mod:`.thumbnail`), zlib-compressed in base64. Logs of their own, so that the block
    map costs no file per tile and the readers of the records above never read pieces; not
    flushed (a piece lost in a crash leaves a gap in a picture, nothing else).

Readers read logs incrementally (:class:`RecordIndex`): each look lists the folder and reads
only the bytes appended since the last one, so checking one block, polling progress and
verifying a finished run of 100,000 tiles all cost one pass over what is new.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from blockbuster.run.files import AppendLog, write_atomic

logger = logging.getLogger("blockbuster")

LOG_PREFIX = "log."
LOG_SUFFIX = ".jsonl"
#: the subfolder of a task's record folder that holds the block map's plane logs
PLANES = "planes"


def npy_bytes(array: NDArray[Any]) -> bytes:
    """``array`` in the ``.npy`` format."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


_warned: set[str] = set()


def plane_piece(record: Mapping[str, Any]) -> NDArray[Any]:
    """The array a ``plane`` record holds (see :meth:`TaskRecords.write_plane`).

    Raises
    ------
    ValueError
        If the record does not hold an array of its shape and dtype.
    """
    try:
        raw = zlib.decompress(base64.b64decode(record["data"]))
        piece = np.frombuffer(raw, dtype=np.dtype(record["dtype"]))
        return piece.reshape(tuple(int(n) for n in record["shape"]))
    except (KeyError, TypeError, zlib.error) as e:
        raise ValueError(f"a damaged plane record ({e.__class__.__name__}: {e})") from None


def _warn_once(where: str, why: str) -> None:
    if where not in _warned:
        _warned.add(where)
        logger.warning("ignoring %s: %s; its block is treated as not done", where, why)


Fields = Mapping[str, type | tuple[type, ...]]
"""Fields a done record must hold, with their types (a task's ``record_fields``)."""


def valid_record(tile: int, record: dict[str, Any], required: Fields = {}) -> bool:  # noqa: B006
    """Whether ``record`` is a complete done record of the block keyed by ``tile``."""
    if record.get("tile") != tile or not isinstance(record.get("seconds"), (int, float)):
        return False
    return all(isinstance(record.get(k), t) for k, t in required.items())


def encode_line(record: Mapping[str, Any]) -> bytes:
    """One log line: ``record`` as JSON, a tab, its CRC-32, a newline.

    >>> encode_line({"kind": "call", "tile": 3})
    b'{"kind": "call", "tile": 3}\\td94a7818\\n'
    """
    payload = json.dumps(record).encode()
    return payload + b"\t%08x\n" % zlib.crc32(payload)


def decode_line(line: bytes) -> dict[str, Any] | None:
    """The record of one log line (without its newline); None when its checksum does not
    match or it is not a JSON object with an int ``tile`` and a ``kind``."""
    payload, tab, crc = line.rpartition(b"\t")
    if not tab or len(crc) != 8:
        return None
    try:
        if int(crc, 16) != zlib.crc32(payload):
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("tile"), int):
        return None
    if record.get("kind") not in ("done", "error", "call", "discard", "plane"):
        return None
    return record


def parse_record_name(name: str) -> tuple[int, str] | None:
    """``(key, kind)`` of a per-block file in a record folder (``"edges"``),
    or None (a log, a temporary file, or not one of ours).

    >>> parse_record_name("12.edges.npy"), parse_record_name(".12.edges.npy.x.tmp")
    ((12, 'edges'), None)
    """
    if name.startswith("."):
        return None
    head, _, rest = name.partition(".")
    if head.isdigit() and rest == "edges.npy":
        return int(head), rest.partition(".")[0]
    return None


def record_tiles(record: Mapping[str, Any], tile: int) -> list[int]:
    """The tiles a record stands for.

    Parameters
    ----------
    record
        A done or error record.
    tile
        The key it is recorded under.

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


class RecordIndex:
    """Every record in one task's logs, read incrementally.

    Parameters
    ----------
    root
        The task's record folder. It may not exist yet (or any more): it then holds no
        records.

    Notes
    -----
    :meth:`refresh` lists the folder and reads each log from where the last refresh stopped,
    up to its last complete line, and files each new record by kind and key, so that looking
    one block up costs nothing more; a log that disappears (a task's records are cleared
    before it reruns) is forgotten with its records. Thread-safe.
    """

    done_by_key: dict[int, list[dict[str, Any]]]
    """Done records by key, oldest first (discarded ones included)."""
    discarded: set[str]
    """The ids of discarded done records."""
    calls: dict[int, int]
    """Calls of ``fn`` by tile."""
    last_call: dict[int, dict[str, Any]]
    """The newest call record by tile (host, pid, time where the worker wrote them)."""
    errors: list[dict[str, Any]]
    """Error records."""
    planes: dict[int, dict[str, Any]]
    """The newest plane record by tile (in a :data:`PLANES` folder's logs)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._offsets: dict[str, int] = {}
        self._lines: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.RLock()
        self._clear()

    def _clear(self) -> None:
        self.done_by_key = {}
        self.discarded = set()
        self.calls = {}
        self.last_call = {}
        self.errors = []
        self.planes = {}

    def _file(self, record: dict[str, Any]) -> None:
        kind, key = record["kind"], record["tile"]
        if kind == "done":
            self.done_by_key.setdefault(key, []).append(record)
        elif kind == "discard":
            self.discarded.add(str(record.get("id")))
        elif kind == "call":
            self.calls[key] = self.calls.get(key, 0) + 1
            self.last_call[key] = record
        elif kind == "plane":
            self.planes[key] = record
        else:
            self.errors.append(record)

    def refresh(self) -> bool:
        """Read what was appended since the last refresh; True when anything changed."""
        with self._lock:
            try:
                names = {
                    e.name
                    for e in os.scandir(self.root)
                    if e.name.startswith(LOG_PREFIX) and e.name.endswith(LOG_SUFFIX)
                }
            except FileNotFoundError:
                names = set()
            gone = self._offsets.keys() - names
            for name in gone:
                del self._offsets[name], self._lines[name]
            if gone:  # rare (records cleared): file what is left again
                self._clear()
                for name in sorted(self._lines):
                    for record in self._lines[name]:
                        self._file(record)
            changed = bool(gone)
            for name in sorted(names):
                changed |= self._read(name)
            return changed

    def _read(self, name: str) -> bool:
        offset = self._offsets.setdefault(name, 0)
        lines = self._lines.setdefault(name, [])
        try:
            with open(self.root / name, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return False
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next look
        if not end:
            return False
        for n, line in enumerate(data[:end].split(b"\n")[:-1]):
            record = decode_line(line)
            if record is None:
                _warn_once(f"{self.root / name} (line {n} after byte {offset})", "a damaged line")
                continue
            lines.append(record)
            self._file(record)
        self._offsets[name] = offset + end
        return True

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The records read so far, of ``kind`` (all kinds by default), log by log."""
        with self._lock:
            return [
                r for name in sorted(self._lines) for r in self._lines[name]
                if kind is None or r["kind"] == kind
            ]  # fmt: skip

    def done_record(self, key: int, required: Fields = {}) -> dict[str, Any] | None:  # noqa: B006
        """The newest valid done record of ``key`` not discarded, or None."""
        with self._lock:
            for record in self.done_by_key.get(key, [])[::-1]:
                live = str(record.get("id")) not in self.discarded
                if live and valid_record(key, record, required):
                    return record
            return None

    def done(self, required: Fields = {}) -> dict[int, dict[str, Any]]:  # noqa: B006
        """The valid done records not discarded, by key."""
        with self._lock:
            out = {}
            for key in self.done_by_key:
                record = self.done_record(key, required)
                if record is not None:
                    out[key] = record
            return out


class LogWriter:
    """Appends records to this process's log in one record folder (an
    :class:`~blockbuster.run.files.AppendLog`: a record is one line, never left half written
    before another)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._log = AppendLog(root, LOG_PREFIX, LOG_SUFFIX)

    def append(self, record: Mapping[str, Any], durable: bool = True) -> None:
        """Append ``record``; when ``durable``, on disk (fsync) before this returns."""
        self._log.append(encode_line(record), durable)

    def append_many(self, records: Sequence[Mapping[str, Any]], durable: bool = True) -> None:
        """Append ``records`` with one write (and one fsync when ``durable``)."""
        self._log.append(b"".join(encode_line(r) for r in records), durable)

    @property
    def path(self) -> Path | None:
        """This process's log in the folder (None before its first record)."""
        return self._log.path

    def close(self) -> None:
        self._log.close()


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
    """The records of one task: this process's writes, and everything its logs hold.

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
        self.index = RecordIndex(self.root)
        self.log = LogWriter(self.root)
        self.plane_log = LogWriter(self.root / PLANES)

    def close(self) -> None:
        """Close this process's logs (records written later open new ones)."""
        self.log.close()
        self.plane_log.close()

    def _folder(self) -> Path:
        """The record folder, created on the first write (readers never create it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    # -- worker side -----------------------------------------------------------------------

    def is_done(self, tile: int, refresh: bool = True) -> bool:
        """Whether ``tile`` has a valid done record (a damaged one counts as none); without
        ``refresh``, as of the last look at the logs."""
        return self.record(tile, refresh) is not None

    def record(self, tile: int, refresh: bool = True) -> dict[str, Any] | None:
        """The done record of ``tile`` (the block keyed by it), or None if it has no valid one."""
        if refresh:
            self.index.refresh()
        return self.index.done_record(tile, self.required)

    def discard(self, tile: int) -> None:
        """Forget the done records of the block keyed by ``tile`` (it is redone)."""
        self.index.refresh()
        for r in list(self.index.done_by_key.get(tile, ())):
            if "id" in r:
                self.log.append({"kind": "discard", "tile": tile, "id": r["id"]})
        self.edges_file(tile).unlink(missing_ok=True)

    def call_started(self, tile: int) -> None:
        # not flushed: a worker killed in fn leaves it in the page cache, and a power cut
        # only loses a count
        record = {
            "kind": "call",
            "tile": tile,
            "host": self.host,
            "pid": os.getpid(),
            "time": time.time(),
        }
        self.log.append(record, durable=False)

    def done(self, tile: int, start: float, seconds: float, **info: Any) -> None:
        self.log.append(self._done_record(tile, start, seconds, info))

    def done_many(self, done: Sequence[tuple[int, float, float, Mapping[str, Any]]]) -> None:
        """Record several blocks done, ``(tile, start, seconds, info)`` each, with one write
        and one fsync (a crash inside it leaves the lines before the one it cut)."""
        if done:
            self.log.append_many([self._done_record(*d) for d in done])

    def _done_record(
        self, tile: int, start: float, seconds: float, info: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            "kind": "done",
            "tile": tile,
            "host": self.host,
            "start": start,
            "seconds": seconds,
            **info,
            "id": uuid.uuid4().hex,
        }

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
            _warn_once(str(path), f"unreadable ({e.__class__.__name__}: {e})")
            return None
        if edges.ndim != 2 or edges.shape[1] != 4 or edges.dtype != np.int64:
            _warn_once(str(path), f"edges of shape {edges.shape} and dtype {edges.dtype}")
            return None
        return edges

    def write_plane(self, tile: int, piece: NDArray[Any]) -> None:
        """Save the tile's piece of the block map's plane (see :mod:`.thumbnail`)."""
        piece = np.ascontiguousarray(piece)
        data = base64.b64encode(zlib.compress(piece.tobytes(), 1)).decode()
        record = {"kind": "plane", "tile": tile, "dtype": piece.dtype.str, "shape": piece.shape}
        self.plane_log.append({**record, "data": data}, durable=False)

    def failed(self, tile: int, traceback: str, tiles: list[int] | None = None) -> None:
        record = {
            "kind": "error",
            "task": self.task,
            "tile": tile,
            "tiles": tiles if tiles is not None else [tile],
            "host": self.host,
            "time": time.time(),
            "traceback": traceback,
        }
        self.log.append(record)

    # -- driver side -----------------------------------------------------------------------

    def files(self, kind: str) -> Iterator[tuple[int, Path]]:
        """``(key, path)`` of every per-block file of ``kind`` (``"edges"`` or ``"plane"``)."""
        if not self.root.exists():
            return
        for entry in os.scandir(self.root):
            parsed = parse_record_name(entry.name)
            if parsed is not None and parsed[1] == kind:
                yield parsed[0], Path(entry.path)

    def done_records(self) -> dict[int, dict[str, Any]]:
        """Successful blocks by key (damaged, incomplete or discarded records left out)."""
        self.index.refresh()
        return self.index.done(self.required)

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
        self.index.refresh()
        return dict(self.index.calls)

    def errors(self) -> list[TileError]:
        self.index.refresh()
        out = []
        for d in list(self.index.errors):
            try:
                err = TileError(
                    str(d["task"]),
                    int(d["tile"]),
                    str(d["host"]),
                    float(d["time"]),
                    str(d["traceback"]),
                    tuple(record_tiles(d, d["tile"])),
                )
            except (KeyError, TypeError, ValueError):
                _warn_once(f"{self.root}: error record of {d['tile']}", "fields missing")
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
    """Counts one task's tiles from its record logs, cheaply and repeatedly.

    Parameters
    ----------
    root
        The task's record folder, ``<run_dir>/records/<task>``. It may not exist yet (or any
        more): it then counts no tiles.

    Notes
    -----
    Each :meth:`scan` lists the folder and reads only what the logs gained since the last
    one (see :class:`RecordIndex`); when nothing changed it returns the last counts.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.index = RecordIndex(self.root)
        self._counts: TileCounts | None = None
        self._lock = threading.Lock()

    def scan(self) -> TileCounts:
        """Read the logs now.

        Returns
        -------
        TileCounts
            Done tiles with their seconds, failed tiles (errors without a success) and
            started tiles.
        """
        with self._lock:
            changed = self.index.refresh()
            if not changed and self._counts is not None:
                return self._counts.copy()
            index = self.index
            counts = TileCounts(started=set(index.calls))
            errors = [record_tiles(r, r["tile"]) for r in index.errors]
            for key, done in index.done_by_key.items():
                live = [r for r in done if str(r.get("id")) not in index.discarded]
                if not live:
                    continue
                r = live[-1]
                tiles = record_tiles(r, key)
                seconds = r.get("seconds", 0.0)
                seconds = float(seconds) if isinstance(seconds, (int, float)) else 0.0
                for t in tiles:
                    counts.done[t] = seconds / len(tiles)
                if r.get("skipped"):
                    counts.skipped.update(tiles)
            for tiles in errors:
                counts.failed.update(t for t in tiles if t not in counts.done)
            self._counts = counts.copy()
            return counts
