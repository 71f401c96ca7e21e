"""blockbuster: segment images far larger than memory tile by tile, stitched into one label image.

Segment a zarr image on two worker processes::

    from blockbuster import tile_process
    from blockbuster.plugins import watershed_fn

    result = tile_process("image.zarr", watershed_fn(threshold=700), (64, 256, 256), 16,
                          write_to="labels.zarr", num_workers=2)

Your own blockwise steps are :class:`Task` objects, run (and resumed) by :func:`run_tasks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
#: the distribution this package comes from (``pip install blockbuster-seg``)
__distribution__ = "blockbuster-seg"
__all__ = [
    "Block",
    "BlockFailureError",
    "RunConfig",
    "RunResult",
    "Task",
    "TileFailureError",
    "UpstreamNotDone",
    "make_local_cluster",
    "run_tasks",
    "tile_process",
]


def _check_not_overwritten() -> None:
    """Refuse to run where the PyPI project ``blockbuster`` (another package with this import
    name) was installed into the same folder: each overwrote files of the other."""
    from importlib import metadata
    from pathlib import Path

    try:
        other = metadata.distribution("blockbuster")
    except metadata.PackageNotFoundError:
        return
    if (other.metadata["Summary"] or "").startswith("Segment microscopy"):
        return  # this project, from before it was renamed (a checkout's old egg-info)
    here = Path(__file__).resolve().parent
    for f in other.files or ():
        if (
            f.parts[:1] == ("blockbuster",)
            and Path(str(other.locate_file(f))).resolve().parent == here
        ):
            raise ImportError(
                f"the PyPI project 'blockbuster' {other.version} (an asyncio blocking-call "
                f"detector, not blockbuster-seg) is installed in {here.parent} too, and the two "
                "overwrite each other's files there: pip uninstall -y blockbuster "
                "blockbuster-seg, then pip install blockbuster-seg (or keep them in separate "
                "environments)"
            )


_check_not_overwritten()

if TYPE_CHECKING:
    from blockbuster.api import run_tasks, tile_process
    from blockbuster.config import RunConfig
    from blockbuster.pipeline.driver import RunResult, TileFailureError
    from blockbuster.run.dask_engine import make_local_cluster
    from blockbuster.run.driver import BlockFailureError
    from blockbuster.run.task import Block, Task, UpstreamNotDone

#: where each public name lives (imported on first use, so that worker processes stay light)
_HOMES = {
    "tile_process": "blockbuster.api",
    "RunResult": "blockbuster.pipeline.driver",
    "TileFailureError": "blockbuster.pipeline.driver",
    "make_local_cluster": "blockbuster.run.dask_engine",
    "run_tasks": "blockbuster.api",
    "RunConfig": "blockbuster.config",
    "BlockFailureError": "blockbuster.run.driver",
    "Task": "blockbuster.run.task",
    "Block": "blockbuster.run.task",
    "UpstreamNotDone": "blockbuster.run.task",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'blockbuster' has no attribute {name!r}")
