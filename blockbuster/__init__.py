"""blockbuster: segment images far larger than memory tile by tile, stitched into one label image.

>>> from blockbuster import tile_process
>>> result = tile_process("image.zarr", fn, tile_shape=(64, 256, 256), overlap=16,
...                       write_to="labels.zarr", num_workers=2)  # doctest: +SKIP
"""

from blockbuster.driver import RunResult, TileFailureError, tile_process

__all__ = ["RunResult", "TileFailureError", "tile_process"]
__version__ = "0.1.0"
