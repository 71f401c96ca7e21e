"""Writing a file so that readers see all of it or nothing, even after a crash: the one
way blockbuster writes its state files (records, specs, markers, worker states).

Kept free of heavy imports: worker launchers use it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename or creation in ``folder`` durable (a no-op where directories can't be
    opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(
    path: Path, data: bytes, mode: int = 0o600, durable: bool = True, sync_dir: bool = True
) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing, even after a crash.

    The data is written to a temporary name and, when ``durable``, flushed to disk (fsync)
    before the rename, and the folder after it: without that, a machine losing power can leave
    the new name holding zero bytes. Files whose size a record keeps (face files) or that only
    draw a picture (block map pieces) skip it: a damaged one is caught by its size, or costs
    nothing. ``sync_dir=False`` skips the folder's fsync: for per-block records, whose loss
    after a power cut (the rename not yet on disk) only makes their block run again, while
    the file's own fsync guarantees that a name that survives holds all its bytes.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and sync_dir:
        fsync_dir(path.parent)


class AppendLog:
    """This process's append-only log in one folder: ``<prefix><host>.<pid>.<id><suffix>``.

    The log is created on the first append (with the folder); a log that was removed under
    it, or a forked child, starts a new one. Each append is one ``write``; one that fails (a
    full disk) is cut off again, so the log never holds part of an append followed by more.
    Thread-safe. ``durable_name`` fsyncs the folder when a log is created, so that its name
    survives a power cut.
    """

    def __init__(self, root: Path, prefix: str, suffix: str, durable_name: bool = True) -> None:
        self.root = Path(root)
        self.prefix, self.suffix, self.durable_name = prefix, suffix, durable_name
        self._fd: int | None = None
        self._name = ""
        self._pid = -1
        self._lock = threading.Lock()

    def _open(self) -> int:
        fd = self._fd
        if fd is not None and self._pid == os.getpid() and os.fstat(fd).st_nlink > 0:
            return fd
        self._close()
        self.root.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().replace(".", "-").replace("/", "-")
        name = f"{self.prefix}{host}.{os.getpid()}.{uuid.uuid4().hex[:12]}{self.suffix}"
        fd = os.open(self.root / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        if self.durable_name:
            fsync_dir(self.root)
        self._fd, self._name, self._pid = fd, name, os.getpid()
        return fd

    @property
    def path(self) -> Path | None:
        """The log this process appends to now (None before the first append)."""
        return self.root / self._name if self._fd is not None else None

    def append(self, data: bytes, durable: bool = False) -> tuple[str, int]:
        """Append ``data`` (on disk before this returns when ``durable``); return the log's
        name and the offset ``data`` starts at."""
        with self._lock:
            fd = self._open()
            offset = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(f"short write to {self._name} ({written}/{len(data)} bytes)")
                if durable:
                    os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, offset)
                self._close()  # the next append starts a fresh log
                raise
            return self._name, offset

    def sync(self) -> None:
        """Flush the data appended so far to storage (``fdatasync``); nothing before the first
        append."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.fdatasync(self._fd)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
