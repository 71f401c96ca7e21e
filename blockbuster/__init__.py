"""blockbuster: segment images far larger than memory tile by tile, stitched into one label image.

>>> from blockbuster import tile_process
>>> result = tile_process("image.zarr", fn, tile_shape=(64, 256, 256), overlap=16,
...                       write_to="labels.zarr", num_workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["RunResult", "TileFailureError", "make_local_cluster", "tile_process"]

if TYPE_CHECKING:
    from blockbuster.pipeline.driver import RunResult, TileFailureError, tile_process
    from blockbuster.run.dask_engine import make_local_cluster


def __getattr__(name: str) -> Any:
    # imported lazily so that worker processes importing blockbuster.run.launch stay light
    if name == "make_local_cluster":
        from blockbuster.run.dask_engine import make_local_cluster

        return make_local_cluster
    if name in __all__:
        from blockbuster.pipeline import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'blockbuster' has no attribute {name!r}")
