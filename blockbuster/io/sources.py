"""Opening the input image: zarr arrays (a path, a ``zarr.Array[Any]`` or a
``funlib.persistence.Array``) or OME-Zarr image groups (NGFF 0.4 or 0.5; any resolution level,
see :func:`describe_source`).

Block reads go straight to zarr with voxel slices; funlib only describes the array (offset,
voxel size, axis names, units).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from blockbuster.io import ome, sdstore
from blockbuster.io.boxes import Box, box_slices

logger = logging.getLogger("blockbuster")


@dataclass(frozen=True)
class ImageSource:
    """Where the input image lives and what it looks like, enough for any worker to reopen it.

    Parameters
    ----------
    store
        Filesystem path of the zarr store root (the image group for OME-Zarr images).
    path
        Path of the array inside the store (``""`` when the store is the array; the dataset
        path of the chosen resolution level for OME-Zarr images).
    shape
        Full array shape, leading non-spatial axes included.
    dtype
        Numpy dtype name.
    channel_axes
        Number of leading non-spatial axes (0 or more): a time axis and a channel axis both
        count.
    scale, translation
        Physical voxel size and origin per spatial axis.
    axis_names, units
        Per spatial axis.
    time_axis
        Whether the first axis is time (OME axis type ``time``, or an axis named ``t``).
    leading_axes
        Names of the leading non-spatial axes, e.g. ``("t", "c")`` (empty when unknown).
    time_scale, time_translation, time_unit
        The time axis' step, origin and unit (defaults without a time axis).
    ome_version
        NGFF version of an OME-Zarr input (``"0.4"``, ``"0.5"``), ``""`` otherwise.
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
    time_axis: bool = False
    leading_axes: tuple[str, ...] = ()
    time_scale: float = 1.0
    time_translation: float = 0.0
    time_unit: str = ""
    ome_version: str = ""

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[self.channel_axes :]

    @property
    def time_points(self) -> int:
        """Number of time points (1 without a time axis)."""
        return self.shape[0] if self.time_axis else 1

    def open(self) -> zarr.Array[Any]:
        return open_array(self.store, self.path)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageSource:
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**fields)


def open_array(store: str, path: str = "", mode: str = "r") -> zarr.Array[Any]:
    """Open one zarr array from a store root and an in-store path."""
    return zarr.open_array(store=store, path=path or None, mode=mode)  # type: ignore[arg-type]


def _store_root(arr: zarr.Array[Any], param: str) -> tuple[str, str]:
    store = arr.store
    root = getattr(store, "root", None)
    if root is None:
        raise ValueError(
            f"{param} is a zarr array in a {type(store).__name__}; workers in other processes "
            "cannot read it. Save it to a zarr store on disk and pass that path"
        )
    return str(root), arr.path


def _default_names(spatial_ndim: int) -> tuple[str, ...]:
    if spatial_ndim <= 3:
        return ("z", "y", "x")[-spatial_ndim:]
    return tuple(f"d{i}" for i in range(spatial_ndim))


def _describe_ome(
    store: str,
    ms: ome.Multiscale,
    level: int | str,
    spatial_ndim: int,
    channels: bool | None,
    param: str,
) -> ImageSource:
    """Describe one resolution level of an OME-Zarr image."""
    index = ms.find_level(level, "level")
    lv = ms.levels[index]
    space = [i for i, a in enumerate(ms.axes) if a.type == ome.SPACE]
    lead = len(ms.axes) - len(space)
    if len(space) != spatial_ndim or space != list(range(lead, len(ms.axes))):
        names = "".join(a.name for a in ms.axes)
        raise ValueError(
            f"{param} is an OME-Zarr image with axes {names!r} ({len(space)} space axes, last) "
            f"but tile_shape has {spatial_ndim} entries: give one tile size per space axis "
            f"(a {len(space)}-D tile_shape, e.g. (1, Y, X) to go plane by plane)"
        )
    leading = ms.axes[:lead]
    times = [i for i, a in enumerate(leading) if a.type == ome.TIME]
    if len(times) > 1 or (times and times[0] != 0):
        raise ValueError(
            f"{param} has axes {[a.name for a in ms.axes]}: NGFF allows one time axis, first"
        )
    others = [a.name for a in leading if a.type != ome.TIME]
    if channels is False and others:
        raise ValueError(
            f"channels=False but {param} has a channel axis {others[0]!r} in its OME metadata"
        )
    if channels and not others:
        raise ValueError(
            f"channels=True but {param} has no channel axis in its OME metadata (axes "
            f"{[a.name for a in ms.axes]})"
        )
    t = times[0] if times else None
    return ImageSource(
        store=store,
        path=lv.path,
        shape=lv.shape,
        dtype=str(open_array(store, lv.path).dtype),
        channel_axes=lead,
        scale=lv.scale[lead:],
        translation=lv.translation[lead:],
        axis_names=tuple(a.name for a in ms.axes[lead:]),
        units=tuple(a.unit for a in ms.axes[lead:]),
        time_axis=t is not None,
        leading_axes=tuple(a.name for a in leading),
        time_scale=lv.scale[t] if t is not None else 1.0,
        time_translation=lv.translation[t] if t is not None else 0.0,
        time_unit=ms.axes[t].unit if t is not None else "",
        ome_version=ms.version,
    )


def describe_source(
    image: Any,
    spatial_ndim: int,
    channels: bool | None = None,
    param: str = "image",
    level: int | str = 0,
) -> ImageSource:
    """Describe an input image given as a path, a zarr array or a funlib array.

    Parameters
    ----------
    image
        Path to a zarr array or an OME-Zarr image group (NGFF 0.4 or 0.5; a SpatialData
        store's image element ``<store>/images/<name>`` is one, described in its intrinsic
        voxel coordinates), a ``zarr.Array[Any]`` or a ``funlib.persistence.Array``.
    spatial_ndim
        Number of trailing spatial axes (the length of ``tile_shape``).
    channels
        Whether the image has a leading channel axis. ``None`` accepts one only where the
        metadata marks it (funlib axis name ending in ``^``, OME axis type ``channel``). An
        OME-Zarr image's axes come from its metadata: ``t`` (type ``time``) and ``c`` (type
        ``channel`` or custom) lead, then 2 or 3 space axes.
    param
        Parameter name used in error messages.
    level
        Resolution level of an OME-Zarr image: an index into its ``multiscales`` datasets
        (0 = full resolution, negative counts from the coarsest) or a dataset path. Only 0
        for other inputs.

    Returns
    -------
    ImageSource
        Shape (leading axes included), dtype, leading-axis count and kinds, and the spatial
        voxel size, origin, axis names and units (the level's composed transforms for OME).
    """
    # a funlib Array's module is imported by whoever made one: importing it here would cost
    # every run about a second (dask, xarray, pandas)
    funlib_arrays = sys.modules.get("funlib.persistence")

    scale: tuple[float, ...] | None = None
    translation: tuple[float, ...] | None = None
    names: tuple[str, ...] | None = None
    all_names: tuple[str, ...] | None = None
    units: tuple[str, ...] | None = None
    marked = False
    if funlib_arrays is not None and isinstance(image, funlib_arrays.Array):
        arr = image._source_data
        if not isinstance(arr, zarr.Array):
            raise ValueError(f"{param} must be backed by a zarr array on disk")
        store, path = _store_root(arr, param)
        sp = slice(len(image.shape) - spatial_ndim, None)
        scale = tuple(float(v) for v in image.voxel_size)[-spatial_ndim:]
        translation = tuple(float(v) for v in image.offset)[-spatial_ndim:]
        all_names = tuple(image.axis_names)
        names = all_names[sp]
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
        try:
            node = zarr.open(store, mode="r")
        except Exception as e:  # zarr raises several types for "not a zarr store"
            raise ValueError(
                f"{param}={str(image)!r} is not a zarr array or group ({type(e).__name__}); "
                "convert the image to zarr first (e.g. OME-Zarr with bioformats2raw)"
            ) from None
        if isinstance(node, zarr.Group):
            sdstore.check_input(Path(store), param)
            ms = ome.read_multiscale(node)
            if ms is None:
                members = sorted(k for k, _ in node.arrays())
                raise ValueError(
                    f"{param}={store!r} is a zarr group without OME multiscales metadata; pass the "
                    f"path of one of its arrays: {members}"
                )
            return _describe_ome(store, ms, level, spatial_ndim, channels, param)
        arr = node
        attrs: dict[str, Any] = dict(node.attrs)
        if "voxel_size" in attrs:
            scale = tuple(float(v) for v in attrs["voxel_size"])[-spatial_ndim:]
        if "offset" in attrs:
            translation = tuple(float(v) for v in attrs["offset"])[-spatial_ndim:]
        if "axis_names" in attrs:
            marked = any(str(n).endswith("^") for n in attrs["axis_names"])
            all_names = tuple(str(n) for n in attrs["axis_names"])
            names = all_names[-spatial_ndim:]
        if "units" in attrs:
            units = tuple(attrs["units"])[-spatial_ndim:]
    else:
        raise TypeError(
            f"{param} must be a zarr array path, a zarr.Array[Any] or a funlib.persistence.Array, "
            f"not {type(image).__name__}"
        )
    if level not in (0, "0"):
        raise ValueError(
            f"level={level!r} applies to OME-Zarr images; {param} is a plain zarr array, which "
            "has only level 0"
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
    leading = tuple(n.rstrip("^") for n in all_names[:extra]) if all_names else ()
    return ImageSource(
        store=store,
        path=path,
        shape=tuple(int(s) for s in arr.shape),
        dtype=str(arr.dtype),
        channel_axes=extra,
        scale=scale or (1.0,) * spatial_ndim,
        translation=translation or (0.0,) * spatial_ndim,
        axis_names=tuple(n.rstrip("^") for n in (names or _default_names(spatial_ndim))),
        units=units if units and len(units) == spatial_ndim else ("",) * spatial_ndim,
        time_axis=leading[:1] == ("t",),
        leading_axes=leading,
    )


def read_box(
    arr: zarr.Array[Any], box: Box, channel_axes: int, lead: tuple[int, ...] = ()
) -> NDArray[Any]:
    """Read a spatial voxel box (all channels) from the input array.

    ``lead`` indexes axes before the channel axes (the time point), which are dropped.
    """
    return np.asarray(arr[lead + (slice(None),) * channel_axes + box_slices(box)])
