"""Writing a file so that readers see all of it or nothing, even after a crash: the one
way blockbuster writes its state files (records, specs, markers, worker states).

Kept free of heavy imports: worker launchers use it.
"""

from __future__ import annotations

import os
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
