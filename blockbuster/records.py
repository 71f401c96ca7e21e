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
    tile (image, or final labels), strided (see :mod:`blockbuster.thumbnail`).
``<tile>.error.<id>.json``
    One per failed attempt: host, time and the traceback.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing.

    The rename is atomic, which is what a killed process needs; there is no fsync, so a machine
    losing power may lose recent records (their blocks are then simply redone).
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
        ``<run_dir>/records/<task>``; created if missing.
    task
        Task name, kept in error records.
    """

    def __init__(self, root: Path, task: str) -> None:
        self.root = Path(root)
        self.task = task
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = socket.gethostname()

    # -- worker side -----------------------------------------------------------------------

    def is_done(self, tile: int) -> bool:
        return (self.root / f"{tile}.json").exists()

    def record(self, tile: int) -> dict[str, Any] | None:
        """The done record of ``tile`` (the block keyed by it), or None if it has none."""
        try:
            return dict(json.loads((self.root / f"{tile}.json").read_bytes()))
        except FileNotFoundError:
            return None

    def call_started(self, tile: int) -> None:
        (self.root / f"{tile}.call.{uuid.uuid4().hex}").touch()

    def done(self, tile: int, start: float, seconds: float, **info: Any) -> None:
        record = {"tile": tile, "host": self.host, "start": start, "seconds": seconds, **info}
        write_atomic(self.root / f"{tile}.json", json.dumps(record).encode())

    def write_edges(self, tile: int, edges: np.ndarray) -> None:
        path = self.root / f"{tile}.edges.npy"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.npy")
        np.save(tmp, np.asarray(edges, dtype=np.int64).reshape(-1, 4))
        os.replace(tmp, path)

    def write_plane(self, tile: int, piece: np.ndarray) -> None:
        """Save the tile's piece of the block map's plane (see :mod:`blockbuster.thumbnail`)."""
        path = self.root / f"{tile}.plane.npy"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.npy")
        np.save(tmp, piece)
        os.replace(tmp, path)

    def planes(self) -> dict[int, np.ndarray]:
        """Every saved piece of the block map's plane, by tile."""
        return {tile: np.load(path) for tile, path in self._tiles_with(".plane.npy")}

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
        write_atomic(self.root / name, json.dumps(record).encode())

    # -- driver side -----------------------------------------------------------------------

    def _tiles_with(self, marker: str) -> Iterator[tuple[int, Path]]:
        if not self.root.exists():
            return
        for entry in os.scandir(self.root):
            name = entry.name
            if name.startswith(".") or marker not in name:
                continue
            head = name.split(".", 1)[0]
            if head.isdigit():
                yield int(head), Path(entry.path)

    def done_records(self) -> dict[int, dict[str, Any]]:
        """Successful blocks by tile."""
        return {
            tile: json.loads(path.read_text())
            for tile, path in self._tiles_with(".json")
            if path.name == f"{tile}.json"
        }

    def done_tiles(self) -> dict[int, float]:
        """Seconds per finished tile; a block of several tiles splits its seconds evenly."""
        out: dict[int, float] = {}
        for tile, record in self.done_records().items():
            tiles = record.get("tiles", [tile])
            for t in tiles:
                out[t] = float(record["seconds"]) / len(tiles)
        return out

    def edges(self) -> np.ndarray:
        """Every staged equivalence, ``(n, 4)`` int64."""
        parts = [np.load(path) for _, path in self._tiles_with(".edges.npy")]
        return np.concatenate(parts) if parts else np.empty((0, 4), dtype=np.int64)

    def call_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for tile, _ in self._tiles_with(".call."):
            counts[tile] = counts.get(tile, 0) + 1
        return counts

    def errors(self) -> list[TileError]:
        out = []
        for _, path in self._tiles_with(".error."):
            d = json.loads(path.read_text())
            tiles = tuple(d.get("tiles", [d["tile"]]))
            out.append(TileError(d["task"], d["tile"], d["host"], d["time"], d["traceback"], tiles))
        return sorted(out, key=lambda e: (e.tile, e.time))

    def failed_tiles(self) -> dict[int, list[TileError]]:
        """Tiles with failed attempts and no success, each with its errors (oldest first)."""
        done = self.done_records()
        out: dict[int, list[TileError]] = {}
        for err in self.errors():
            if err.tile not in done:
                out.setdefault(err.tile, []).append(err)
        return out
