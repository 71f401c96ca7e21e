"""The persistent equivalence table (SQLite, next to the stage).

Tables
------
``tiles``
    One row per segmented tile: how many labels its core holds (``n_core``; they are local
    labels ``1..n_core``), how many it holds in all (``n_labels``; labels seen only in the halo
    are ``n_core+1..n_labels``), plus where and how long it ran.
``fn_calls``
    How often ``fn`` was called per tile (counted as it is called, whether it returns or not).
``edges``
    Label equivalences ``(tile_a, label_a) == (tile_b, label_b)`` found by stitching, in local
    labels. The stitch block of ``tile_a`` owns its rows and replaces them when it reruns.
``resolved_tiles`` / ``resolved_labels``
    What relabel needs per tile after the equivalences are resolved: the tile's base ID and
    sequential shift, and the final ID of each of its labels that was merged.

Local labels keep rows small and let the base IDs be assigned once every tile is counted, so
there is no cap on labels per tile or on tiles. The schema uses plain integer columns only so
that a PostgreSQL backend can hold the same rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS tiles (
    tile INTEGER PRIMARY KEY,
    n_core INTEGER NOT NULL,
    n_labels INTEGER NOT NULL,
    seconds REAL,
    host TEXT
);
CREATE TABLE IF NOT EXISTS fn_calls (
    tile INTEGER PRIMARY KEY,
    calls INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS edges (
    tile_a INTEGER NOT NULL,
    label_a INTEGER NOT NULL,
    tile_b INTEGER NOT NULL,
    label_b INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS edges_tile_a ON edges (tile_a);
CREATE TABLE IF NOT EXISTS resolved_tiles (
    tile INTEGER PRIMARY KEY,
    base INTEGER NOT NULL,
    shift INTEGER NOT NULL,
    n_core INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS resolved_labels (
    tile INTEGER NOT NULL,
    label INTEGER NOT NULL,
    final INTEGER NOT NULL,
    absorbed INTEGER NOT NULL,
    PRIMARY KEY (tile, label)
) WITHOUT ROWID;
"""


class EquivalenceTable:
    """A connection to one run's equivalence table.

    Parameters
    ----------
    path
        SQLite database file; created with the schema if missing.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(str(self.path), timeout=120.0, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> EquivalenceTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- segment ------------------------------------------------------------------------------

    def count_fn_call(self, tile: int) -> None:
        self.conn.execute(
            "INSERT INTO fn_calls (tile, calls) VALUES (?, 1) "
            "ON CONFLICT (tile) DO UPDATE SET calls = calls + 1",
            (tile,),
        )

    def record_tile(self, tile: int, n_core: int, n_labels: int, seconds: float, host: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO tiles (tile, n_core, n_labels, seconds, host) "
            "VALUES (?, ?, ?, ?, ?)",
            (tile, n_core, n_labels, seconds, host),
        )

    # -- stitch -------------------------------------------------------------------------------

    def replace_edges(self, tile_a: int, rows: Iterable[tuple[int, int, int, int]]) -> None:
        """Atomically replace every edge owned by ``tile_a``."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("DELETE FROM edges WHERE tile_a = ?", (tile_a,))
            self.conn.executemany("INSERT INTO edges VALUES (?, ?, ?, ?)", rows)

    # -- resolve ------------------------------------------------------------------------------

    def tile_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(tile_ids, n_core, n_labels)`` sorted by tile id."""
        rows = self.conn.execute(
            "SELECT tile, n_core, n_labels FROM tiles ORDER BY tile"
        ).fetchall()
        arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
        return arr[:, 0], arr[:, 1], arr[:, 2]

    def all_edges(self) -> np.ndarray:
        """Every edge as an ``(n, 4)`` int64 array."""
        cur = self.conn.execute("SELECT tile_a, label_a, tile_b, label_b FROM edges")
        rows = cur.fetchall()
        return np.array(rows, dtype=np.int64).reshape(-1, 4)

    def total_fn_calls(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(SUM(calls), 0) FROM fn_calls").fetchone()[0])

    def write_resolution(self, tiles: np.ndarray, label_rows: np.ndarray) -> None:
        """Replace the resolution.

        ``tiles`` rows are ``(tile, base, shift, n_core)``; ``label_rows`` rows are
        ``(tile, label, final, absorbed)``.
        """
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("DELETE FROM resolved_tiles")
            self.conn.execute("DELETE FROM resolved_labels")
            self.conn.executemany("INSERT INTO resolved_tiles VALUES (?, ?, ?, ?)", tiles.tolist())
            self.conn.executemany(
                "INSERT INTO resolved_labels VALUES (?, ?, ?, ?)", label_rows.tolist()
            )

    # -- relabel ------------------------------------------------------------------------------

    def tile_resolution(self, tile: int) -> tuple[int, int, int, np.ndarray]:
        """``(base, shift, n_core, rows)`` of one tile; rows are ``(label, final, absorbed)``."""
        base, shift, n_core = self.conn.execute(
            "SELECT base, shift, n_core FROM resolved_tiles WHERE tile = ?", (tile,)
        ).fetchone()
        rows = self.conn.execute(
            "SELECT label, final, absorbed FROM resolved_labels WHERE tile = ? ORDER BY label",
            (tile,),
        ).fetchall()
        return int(base), int(shift), int(n_core), np.array(rows, dtype=np.int64).reshape(-1, 3)
