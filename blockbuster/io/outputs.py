"""Creating the output label array: a zarr 3 array with funlib.persistence metadata, or an
OME-Zarr multiscale label image (see :func:`create_output`): standalone when the path ends in
``.ome.zarr``, or inside an image's ``labels`` group when the path is ``<image>/labels/<name>``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from blockbuster.io import ome, sdstore
from blockbuster.io.sources import ImageSource

logger = logging.getLogger("blockbuster")


def is_ome_path(path: str | Path) -> bool:
    """Whether ``path`` names an OME-Zarr label image output (its level 0 array is ``"0"``).

    True when it ends in ``.ome.zarr``, is ``<image>/labels/<name>`` inside an existing
    OME-Zarr image group, or is ``<store>/labels/<name>`` in a SpatialData store.
    """
    return (
        str(path).rstrip("/").endswith(".ome.zarr")
        or ome.label_parent(path) is not None
        or sdstore.labels_element(path) is not None
    )


def _image_level(image: ome.Multiscale, source: ImageSource, parent: Path) -> int | None:
    """The level of ``image`` the labels are computed at: the input's level when the input is
    that image, else the first level with the input's spatial shape."""
    if Path(source.store).absolute() == parent:
        for i, lv in enumerate(image.levels):
            if lv.path == source.path:
                return i
    space = [i for i, s in enumerate(image.spatial) if s]
    for i, lv in enumerate(image.levels):
        if tuple(lv.shape[j] for j in space) == source.spatial_shape:
            return i
    return None


def check_output(path: str | Path, source: ImageSource) -> None:
    """Fail early when ``path`` is a label image of an OME-Zarr image that does not fit.

    Parameters
    ----------
    path
        The output path (``write_to``).
    source
        The input description.

    Raises
    ------
    ValueError
        If ``path`` is ``<image>/labels/<name>`` and no level of ``<image>`` has the input's
        spatial shape; if ``path`` is a SpatialData labels element (``<store>/labels/<name>``)
        and the input is not level 0 of an image element of the same store, or its
        transformations cannot be copied; if ``path`` is inside a SpatialData store's
        ``images``.
    """
    if sdstore.image_element(path) is not None:
        store = Path(path).absolute().parent.parent
        raise ValueError(
            f"write_to={str(path)!r} is an image element path of the SpatialData store "
            f"{str(store)!r}; labels go to '{store}/labels/<name>'"
        )
    if sdstore.labels_element(path) is not None:
        image = ome.open_multiscale(source.store) if source.ome_version else None
        if image is None:
            found = sdstore.labels_element(path)
            assert found is not None
            raise ValueError(
                f"write_to={str(path)!r} is a labels element of the SpatialData store "
                f"{str(found[0])!r}, but the input is no image element of it; pass "
                f"image='{found[0]}/images/<name>' or write the labels elsewhere"
            )
        sdstore.check_output(Path(path), source.store, source.path, image)
        return
    parent = ome.label_parent(path)
    if parent is None:
        return
    image = ome.open_multiscale(parent)
    assert image is not None
    if _image_level(image, source, parent) is None:
        shapes = [lv.shape for lv in image.levels]
        raise ValueError(
            f"write_to={str(path)!r} is a label image of {str(parent)!r}, but no level of that "
            f"image has the input's spatial shape {source.spatial_shape} (levels: {shapes})"
        )


def _ome_levels(
    path: Path,
    source: ImageSource,
    level0: ome.Level,
    spatial: tuple[bool, ...],
    keep_time: bool,
    max_levels: int | None,
) -> tuple[list[ome.Level], str, str | None]:
    """Levels, NGFF version and ``image-label`` source of an OME label image output."""
    parent = ome.label_parent(path)
    if parent is None:
        levels = ome.plan_levels(
            level0.shape, level0.chunks, level0.scale, level0.translation, spatial, max_levels
        )
        src = ome.relative_source(path, source.store) if source.ome_version else None
        return levels, "0.5", src
    image = ome.open_multiscale(parent)
    assert image is not None
    version = "0.5" if image.zarr_format == 3 else "0.4"
    first = _image_level(image, source, parent)
    if first is None:
        check_output(path, source)  # raises with the details
    assert first is not None
    keep = [i for i, a in enumerate(image.axes) if a.type == ome.SPACE]
    if keep_time:
        keep = [i for i, a in enumerate(image.axes) if a.type == ome.TIME] + keep
    mirrored = ome.mirror_levels(image, first, keep, level0.chunks)
    if mirrored is not None and mirrored[0].shape == level0.shape:
        if first > 0:
            logger.warning(
                "labels computed at level %d of %s have %d levels, the image %d "
                "(NGFF wants as many)",
                first,
                parent,
                len(mirrored),
                len(image.levels),
            )
        return mirrored, version, "../../"
    logger.warning(
        "the levels of %s are not related by integer factors; the label pyramid gets its own",
        parent,
    )
    levels = ome.plan_levels(
        level0.shape, level0.chunks, level0.scale, level0.translation, spatial, max_levels
    )
    return levels, version, "../../"


def create_output(
    path: Path,
    source: ImageSource,
    tile: tuple[int, ...],
    dtype: np.dtype[Any] | str,
    *,
    max_levels: int | None = None,
    keep_time: bool = False,
) -> tuple[str, str]:
    """Create the output label array, chunked by tile so each tile writes whole chunks.

    Parameters
    ----------
    path
        ``write_to``. Ending in ``.ome.zarr``: a standalone NGFF 0.5 label image. Of the form
        ``<image>/labels/<name>`` with ``<image>`` an OME-Zarr image group: a label image of
        that image in its NGFF version (0.4 in zarr v2, 0.5 in zarr v3), listed in its
        ``labels`` group, ``image-label.source.image = "../../"``, and levels matching the
        image's levels from the one the input was read at. Otherwise a plain zarr array with
        funlib metadata. Of the form ``<store>/labels/<name>`` in a SpatialData store: a
        labels element of the input image element (see
        :func:`blockbuster.io.sdstore.write_labels`), its transformations copied.
    source
        The input description.
    tile
        The spatial tile shape: level 0 is chunked by it (one chunk per tile).
    dtype
        Label dtype.
    max_levels
        For OME outputs not mirroring an image's levels: at most this many levels (see
        :func:`blockbuster.io.ome.plan_levels`); None for as many as the rule gives.
    keep_time
        Give the output the input's time axis first (shape ``(T, *spatial)``, chunks
        ``(1, *tile)``); without it the output is spatial only.

    Returns
    -------
    tuple of str
        ``(store, array_path)`` of level 0 for workers to reopen it. OME outputs have all
        their levels and metadata created (empty); fill levels 1.. with
        :func:`blockbuster.pipeline.pyramid.build_pyramid` once level 0 is written.
    """
    keep = keep_time and source.time_axis
    lead: tuple[int, ...] = (source.time_points,) if keep else ()
    shape = lead + source.spatial_shape
    chunks = (1,) * len(lead) + tuple(tile[len(tile) - len(source.spatial_shape) :])
    if sdstore.labels_element(path) is not None:
        # replaces an element there (this run's, checked by the driver), as zarr's mode "w"
        sdstore.write_labels(path, source.store, shape, chunks, dtype)
        return str(path), "0"
    if is_ome_path(path):
        axes = [
            ome.Axis(n, ome.SPACE, ome.ngff_unit(u))
            for n, u in zip(source.axis_names, source.units, strict=True)
        ]
        if keep:
            name = source.leading_axes[0] if source.leading_axes else "t"
            axes.insert(0, ome.Axis(name, ome.TIME, ome.ngff_unit(source.time_unit)))
        level0 = ome.Level(
            "0",
            shape,
            ((source.time_scale,) if keep else ()) + source.scale,
            ((source.time_translation,) if keep else ()) + source.translation,
            chunks,
        )
        spatial = tuple(a.type == ome.SPACE for a in axes)
        levels, version, src = _ome_levels(path, source, level0, spatial, keep, max_levels)
        if path.exists():
            shutil.rmtree(path)
        ome.write_label_image(path, version, axes, levels, dtype, source_image=src)
        parent = ome.label_parent(path)
        if parent is not None:
            ome.register_label(parent, path.name, version)
        return str(path), "0"
    # funlib.persistence's metadata keys, written here: importing it costs about a second
    # (dask, xarray, pandas) on every run, and sources.py reads the same keys back
    integral = all(float(v).is_integer() for v in source.scale + source.translation)
    names = list(source.axis_names)
    units = list(source.units)
    if keep:
        names.insert(0, (source.leading_axes[0] if source.leading_axes else "t") + "^")
    arr = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype)
    ndim = len(source.spatial_shape)  # funlib gives channel-like axes no size or offset
    arr.attrs.put(
        {
            "axis_names": names,
            "units": units,
            "voxel_size": [int(v) for v in source.scale] if integral else [1] * ndim,
            "offset": [int(v) for v in source.translation] if integral else [0] * ndim,
            "types": ["channel" if n.endswith("^") else "space" for n in names],
        }
    )
    if not integral:
        arr.attrs.update({"scale": list(source.scale), "translation": list(source.translation)})
    return str(path), ""


def side_prefix(output: str | Path) -> str:
    """The prefix of the files a run writes beside its output (block map, status page):
    ``<output>.``, or for a SpatialData labels element ``<store>.<name>.``, beside the store
    (inside it, they would be files among its elements)."""
    from blockbuster.io import sdstore

    element = sdstore.labels_element(output)
    if element is not None:
        store, name = element
        return f"{store}.{name}."
    return f"{output}."
