"""Opening the input image and creating the stage and output arrays.

Inputs are zarr arrays (a path, a ``zarr.Array`` or a ``funlib.persistence.Array``) or OME-Zarr
image groups (the first multiscale level is read). Outputs are zarr 3 arrays with
funlib.persistence metadata, or OME-Zarr 0.5 image groups when the path ends in ``.ome.zarr``.

Block reads and writes go straight to zarr with voxel slices; funlib only describes the
array (offset, voxel size, axis names, units).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from funlib.geometry import Coordinate

from blockbuster.geometry import Box, TilePlan, box_slices


@dataclass(frozen=True)
class ImageSource:
    """Where the input image lives and what it looks like, enough for any worker to reopen it.

    Parameters
    ----------
    store
        Filesystem path of the zarr store root.
    path
        Path of the array inside the store (``""`` when the store is the array).
    shape
        Full array shape, channel axes included.
    dtype
        Numpy dtype name.
    channel_axes
        Number of leading non-spatial axes (0 or more).
    scale, translation
        Physical voxel size and origin per spatial axis.
    axis_names, units
        Per spatial axis.
    """

    store: str
    path: str
    shape: tuple[int, ...]
    dtype: str
    channel_axes: int
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    axis_names: tuple[str, ...]
    units: tuple[str, ...]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[self.channel_axes :]

    def open(self) -> zarr.Array:
        return open_array(self.store, self.path)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageSource:
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**fields)


def open_array(store: str, path: str = "", mode: str = "r") -> zarr.Array:
    """Open one zarr array from a store root and an in-store path."""
    return zarr.open_array(store=store, path=path or None, mode=mode)  # type: ignore[arg-type]


def _store_root(arr: zarr.Array, param: str) -> tuple[str, str]:
    store = arr.store
    root = getattr(store, "root", None)
    if root is None:
        raise ValueError(
            f"{param} is a zarr array in a {type(store).__name__}; workers in other processes "
            "cannot read it. Save it to a zarr store on disk and pass that path"
        )
    return str(root), arr.path


def _ome_multiscale(attrs: dict[str, Any]) -> dict[str, Any] | None:
    ome = attrs.get("ome", attrs)
    ms = ome.get("multiscales")
    return ms[0] if ms else None


def describe_source(
    image: Any, spatial_ndim: int, channels: bool | None = None, param: str = "image"
) -> ImageSource:
    """Describe an input image given as a path, a zarr array or a funlib array.

    Parameters
    ----------
    image
        Path to a zarr array or an OME-Zarr image group, a ``zarr.Array`` or a
        ``funlib.persistence.Array``.
    spatial_ndim
        Number of trailing spatial axes (the length of ``tile_shape``).
    channels
        Whether the image has one leading channel axis. ``None`` accepts one only where the
        metadata marks it (funlib axis name ending in ``^``, OME axis type ``channel``).
    param
        Parameter name used in error messages.
    """
    from funlib.persistence import Array  # heavy (dask); only the driver needs it

    scale: tuple[float, ...] | None = None
    translation: tuple[float, ...] | None = None
    names: tuple[str, ...] | None = None
    units: tuple[str, ...] | None = None
    marked = False
    if isinstance(image, Array):
        arr = image._source_data
        if not isinstance(arr, zarr.Array):
            raise ValueError(f"{param} must be backed by a zarr array on disk")
        store, path = _store_root(arr, param)
        sp = slice(len(image.shape) - spatial_ndim, None)
        scale = tuple(float(v) for v in image.voxel_size)[-spatial_ndim:]
        translation = tuple(float(v) for v in image.offset)[-spatial_ndim:]
        names = tuple(image.axis_names)[sp]
        marked = image.channel_dims > 0
        units = tuple(image.units)[-spatial_ndim:] if image.units else None
    elif isinstance(image, zarr.Array):
        store, path = _store_root(image, param)
        arr = image
    elif isinstance(image, (str, Path)):
        store, path = str(image), ""
        if not Path(store).exists():
            raise FileNotFoundError(
                f"{param}={str(image)!r} does not exist; pass a zarr array path"
            )
        node = zarr.open(store, mode="r")
        if isinstance(node, zarr.Group):
            ms = _ome_multiscale(dict(node.attrs))
            if ms is None:
                members = sorted(k for k, _ in node.arrays())
                raise ValueError(
                    f"{param}={store!r} is a zarr group without OME multiscales metadata; pass the "
                    f"path of one of its arrays: {members}"
                )
            level = ms["datasets"][0]
            path = level["path"]
            arr = node[path]
            marked = any(a.get("type") == "channel" for a in ms.get("axes", []))
            axes = ms.get("axes", [])[-spatial_ndim:]
            names = tuple(a["name"] for a in axes) or None
            units = tuple(a.get("unit", "") for a in axes) or None
            for tr in level.get("coordinateTransformations", []):
                if tr["type"] == "scale":
                    scale = tuple(float(v) for v in tr["scale"])[-spatial_ndim:]
                elif tr["type"] == "translation":
                    translation = tuple(float(v) for v in tr["translation"])[-spatial_ndim:]
        else:
            arr = node
            attrs: dict[str, Any] = dict(node.attrs)
            if "voxel_size" in attrs:
                scale = tuple(float(v) for v in attrs["voxel_size"])[-spatial_ndim:]
            if "offset" in attrs:
                translation = tuple(float(v) for v in attrs["offset"])[-spatial_ndim:]
            if "axis_names" in attrs:
                marked = any(str(n).endswith("^") for n in attrs["axis_names"])
                names = tuple(attrs["axis_names"])[-spatial_ndim:]
            if "units" in attrs:
                units = tuple(attrs["units"])[-spatial_ndim:]
    else:
        raise TypeError(
            f"{param} must be a zarr array path, a zarr.Array or a funlib.persistence.Array, "
            f"not {type(image).__name__}"
        )
    extra = arr.ndim - spatial_ndim
    if extra < 0 or extra > 1:
        raise ValueError(
            f"{param} has {arr.ndim} axes (shape {arr.shape}) but tile_shape has {spatial_ndim}; "
            "give one tile size per spatial axis (an image may add one leading channel axis)"
        )
    if extra == 1 and (channels is False or (channels is None and not marked)):
        raise ValueError(
            f"{param} has {arr.ndim} axes (shape {arr.shape}) but tile_shape has {spatial_ndim}: "
            f"give a {arr.ndim}-D tile_shape (e.g. (1, Y, X) to go plane by plane), or pass "
            "channels=True if the first axis holds channels"
        )
    if extra == 0 and channels:
        raise ValueError(
            f"channels=True but {param} has only {arr.ndim} axes for a {spatial_ndim}-D "
            "tile_shape; there is no channel axis"
        )
    default_names = (
        ("z", "y", "x")[-spatial_ndim:]
        if spatial_ndim <= 3
        else tuple(f"d{i}" for i in range(spatial_ndim))
    )
    return ImageSource(
        store=store,
        path=path,
        shape=tuple(int(s) for s in arr.shape),
        dtype=str(arr.dtype),
        channel_axes=extra,
        scale=scale or (1.0,) * spatial_ndim,
        translation=translation or (0.0,) * spatial_ndim,
        axis_names=tuple(n.rstrip("^") for n in (names or default_names)),
        units=units if units and len(units) == spatial_ndim else ("",) * spatial_ndim,
    )


def read_box(arr: zarr.Array, box: Box, channel_axes: int) -> np.ndarray:
    """Read a spatial voxel box (all channels) from the input array."""
    return np.asarray(arr[(slice(None),) * channel_axes + box_slices(box)])


# -- stage -------------------------------------------------------------------------------------


def create_stage(path: Path, plan: TilePlan) -> zarr.Array:
    """Create the stage: one chunk per tile holding its labels over core plus halo.

    The array's leading axes index the tile grid; the trailing axes are
    ``plan.stage_tile_shape``. A tile writes exactly its own chunk, so concurrent writers never
    touch the same chunk, and a retried tile overwrites only itself.
    """
    rshape = plan.stage_tile_shape
    return zarr.create_array(
        store=str(path),
        shape=plan.grid + rshape,
        chunks=(1,) * plan.ndim + rshape,
        dtype=plan.stage_dtype,
        fill_value=0,
        overwrite=True,
    )


def open_stage(path: Path, mode: str = "r") -> zarr.Array:
    return zarr.open_array(store=str(path), mode=mode)


# -- output ------------------------------------------------------------------------------------


def is_ome_path(path: str | Path) -> bool:
    return str(path).rstrip("/").endswith(".ome.zarr")


def create_output(
    path: Path, source: ImageSource, plan: TilePlan, dtype: np.dtype | str
) -> tuple[str, str]:
    """Create the output label array, chunked by tile so each tile writes whole chunks.

    Returns ``(store, array_path)`` for workers to reopen it.
    """
    shape = source.spatial_shape
    if is_ome_path(path):
        if path.exists():
            shutil.rmtree(path)
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        group.create_array("0", shape=shape, chunks=plan.tile, dtype=dtype, fill_value=0)
        axes = [
            {"name": n, "type": "space", **({"unit": u} if u else {})}
            for n, u in zip(source.axis_names, source.units, strict=True)
        ]
        group.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [
                {
                    "name": path.name.removesuffix(".ome.zarr"),
                    "axes": axes,
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [
                                {"type": "scale", "scale": list(source.scale)},
                                {"type": "translation", "translation": list(source.translation)},
                            ],
                        }
                    ],
                }
            ],
            "image-label": {"source": {"image": str(source.store)}},
        }
        return str(path), "0"
    from funlib.persistence import prepare_ds  # heavy (dask); only the driver needs it

    integral = all(float(v).is_integer() for v in source.scale + source.translation)
    prepare_ds(
        str(path),
        shape=shape,
        offset=Coordinate(int(v) for v in source.translation) if integral else None,
        voxel_size=Coordinate(int(v) for v in source.scale) if integral else None,
        axis_names=list(source.axis_names),
        units=list(source.units),
        chunk_shape=plan.tile,
        dtype=dtype,
        mode="w",
    )
    if not integral:
        arr = zarr.open_array(str(path), mode="r+")
        arr.attrs.update({"scale": list(source.scale), "translation": list(source.translation)})
    return str(path), ""
