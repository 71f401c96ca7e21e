"""The persistent equivalence table (SQLite, in the run directory).

Only the driver writes it: workers leave per-block record files (:mod:`blockbuster.run.records`),
which the driver gathers here after stitching; relabel workers then open the table read-only
and immutable, which is safe on network filesystems too.

Tables
------
``tiles``
    One row per segmented tile: how many labels its core holds (``n_core``; they are local
    labels ``1..n_core``) and how many it holds in all (``n_labels``; labels seen only in the
    halo are ``n_core+1..n_labels``).
``edges``
    Label equivalences ``(tile_a, label_a) == (tile_b, label_b)`` found by stitching, in local
    labels.
``resolved_tiles`` / ``resolved_labels``
    What relabel needs per tile after the equivalences are resolved: the tile's base ID,
    sequential shift and core label count, and the final ID of each of its labels that was
    merged.

Local labels keep rows small and let the base IDs be assigned once every tile is counted, so
there is no cap on labels per tile or on tiles. The schema uses plain integer columns only so
that a PostgreSQL backend can hold the same rows.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger("blockbuster")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tiles (
    tile INTEGER PRIMARY KEY,
    n_core INTEGER NOT NULL,
    n_labels INTEGER NOT NULL
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

    def __init__(self, path: Path | str, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            # immutable: no locks, no journal; the driver does not write while workers read
            uri = f"{self.path.absolute().as_uri()}?mode=ro&immutable=1"
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            self.conn = sqlite3.connect(str(self.path), timeout=120.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=DELETE")
            # everything here is rebuilt from the workers' record files on every run, so a
            # power loss costs nothing that fsync would save
            self.conn.execute("PRAGMA synchronous=OFF")
            self.conn.executescript(SCHEMA)

    @classmethod
    def open_or_rebuild(cls, path: Path | str) -> EquivalenceTable:
        """Open the driver's table; a damaged file is replaced by an empty one.

        Everything in the table is gathered again from the workers' records on every run, so
        a damaged table loses nothing.
        """
        path = Path(path)
        try:
            table = cls(path)
            if table.conn.execute("PRAGMA quick_check").fetchone()[0] == "ok":
                return table
            table.close()
        except sqlite3.DatabaseError:
            pass
        logger.warning("%s is damaged; rebuilding it from the run's records", path)
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return cls(path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> EquivalenceTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- gathered from the workers' records ----------------------------------------------

    def replace_tiles(self, rows: Iterable[tuple[int, int, int]]) -> None:
        """Replace every tile row ``(tile, n_core, n_labels)``."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("DELETE FROM tiles")
            self.conn.executemany("INSERT INTO tiles VALUES (?, ?, ?)", rows)

    def replace_edges(self, edges: NDArray[Any]) -> None:
        """Replace every equivalence with the ``(n, 4)`` rows of ``edges``."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("DELETE FROM edges")
            self.conn.executemany(
                "INSERT INTO edges VALUES (?, ?, ?, ?)", np.asarray(edges).reshape(-1, 4).tolist()
            )

    # -- resolve ------------------------------------------------------------------------------

    def tile_counts(self) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
        """``(tile_ids, n_core, n_labels)`` sorted by tile id."""
        rows = self.conn.execute(
            "SELECT tile, n_core, n_labels FROM tiles ORDER BY tile"
        ).fetchall()
        arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
        return arr[:, 0], arr[:, 1], arr[:, 2]

    def all_edges(self) -> NDArray[Any]:
        """Every edge as an ``(n, 4)`` int64 array."""
        cur = self.conn.execute("SELECT tile_a, label_a, tile_b, label_b FROM edges")
        rows = cur.fetchall()
        return np.array(rows, dtype=np.int64).reshape(-1, 4)

    def write_resolution(self, tiles: NDArray[Any], label_rows: NDArray[Any]) -> None:
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

    def tile_resolution(self, tile: int) -> tuple[int, int, int, NDArray[Any]]:
        """``(base, shift, n_core, rows)`` of one tile; rows are ``(label, final, absorbed)``."""
        base, shift, n_core = self.conn.execute(
            "SELECT base, shift, n_core FROM resolved_tiles WHERE tile = ?", (tile,)
        ).fetchone()
        rows = self.conn.execute(
            "SELECT label, final, absorbed FROM resolved_labels WHERE tile = ? ORDER BY label",
            (tile,),
        ).fetchall()
        return int(base), int(shift), int(n_core), np.array(rows, dtype=np.int64).reshape(-1, 3)
