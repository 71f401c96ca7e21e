"""One driver per run: an exclusive lease on the run directory.

Two drivers on one run (a second ``tile_process`` call, or ``resubmit`` while the first still
runs) would segment every tile twice and delete each other's files. The driver therefore
holds ``lease.json`` in the run directory for as long as it works on the run:

* **Taken atomically, on shared filesystems too.** The lease is written whole under a
  temporary name and then hard-linked to ``lease.json``: ``link`` fails when the name exists,
  atomically, on local disks and on NFS, Lustre and GPFS alike (``O_EXCL`` creation is not
  reliable on every NFS client).
* **Names its holder**: host, pid, start time and a token unique to the driver.
* **Renewed by a heartbeat**: the holder touches the file every :data:`HEARTBEAT_S` seconds.
* **Stale leases are taken over, with a warning**: one whose pid is dead on this host, or
  whose heartbeat is older than :data:`STALE_AFTER_S` (a driver killed on another node). The
  stale file is renamed aside first, so of two drivers taking over at once only one wins.
* **Lost leases are noticed**: before each step that changes the run, the driver checks that
  the lease still holds its token, and stops if another driver took it over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("blockbuster")

LEASE_FILE = "lease.json"
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


class LeaseHeldError(RuntimeError):
    """Another live driver holds the run directory's lease."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as its file says."""

    host: str
    pid: int
    started: float
    token: str
    heartbeat: float

    def describe(self) -> str:
        age = max(time.time() - self.heartbeat, 0.0)
        start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, since {start}, heartbeat {age:.0f} s ago"

    def stale(self, stale_after: float = STALE_AFTER_S) -> bool:
        """Whether the holder is gone: its pid is dead on this host, or its heartbeat is old."""
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return True
        return time.time() - self.heartbeat > stale_after


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(root: Path) -> Holder | None:
    """The holder of ``root``'s lease, or None when no lease file is there.

    A lease file that cannot be read (a holder killed while writing it cannot leave one: it
    is linked into place whole) is reported with heartbeat 0, so it reads as stale.
    """
    path = Path(root) / LEASE_FILE
    try:
        heartbeat = path.stat().st_mtime
        data = json.loads(path.read_bytes())
        return Holder(
            str(data["host"]),
            int(data["pid"]),
            float(data["started"]),
            str(data["token"]),
            heartbeat,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return Holder("?", -1, 0.0, "", 0.0)


class Lease:
    """The lease of one driver on one run directory (see the module docstring).

    Parameters
    ----------
    root
        The run directory (it exists).
    stale_after
        Seconds without a heartbeat after which another driver may take the lease over.
    """

    def __init__(self, root: Path, stale_after: float = STALE_AFTER_S) -> None:
        self.root = Path(root)
        self.path = self.root / LEASE_FILE
        self.stale_after = stale_after
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _info(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "token": self.token,
        }

    def _try_link(self) -> bool:
        tmp = self.root / f".lease.{self.token}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(self._info()).encode())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> Lease:
        """Take the lease, taking over a stale one; start the heartbeat.

        Raises
        ------
        LeaseHeldError
            If a live driver holds it.
        """
        for _ in range(5):
            if self._try_link():
                self._start_heartbeat()
                return self
            holder = read_holder(self.root)
            if holder is None:
                continue  # released between our link and our read: try again
            if not holder.stale(self.stale_after):
                raise LeaseHeldError(
                    f"another blockbuster driver is running this run ({holder.describe()}; "
                    f"lease {self.path}): wait for it to finish, or stop it first"
                )
            aside = self.root / f".lease.stale.{uuid.uuid4().hex}"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue  # another driver moved it first
            moved = read_holder_file(aside)
            if holder.token and moved != holder.token:
                # not the stale lease we judged: a driver took over between our read and our
                # rename. Put its lease back and let it have the run.
                try:
                    os.link(aside, self.path)
                finally:
                    aside.unlink(missing_ok=True)
                continue
            aside.unlink(missing_ok=True)
            logger.warning(
                "taking over the lease of %s: its driver is gone (%s)", self.root, holder.describe()
            )
        raise LeaseHeldError(f"could not take the lease {self.path}: other drivers keep taking it")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="blockbuster-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self.held():
                try:
                    os.utime(self.path)
                except OSError as e:
                    logger.warning("could not renew the lease %s: %s", self.path, e)

    def held(self) -> bool:
        """Whether the lease file still carries this driver's token."""
        return read_holder_file(self.path) == self.token

    def check(self) -> None:
        """Raise :class:`LeaseHeldError` if another driver took the lease over."""
        if not self.held():
            holder = read_holder(self.root)
            who = holder.describe() if holder is not None else "nobody holds it now"
            raise LeaseHeldError(
                f"this driver lost its lease on {self.root} ({who}): another driver took the "
                "run over, so this one stops without touching it"
            )

    def stop_heartbeat(self) -> None:
        """Stop renewing the lease (before the run directory holding it is removed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this driver's."""
        self.stop_heartbeat()
        if self.root.exists() and self.held():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder_file(path: Path) -> str | None:
    """The token in a lease file, or None."""
    try:
        return str(json.loads(path.read_bytes())["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_live_lease(root: Path) -> None:
    """For workers started by hand: refuse to work on a run no live driver holds.

    Raises
    ------
    SystemExit
        If the run directory has no lease, or a stale one.
    """
    holder = read_holder(root)
    if holder is None or holder.stale():
        state = "no lease" if holder is None else f"a stale lease ({holder.describe()})"
        raise SystemExit(
            f"{root} has {state}: no driver is running it. Start one first "
            f"(blockbuster resubmit {root}), then start workers"
        )
