"""Segmenting an image element of a ``spatialdata.SpatialData`` object (``pip install
blockbuster-seg[spatialdata]``).

The object must be backed by a zarr store (``sdata.path``) holding the image element:
:func:`segment` runs :func:`blockbuster.tile_process` on ``<store>/images/<image_key>``,
writes the labels element ``<store>/labels/<labels_key>`` (the image's transformations
copied for every coordinate system, see :mod:`blockbuster.io.sdstore`) and adds it, read
back lazily from the store, to ``sdata.labels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockbuster.io.sdstore import NAME

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from blockbuster.pipeline.driver import RunResult
    from blockbuster.pipeline.segment import SegmentFn


def segment(
    sdata: SpatialData,
    image_key: str,
    fn: SegmentFn,
    *,
    labels_key: str | None = None,
    **tile_process_options: Any,
) -> RunResult:
    """Segment the image element ``image_key`` and add the labels to ``sdata``.

    Parameters
    ----------
    sdata
        A ``SpatialData`` object backed by a zarr store (written with ``sdata.write(path)`` or
        read with ``spatialdata.read_zarr``) that holds the image element as it is stored.
    image_key
        The image element (2D ``c, y, x`` or 3D ``c, z, y, x``; its channel axis reaches
        ``fn``, the labels drop it).
    fn
        The segmentation function, as for :func:`blockbuster.tile_process`.
    labels_key
        Name of the new labels element (default: ``"<image_key>_labels"``).
    **tile_process_options
        Passed to :func:`blockbuster.tile_process` (``tile_shape`` is required;
        ``overwrite=True`` replaces a labels element blockbuster wrote before).

    Returns
    -------
    RunResult
        As from :func:`blockbuster.tile_process`; ``sdata.labels[labels_key]`` then holds
        the labels.

    Raises
    ------
    ValueError
        If ``sdata`` has no store, ``image_key`` is not an image element stored in it,
        ``labels_key`` names another element already, or ``write_to`` is given.
    """
    from spatialdata import read_zarr

    from blockbuster.api import tile_process

    if "write_to" in tile_process_options:
        raise ValueError(
            "segment writes to <store>/labels/<labels_key>: pass labels_key, not write_to"
        )
    if image_key not in sdata.images:
        raise ValueError(
            f"image_key={image_key!r} is not an image element of sdata; give one of "
            f"{sorted(sdata.images)}"
        )
    if sdata.path is None:
        raise ValueError(
            "sdata is not backed by a zarr store (sdata.path is None); write it first with "
            "sdata.write(path), then call segment on it"
        )
    store = Path(sdata.path)
    on_disk = f"images/{image_key}" in sdata.elements_paths_on_disk()
    if not on_disk or not sdata.is_self_contained(image_key):
        raise ValueError(
            f"image_key={image_key!r} is not stored in {str(store)!r} as it is in sdata; write "
            f"it first with sdata.write_element({image_key!r})"
        )
    key = labels_key if labels_key is not None else f"{image_key}_labels"
    if not NAME.fullmatch(key):
        raise ValueError(
            f"labels_key={key!r} is not a SpatialData element name: use letters, digits, "
            "'_', '-' and '.', not starting with '-' or '.'"
        )
    overwrite = bool(tile_process_options.get("overwrite", False))
    if key in sdata and not (overwrite and key in sdata.labels):
        raise ValueError(
            f"labels_key={key!r} names an element of sdata already; choose another name"
            + (" or pass overwrite=True" if key in sdata.labels else "")
        )
    result = tile_process(
        str(store / "images" / image_key),
        fn,
        write_to=str(store / "labels" / key),
        **tile_process_options,
    )
    labels = read_zarr(store, selection=("labels",)).labels[key]
    if key in sdata.labels:
        del sdata.labels[key]
    sdata.labels[key] = labels
    return result
