"""Helpers that write OME-Zarr (NGFF 0.4 / 0.5) images for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr


def write_ngff(
    path: Path,
    version: str,
    levels: list[np.ndarray],
    axes: list[dict[str, Any]] | list[str] | None,
    transforms: list[list[dict[str, Any]]] | None = None,
    outer: list[dict[str, Any]] | None = None,
    paths: list[str] | None = None,
) -> str:
    """Write an OME-Zarr image by hand, following the NGFF spec of ``version``.

    0.5 puts the metadata under ``attributes["ome"]`` of a zarr v3 group (arrays with
    dimension names); earlier versions put it in the ``.zattrs`` of a zarr v2 group (arrays
    with ``/`` chunk keys), with ``version`` inside the multiscale.
    """
    zarr_format = 3 if version == "0.5" else 2
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    paths = paths or [str(i) for i in range(len(levels))]
    names = None
    if axes is not None:
        names = [a if isinstance(a, str) else a["name"] for a in axes]
    for p, data in zip(paths, levels):
        kwargs: dict[str, Any] = {}
        if zarr_format == 2:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        elif names:
            kwargs["dimension_names"] = names
        arr = group.create_array(p, shape=data.shape, dtype=data.dtype, **kwargs)
        arr[:] = data
    datasets: list[dict[str, Any]] = []
    for i, p in enumerate(paths):
        ds: dict[str, Any] = {"path": p}
        if transforms is not None:
            ds["coordinateTransformations"] = transforms[i]
        datasets.append(ds)
    ms: dict[str, Any] = {"name": "img", "datasets": datasets}
    if axes is not None:
        ms["axes"] = axes
    if outer is not None:
        ms["coordinateTransformations"] = outer
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    else:
        group.attrs["multiscales"] = [{"version": version, **ms}]
    return str(path)


def space(*names: str, unit: str = "micrometer") -> list[dict[str, Any]]:
    return [{"name": n, "type": "space", "unit": unit} for n in names]
