"""What blockbuster created, so that it deletes nothing else.

A run directory holds a marker file (:data:`RUN_MARKER`) naming its run; an output holds a
``"blockbuster"`` entry in its zarr attributes (``zarr.json`` or ``.zattrs``) naming the same
run and whether it is complete. ``overwrite=True`` removes only paths so marked. Everything
else that exists where ``write_to`` points (a folder with other content, the input or a folder
holding it, the current directory, a file) is refused before anything is touched.

Removal renames the path aside in one step (``.<name>.removing-<id>``) before deleting it, so
a process killed halfway leaves either the whole path or a name that is plainly debris, never
a half-deleted output or run directory that looks like a real one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

RUN_MARKER = "blockbuster-run.json"
OUTPUT_ATTR = "blockbuster"
_REMOVING = ".removing-"


def new_run_id() -> str:
    """A fresh identifier for one run (kept in the run directory and the output)."""
    return uuid.uuid4().hex


def mark_run_dir(root: Path, run_id: str, output: Path) -> None:
    """Write the run directory's marker (the directory exists)."""
    from blockbuster.run.files import write_atomic

    info = {"run_id": run_id, "output": str(output)}
    write_atomic(root / RUN_MARKER, json.dumps(info).encode())


def run_dir_marker(root: Path) -> dict[str, Any] | None:
    """The marker of the run directory ``root``, or None when it is not one blockbuster made.

    A run directory of an earlier release has no marker; its ``spec.json`` beside a
    ``records`` folder identifies it.
    """
    try:
        data = json.loads((root / RUN_MARKER).read_bytes())
        if isinstance(data, dict) and isinstance(data.get("run_id"), str):
            return data
    except (OSError, ValueError):
        pass
    if (root / "spec.json").is_file() and (root / "records").is_dir():
        return {"run_id": "", "output": ""}
    return None


def is_our_run_dir(root: Path) -> bool:
    """Whether ``root`` is a run directory blockbuster made, or an empty folder."""
    return root.is_dir() and (run_dir_marker(root) is not None or not any(root.iterdir()))


def _zarr_attributes(path: Path) -> dict[str, Any] | None:
    """The attributes of the zarr array or group at ``path`` (v3 or v2), or None."""
    try:
        meta = json.loads((path / "zarr.json").read_bytes())
        attrs = meta.get("attributes", {}) if isinstance(meta, dict) else None
        return attrs if isinstance(attrs, dict) else None
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return None
    try:
        attrs = json.loads((path / ".zattrs").read_bytes())
        return attrs if isinstance(attrs, dict) else None
    except (OSError, ValueError):
        return None


def output_mark(path: Path) -> dict[str, Any] | None:
    """The ``"blockbuster"`` attribute of the output at ``path``, or None when it has none."""
    attrs = _zarr_attributes(path)
    mark = attrs.get(OUTPUT_ATTR) if attrs else None
    return mark if isinstance(mark, dict) else None


def mark_output(path: Path, **info: Any) -> None:
    """Merge ``info`` into the ``"blockbuster"`` attribute of the zarr node at ``path``."""
    import zarr

    node = zarr.open(str(path), mode="r+")
    old = node.attrs.get(OUTPUT_ATTR)
    mark: dict[str, Any] = dict(old) if isinstance(old, dict) else {}
    mark.update(info)
    node.attrs[OUTPUT_ATTR] = mark


def _protected(path: Path, input_store: Path | None, input_path: str = "") -> str | None:
    """Why ``path`` may never be replaced, or None."""
    path = path.resolve()
    cwd = Path.cwd().resolve()
    if path == Path(path.anchor):
        return "it is the filesystem root"
    if path == cwd or path in cwd.parents:
        return "it is the current directory or holds it"
    home = Path.home().resolve()
    if path == home or path in home.parents:
        return "it is the home directory or holds it"
    if input_store is not None:
        src = input_store.resolve()
        if path in (src, src / input_path) or path in src.parents:
            return "it is the input image or holds it"
    return None


def check_write_to(
    out: Path, input_store: Path | None, *, input_path: str = "", is_ome_label: bool
) -> None:
    """Refuse a ``write_to`` that is or lies inside what must not be written.

    ``write_to`` may lie inside the input store only as an OME-Zarr label image of it
    (``<image>/labels/<name>``), where NGFF puts labels.
    """
    reason = _protected(out, input_store, input_path)
    if reason is not None:
        raise ValueError(f"write_to={str(out)!r} cannot be the output: {reason}; choose a new path")
    if input_store is not None and not is_ome_label:
        src = input_store.resolve()
        if src in out.resolve().parents:
            raise ValueError(
                f"write_to={str(out)!r} lies inside the input store {str(src)!r}; write the "
                "labels elsewhere (inside an OME-Zarr image only <image>/labels/<name> is allowed)"
            )


def check_replaceable(out: Path, run_root: Path) -> None:
    """Refuse ``overwrite=True`` where it would delete anything blockbuster did not create.

    Raises
    ------
    ValueError
        If ``out`` exists and is a file, or a folder that is neither empty nor a blockbuster
        output; or if the run directory exists and is not one blockbuster made.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(
            f"write_to={str(out)!r} is an existing file, not a blockbuster output; overwrite=True "
            "replaces only outputs blockbuster wrote: choose another path or remove it yourself"
        )
    if out.is_dir() and output_mark(out) is None and any(out.iterdir()):
        raise ValueError(
            f"write_to={str(out)!r} exists and was not written by blockbuster; overwrite=True "
            "replaces only blockbuster outputs: choose another path or remove it yourself"
        )
    if run_root.exists() and not is_our_run_dir(run_root):
        raise ValueError(
            f"{str(run_root)!r} (the run directory of write_to) exists and is not a blockbuster "
            "run directory; move it away or choose another write_to"
        )


def remove_created(path: Path) -> None:
    """Delete ``path`` (a file or folder blockbuster made): renamed aside first, then removed."""
    if not path.exists() and not path.is_symlink():
        return
    aside = path.with_name(f".{path.name}{_REMOVING}{uuid.uuid4().hex[:12]}")
    os.replace(path, aside)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def remove_debris(path: Path) -> None:
    """Finish removals of ``path`` that a killed process left (its renamed-aside copies)."""
    parent = path.parent
    if not parent.is_dir():
        return
    prefix = f".{path.name}{_REMOVING}"
    for entry in parent.iterdir():
        if entry.name.startswith(prefix):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
