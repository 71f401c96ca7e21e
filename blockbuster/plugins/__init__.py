"""Ready-made segmentation functions for :func:`blockbuster.tile_process`.

``watershed_fn`` needs nothing beyond scikit-image. The Cellpose plugin lives in
``blockbuster.plugins.cellpose`` (optional extra ``blockbuster-seg[cellpose]``).
"""

from blockbuster.plugins.watershed import WatershedFn, watershed_fn

__all__ = ["WatershedFn", "watershed_fn"]
