"""Opening the input image and creating the stage and output arrays.

Inputs are zarr arrays (a path, a ``zarr.Array`` or a ``funlib.persistence.Array``) or OME-Zarr
image groups (NGFF 0.4 or 0.5; any resolution level, see :func:`describe_source`). Outputs are
zarr 3 arrays with funlib.persistence metadata, or OME-Zarr multiscale label images (see
:func:`create_output`): standalone when the path ends in ``.ome.zarr``, or inside an image's
``labels`` group when the path is ``<image>/labels/<name>``.

Block reads and writes go straight to zarr with voxel slices; funlib only describes the
array (offset, voxel size, axis names, units).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from funlib.geometry import Coordinate

from blockbuster import ome
from blockbuster.geometry import Box, TilePlan, box_slices

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
    def time_index(self) -> int | None:
        """Index of the time axis among the leading axes (always 0), or None."""
        return 0 if self.time_axis else None

    @property
    def time_points(self) -> int:
        """Number of time points (1 without a time axis)."""
        return self.shape[0] if self.time_axis else 1

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
        Path to a zarr array or an OME-Zarr image group (NGFF 0.4 or 0.5), a ``zarr.Array`` or
        a ``funlib.persistence.Array``.
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
    from funlib.persistence import Array  # heavy (dask); only the driver needs it

    scale: tuple[float, ...] | None = None
    translation: tuple[float, ...] | None = None
    names: tuple[str, ...] | None = None
    all_names: tuple[str, ...] | None = None
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
            f"{param} must be a zarr array path, a zarr.Array or a funlib.persistence.Array, "
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
    arr: zarr.Array, box: Box, channel_axes: int, lead: tuple[int, ...] = ()
) -> np.ndarray:
    """Read a spatial voxel box (all channels) from the input array.

    ``lead`` indexes axes before the channel axes (the time point), which are dropped.
    """
    return np.asarray(arr[lead + (slice(None),) * channel_axes + box_slices(box)])


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


def stage_chunk_file(stage_root: Path, plan_ndim: int, index: tuple[int, ...]) -> Path:
    """The file holding tile ``index``'s stage chunk (default zarr 3 chunk key encoding)."""
    return Path(stage_root, "c", *(str(i) for i in index), *("0",) * plan_ndim)


def any_chunk_stored(array: zarr.Array, box: Box) -> bool:
    """Whether any stored chunk (shard, if sharded) of ``array`` meets ``box`` (voxels).

    Where none does, the box reads as the fill value, so writing the fill value there can be
    skipped: writing zeros costs a full chunk encode check per chunk, a missing key one stat.
    """
    from zarr.core.sync import sync

    grid = array.shards or array.chunks
    ranges = [range(a // c, -(-b // c)) for (a, b), c in zip(box, grid, strict=True)]
    store_path = array.store_path
    prefix = f"{store_path.path}/" if store_path.path else ""
    keys = [prefix + array.metadata.encode_chunk_key(c) for c in itertools.product(*ranges)]

    async def check() -> bool:
        return any(await asyncio.gather(*(store_path.store.exists(k) for k in keys)))

    return bool(sync(check()))


# -- output ------------------------------------------------------------------------------------


def is_ome_path(path: str | Path) -> bool:
    """Whether ``path`` names an OME-Zarr label image output (its level 0 array is ``"0"``).

    True when it ends in ``.ome.zarr`` or is ``<image>/labels/<name>`` inside an existing
    OME-Zarr image group.
    """
    return str(path).rstrip("/").endswith(".ome.zarr") or ome.label_parent(path) is not None


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
        spatial shape.
    """
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
    plan: TilePlan,
    dtype: np.dtype | str,
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
        funlib metadata.
    source
        The input description.
    plan
        The tile plan (level 0 is chunked by ``plan.tile``).
    dtype
        Label dtype.
    max_levels
        For OME outputs not mirroring an image's levels: at most this many levels (see
        :func:`blockbuster.ome.plan_levels`); None for as many as the rule gives.
    keep_time
        Give the output the input's time axis first (shape ``(T, *spatial)``, chunks
        ``(1, *tile)``); without it the output is spatial only.

    Returns
    -------
    tuple of str
        ``(store, array_path)`` of level 0 for workers to reopen it. OME outputs have all
        their levels and metadata created (empty); fill levels 1.. with
        :func:`blockbuster.pyramid.build_pyramid` once level 0 is written.
    """
    keep = keep_time and source.time_axis
    lead: tuple[int, ...] = (source.time_points,) if keep else ()
    shape = lead + source.spatial_shape
    chunks = (1,) * len(lead) + tuple(plan.tile[plan.ndim - len(source.spatial_shape) :])
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
    from funlib.persistence import prepare_ds  # heavy (dask); only the driver needs it

    integral = all(float(v).is_integer() for v in source.scale + source.translation)
    names = list(source.axis_names)
    units = list(source.units)
    if keep:
        names.insert(0, (source.leading_axes[0] if source.leading_axes else "t") + "^")
    prepare_ds(
        str(path),
        shape=shape,
        offset=Coordinate(int(v) for v in source.translation) if integral else None,
        voxel_size=Coordinate(int(v) for v in source.scale) if integral else None,
        axis_names=names,
        units=units,
        chunk_shape=chunks,
        dtype=dtype,
        mode="w",
    )
    if not integral:
        arr = zarr.open_array(str(path), mode="r+")
        arr.attrs.update({"scale": list(source.scale), "translation": list(source.translation)})
    return str(path), ""
