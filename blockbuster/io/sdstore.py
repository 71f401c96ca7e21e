"""SpatialData zarr stores: finding their elements and writing a labels element.

A SpatialData store is a zarr group without OME metadata whose attributes carry
``spatialdata_attrs``, or (stores written before the root carried them) whose ``images`` or
``labels`` elements carry ``spatialdata_attrs`` next to their OME metadata. Its image
elements are ``<store>/images/<name>``, its label elements ``<store>/labels/<name>``:
OME-Zarr multiscale images whose multiscale-level ``coordinateTransformations`` hold one
transformation per coordinate system, each naming its ``input`` and ``output`` axes (see
:func:`blockbuster.io.ome.is_system_transform`).

:func:`write_labels` creates a labels element for an image element of the same store the
way ``spatialdata`` (0.7) writes one, read by ``spatialdata.read_zarr``: the image's zarr
format and OME version string, levels mirroring the image's, the image's transformations for
every coordinate system with its channel axis removed, ``image-label`` metadata, the image's
``spatialdata_attrs`` and the name listed in ``<store>/labels``. The store's consolidated
metadata, which ``spatialdata.read_zarr`` lists elements from, is rewritten by
:func:`consolidate` once the labels are complete. This module needs zarr only, not the
``spatialdata`` package.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from blockbuster.io import ome

ROOT_ATTR = "spatialdata_attrs"
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the zarr group at ``path`` (None if it is no zarr group)."""
    if not path.is_dir():
        return None
    try:
        node = zarr.open_group(str(path), mode="r")
    except Exception:  # zarr raises several types for "not a group"
        return None
    return dict(node.attrs)


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is the root group of a SpatialData store."""
    p = Path(path)
    attrs = _attrs(p)
    if attrs is None:
        return False
    if "multiscales" in ome._ome_attrs(attrs):
        return False  # an element, or an OME-Zarr image (whose labels group is NGFF's)
    if ROOT_ATTR in attrs:
        return True
    # an older store without root attributes: its elements carry spatialdata's attributes
    # (a plain zarr group that happens to hold an ``images`` or ``labels`` group is not one)
    for kind in ("images", "labels"):
        try:
            group = zarr.open_group(str(p / kind), mode="r")
        except Exception:  # zarr raises several types for "not a group"
            continue
        for name, _ in group.groups():
            element = _attrs(p / kind / name) or {}
            if ROOT_ATTR in element or ROOT_ATTR in ome._ome_attrs(element):
                return True
    return False


def element_of(path: str | Path, kind: str) -> tuple[Path, str] | None:
    """``(store, name)`` when ``path`` is ``<store>/<kind>/<name>`` in a SpatialData store."""
    p = Path(path).absolute()
    if p.parent.name != kind or not is_store(p.parent.parent):
        return None
    return p.parent.parent, p.name


def labels_element(path: str | Path) -> tuple[Path, str] | None:
    """``(store, name)`` when ``path`` is a labels element path of a SpatialData store."""
    return element_of(path, "labels")


def image_element(path: str | Path) -> tuple[Path, str] | None:
    """``(store, name)`` when ``path`` is an image element path of a SpatialData store."""
    return element_of(path, "images")


def elements(store: Path, kind: str) -> list[str]:
    """Names of the ``kind`` (``images``, ``labels``) elements stored in ``store``."""
    folder = store / kind
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if _attrs(p) is not None)


def check_input(path: Path, param: str = "image") -> None:
    """Fail with one line when ``path`` is a SpatialData store or its ``images`` group.

    Such paths hold elements rather than an image; the message lists the image elements.
    """
    p = path.absolute()
    store = p if is_store(p) else p.parent if p.name == "images" and is_store(p.parent) else None
    if store is None:
        return
    names = [str(store / "images" / n) for n in elements(store, "images")]
    raise ValueError(
        f"{param}={str(path)!r} is a SpatialData store, not an image; pass the path of one of "
        f"its image elements: {names or '(it has none)'}"
    )


def check_output(path: Path, source_store: str, source_path: str, image: ome.Multiscale) -> None:
    """Fail with one line when a SpatialData labels element cannot be written as asked.

    Parameters
    ----------
    path
        ``write_to``: ``<store>/labels/<name>`` of a SpatialData store.
    source_store, source_path
        The input image group and the dataset path of the level it is read at.
    image
        The input image's multiscale metadata (None when the input is no OME-Zarr image).
    """
    found = labels_element(path)
    assert found is not None
    store, name = found
    if not NAME.fullmatch(name):
        raise ValueError(
            f"write_to={str(path)!r}: SpatialData element names use letters, digits, '_', '-' "
            "and '.' and do not start with '.' or '-'; choose another name"
        )
    img = image_element(source_store)
    if img is None or img[0] != store:
        raise ValueError(
            f"write_to={str(path)!r} is a labels element of the SpatialData store {str(store)!r}, "
            f"but the input {source_store!r} is not one of its image elements; pass "
            f"image='{store}/images/<name>' or write the labels elsewhere"
        )
    if not image.levels or image.levels[0].path != source_path:
        raise ValueError(
            f"write_to={str(path)!r} is a SpatialData labels element, which must lie over the "
            "image's full resolution: pass level=0"
        )
    for tr in image.systems:
        drop_channel(tr, _channel_names(image))  # raises for what cannot be copied


def _channel_names(image: ome.Multiscale) -> set[str]:
    return {a.name for a in image.axes if a.type != ome.SPACE}


def drop_channel(tr: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """A copy of a SpatialData transformation without the (non-space) axes ``names``.

    Scale and translation lose those entries, an affine its rows and columns, a ``mapAxis``
    its keys; a sequence's members are treated alike, and its ``input``/``output`` axes too.

    Raises
    ------
    ValueError
        For a transformation type that cannot be reduced.
    """
    out = copy.deepcopy(tr)
    if not names:
        return out  # no channel axis: nothing to drop
    axes_in = ome.axis_names(out.get("input"))
    axes_out = ome.axis_names(out.get("output"))
    keep_in = [i for i, n in enumerate(axes_in) if n not in names]
    keep_out = [i for i, n in enumerate(axes_out) if n not in names]
    kind = out.get("type")
    unreducible = ValueError(
        f"the image's SpatialData transformation {kind!r} does not name its axes as its values "
        "run, so the channel axis cannot be dropped from it for the labels: give the image "
        "transformations with input and output axes (spatialdata writes them so), or write "
        "the labels outside the store"
    )
    if kind in ("scale", "translation") and kind in out:
        values = list(out[kind])
        if not axes_in or len(values) != len(axes_in):
            raise unreducible
        out[kind] = [values[i] for i in keep_in]
    elif kind == "affine":
        m = np.asarray(out["affine"], dtype=float)
        if not axes_in or not axes_out or m.shape[1] != len(axes_in) + 1:
            raise unreducible
        rows = keep_out + ([len(axes_out)] if m.shape[0] == len(axes_out) + 1 else [])
        cols = keep_in + [len(axes_in)]
        out["affine"] = m[np.ix_(rows, cols)].tolist()
    elif kind == "mapAxis":
        out["mapAxis"] = {k: v for k, v in dict(out["mapAxis"]).items() if k not in names}
    elif kind == "sequence":
        out["transformations"] = [drop_channel(t, names) for t in out["transformations"]]
    elif kind != "identity":
        raise ValueError(
            f"the image's SpatialData transformation of type {kind!r} cannot be copied to its "
            "labels (identity, scale, translation, affine, mapAxis and sequence can): write "
            "the labels outside the store"
        )
    for key in ("input", "output"):
        system = out.get(key)
        if isinstance(system, dict) and isinstance(system.get("axes"), list):
            system["axes"] = [a for a in system["axes"] if a.get("name") not in names]
            system["name"] = (
                "".join(str(a.get("name")) for a in system["axes"])
                if key == "input"
                else system.get("name")
            )
    return out


def write_labels(
    path: Path,
    image_path: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: np.dtype[Any] | str,
) -> None:
    """Create a SpatialData labels element (empty levels and metadata) for an image element.

    Parameters
    ----------
    path
        ``<store>/labels/<name>`` (replaced if it exists).
    image_path
        The image element ``<store>/images/<other>`` the labels lie over (at its level 0).
    shape, chunks
        Level 0's spatial shape and chunks.
    dtype
        An integer dtype.
    """
    found = labels_element(path)
    assert found is not None
    store, name = found
    group = zarr.open_group(image_path, mode="r")
    image = ome.read_multiscale(group)
    assert image is not None
    attrs = dict(group.attrs)
    image_ome = ome._ome_attrs(attrs)
    keep = [i for i, a in enumerate(image.axes) if a.type == ome.SPACE]
    axes = [image.axes[i] for i in keep]
    levels = ome.mirror_levels(image, 0, keep, chunks)
    if levels is None or levels[0].shape != shape:
        levels = ome.plan_levels(
            shape, chunks, (1.0,) * len(shape), (0.0,) * len(shape), (True,) * len(shape)
        )
    zarr_format = image.zarr_format
    version = "0.5" if zarr_format == 3 else "0.4"
    entry = ome.multiscale_json(version, name, axes, levels)
    entry.pop("version", None)
    first = dict(image_ome["multiscales"][0])
    if "version" in first:
        entry["version"] = first["version"]
    channels = _channel_names(image)
    entry["coordinateTransformations"] = [drop_channel(tr, channels) for tr in image.systems]
    out = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    for lv in levels:
        kwargs: dict[str, Any] = {}
        if zarr_format == 2:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kwargs["dimension_names"] = [a.name for a in axes]
        out.create_array(
            lv.path, shape=lv.shape, chunks=lv.chunks, dtype=dtype, fill_value=0, **kwargs
        )
    content: dict[str, Any] = {"multiscales": [entry], "image-label": {"version": version}}
    if zarr_format == 3:
        content = {"version": image_ome.get("version", version), **content}
        out.attrs["ome"] = content
    else:
        out.attrs.update(content)
    if ROOT_ATTR in attrs:
        out.attrs[ROOT_ATTR] = attrs[ROOT_ATTR]
    ome.register_label(store, name, version)


def consolidate(store: Path) -> None:
    """Rewrite ``store``'s consolidated metadata if it has some (SpatialData reads from it)."""
    root = zarr.open_group(str(store), mode="r")
    has = (
        root.metadata.consolidated_metadata is not None
        if root.metadata.zarr_format == 3
        else (store / ".zmetadata").exists()
    )
    if has:
        zarr.consolidate_metadata(str(store), zarr_format=root.metadata.zarr_format)
