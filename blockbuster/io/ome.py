"""OME-Zarr (NGFF 0.4 and 0.5) metadata: reading multiscale images, writing label images.

Reading: :func:`read_multiscale` takes the first ``multiscales`` entry of an image group (zarr
v2 ``.zattrs`` for 0.4 and earlier, zarr v3 ``attributes["ome"]`` for 0.5), with the axes
(names, types, units) and, per resolution level, the dataset path, the array shape and the
scale and translation composed from the dataset's ``coordinateTransformations`` followed by the
multiscale's own.

Writing: :func:`write_label_image` creates a multiscale label image (all its level arrays,
empty) with ``multiscales`` and ``image-label`` metadata in the version of the image it
belongs to, and :func:`register_label` lists it in the ``labels`` group of that image.
Level ``k + 1`` halves level ``k`` along the axes that :func:`plan_levels` picks; its
translation moves by half a voxel of level ``k`` because NGFF puts the origin at voxel
centres, so every level lies exactly over the same physical region.

Why the metadata is written here and not by a library (checked with zarr 3.1 on Python 3.11):

* ``funlib.persistence.prepare_ome_ds`` fails with the iohub 0.3 alpha it pulls in
  (``AxisMeta`` became a ``types.UnionType`` alias: "'types.UnionType' object is not
  callable"), and it writes images, not label images.
* iohub 0.3 is an alpha whose ``open_ome_zarr`` writes HCS/FOV images with channel names; it
  has pydantic models for label metadata but nothing that writes a label image or ``labels``.
* ome-zarr-py 0.18 (``write_multiscales_metadata``, ``write_label_metadata``) does work with
  zarr 3 for 0.4 and 0.5, but it would make s3fs, aiohttp, botocore and requests runtime
  dependencies for some twenty lines of JSON, and ``write_label_metadata`` appends the name to
  the ``labels`` list again each time a label image is rewritten.
* ome-zarr-models validates metadata but writes no label pyramid, and would be a runtime pin:
  1.7 requires pydantic < 2.13, and 1.6 under pydantic 2.14 leaves its 0.4 models not fully
  defined until ``model_rebuild``.

So the dictionaries below follow the specification (https://ngff.openmicroscopy.org/0.4/ and
/0.5/) directly, and the tests check the result with ome-zarr-models' validators and
ome-zarr-py's reader.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

logger = logging.getLogger("blockbuster")

SPACE, TIME, CHANNEL = "space", "time", "channel"

_UNITS = {
    "a": "angstrom",
    "å": "angstrom",
    "nm": "nanometer",
    "um": "micrometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "micron": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "ps": "picosecond",
    "ns": "nanosecond",
    "us": "microsecond",
    "µs": "microsecond",
    "ms": "millisecond",
    "s": "second",
    "sec": "second",
    "min": "minute",
    "h": "hour",
}


def ngff_unit(unit: str) -> str:
    """The NGFF (UDUNITS-2) name of a unit: ``"nm"`` -> ``"nanometer"``; others unchanged."""
    return _UNITS.get(unit.strip().lower(), unit) if unit else ""


@dataclass(frozen=True)
class Axis:
    """One NGFF axis: name, type (``space``, ``time``, ``channel`` or custom) and unit."""

    name: str
    type: str
    unit: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"name": self.name, "type": self.type}
        if self.unit:
            out["unit"] = self.unit
        return out


@dataclass(frozen=True)
class Level:
    """One resolution level: dataset path, array shape and composed scale and translation.

    ``scale`` and ``translation`` have one entry per axis (all axes, not only spatial ones).
    """

    path: str
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    chunks: tuple[int, ...] = ()

    def transforms_json(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"type": "scale", "scale": list(self.scale)}]
        if any(v != 0 for v in self.translation):
            out.append({"type": "translation", "translation": list(self.translation)})
        return out


@dataclass(frozen=True)
class Multiscale:
    """The first multiscale image of an OME-Zarr group.

    ``systems`` holds the multiscale's own transformations when each maps to a named
    coordinate system (SpatialData's form, see :func:`is_system_transform`), as written; the
    levels' scale and translation then come from their datasets alone (SpatialData's
    intrinsic coordinates).
    """

    version: str
    zarr_format: int
    name: str
    axes: tuple[Axis, ...]
    levels: tuple[Level, ...]
    systems: tuple[dict[str, Any], ...] = ()

    @property
    def spatial(self) -> tuple[bool, ...]:
        """Per axis, whether it is a space axis."""
        return tuple(a.type == SPACE for a in self.axes)

    def find_level(self, level: int | str, param: str = "level") -> int:
        """Index of ``level``, given as an index (negative counts from the coarsest) or a path.

        Raises
        ------
        ValueError
            With one line naming ``param`` and listing the available levels.
        """
        n = len(self.levels)
        if isinstance(level, str):
            for i, lv in enumerate(self.levels):
                if lv.path == level:
                    return i
        elif (
            isinstance(level, (int, np.integer))
            and not isinstance(level, bool)
            and -n <= int(level) < n
        ):
            return int(level) % n
        available = ", ".join(
            f"{i} ({lv.path!r}, shape {lv.shape})" for i, lv in enumerate(self.levels)
        )
        raise ValueError(
            f"{param}={level!r} is not a resolution level of this OME-Zarr image; give an index "
            f"or a dataset path of one of its {n} levels: {available}"
        )


def _infer_type(name: str) -> str:
    return {"t": TIME, "c": CHANNEL}.get(name.lower(), SPACE)


def _ome_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def _affine_scale_translation(
    tr: dict[str, Any], ndim: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Per-axis scale and translation equal to an NGFF ``affine``, if it has no rotation or shear.

    The matrix is ``ndim x (ndim + 1)`` (or the square ``(ndim + 1)`` form with a last row
    ``0 ... 0 1``). Where the transformation names its input and output axes (SpatialData
    does) and the output lists them in another order, its rows are put in input order first.
    """
    m = np.asarray(tr.get("affine"), dtype=float)
    if m.shape == (ndim + 1, ndim + 1):
        m = m[:ndim]
    if m.shape != (ndim, ndim + 1):
        raise ValueError(f"NGFF affine of shape {m.shape} does not map {ndim} axes")
    names_in = axis_names(tr.get("input"))
    names_out = axis_names(tr.get("output"))
    if names_in and names_out and names_in != names_out and sorted(names_in) == sorted(names_out):
        m = m[[names_out.index(n) for n in names_in]]
    linear = m[:, :ndim]
    if np.any(linear[~np.eye(ndim, dtype=bool)] != 0):
        raise ValueError(
            "an NGFF affine with rotation or shear cannot be written as per-axis scale and "
            "translation (only SpatialData outputs copy it as it is)"
        )
    return np.diag(linear).copy(), m[:, ndim].copy()


def axis_names(system: Any) -> list[str]:
    """Axis names of a SpatialData-style ``input``/``output`` coordinate system ([] if none)."""
    if not isinstance(system, dict):
        return []
    return [str(a.get("name")) for a in system.get("axes") or [] if isinstance(a, dict)]


def _flatten(transforms: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The transformations with every ``sequence`` replaced by its members, in order."""
    out: list[dict[str, Any]] = []
    for tr in transforms:
        if tr.get("type") == "sequence":
            members = tr.get("transformations")
            if not isinstance(members, list):
                raise ValueError("NGFF sequence transformation without a transformations list")
            out.extend(_flatten(members))
        else:
            out.append(tr)
    return out


def compose_transforms(
    transform_lists: Sequence[Sequence[dict[str, Any]]], ndim: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Compose NGFF coordinate transformations applied one list after the other.

    Parameters
    ----------
    transform_lists
        Lists of ``scale``, ``translation``, ``identity``, ``sequence`` (its members in order)
        and ``affine`` (without rotation or shear) transformations, applied in order (the
        dataset's first, then the multiscale's).
    ndim
        Number of axes.

    Returns
    -------
    scale, translation
        The single scale-then-translation equal to the composition.

    Raises
    ------
    ValueError
        For another type, values that are not inline, the wrong number of entries, or an
        affine that rotates or shears.

    Examples
    --------
    >>> compose_transforms([[{"type": "sequence", "transformations": [
    ...     {"type": "scale", "scale": [2.0, 3.0]},
    ...     {"type": "translation", "translation": [1.0, 0.0]}]}]], 2)
    ((2.0, 3.0), (1.0, 0.0))
    >>> compose_transforms([[{"type": "affine", "affine": [[2, 0, 1], [0, 3, 0]]}]], 2)
    ((2.0, 3.0), (1.0, 0.0))
    """
    scale = np.ones(ndim)
    translation = np.zeros(ndim)
    for transforms in transform_lists:
        for tr in _flatten(transforms):
            kind = tr.get("type")
            if kind == "identity":
                continue
            if kind not in ("scale", "translation", "affine"):
                raise ValueError(f"unsupported NGFF coordinate transformation type {kind!r}")
            if kind not in tr:
                raise ValueError(
                    f"NGFF {kind} transformation without inline values (path={tr.get('path')!r})"
                    " is not supported"
                )
            if kind == "affine":
                s, t = _affine_scale_translation(tr, ndim)
                scale = scale * s
                translation = translation * s + t
                continue
            values = np.asarray(tr[kind], dtype=float)
            if values.shape != (ndim,):
                raise ValueError(f"NGFF {kind} {list(values)} does not have {ndim} entries")
            if kind == "scale":
                scale = scale * values
                translation = translation * values
            else:
                translation = translation + values
    return tuple(float(v) for v in scale), tuple(float(v) for v in translation)


def is_system_transform(tr: Any) -> bool:
    """Whether a multiscale-level transformation maps to a named coordinate system.

    SpatialData writes one such transformation per coordinate system (``output.name`` is the
    system's name); they are alternatives, not steps to compose.
    """
    return isinstance(tr, dict) and isinstance(tr.get("output"), dict) and "name" in tr["output"]


def read_multiscale(group: zarr.Group) -> Multiscale | None:
    """Read the first ``multiscales`` entry of an OME-Zarr image group, or None if it has none.

    Parameters
    ----------
    group
        An open zarr group (zarr v2 for NGFF up to 0.4, v3 for 0.5).

    Returns
    -------
    Multiscale or None
        Axes (types inferred from names where the version has none), and per level the path,
        shape and composed scale and translation; SpatialData's per-coordinate-system
        transformations kept apart in ``systems``.
    """
    attrs = dict(group.attrs)
    ome = _ome_attrs(attrs)
    entries = ome.get("multiscales")
    if not entries:
        return None
    ms = entries[0]
    zarr_format = int(group.metadata.zarr_format)
    version = str(ome.get("version") or ms.get("version") or ("0.5" if zarr_format == 3 else "0.4"))
    datasets = ms.get("datasets") or []
    if not datasets:
        raise ValueError("OME-Zarr multiscales metadata lists no datasets")
    first = group[datasets[0]["path"]]
    if not isinstance(first, zarr.Array):
        raise ValueError(f"OME-Zarr dataset {datasets[0]['path']!r} is not an array")
    ndim = first.ndim
    raw_axes = ms.get("axes")
    axes: list[Axis] = []
    if raw_axes is None:  # 0.1 / 0.2: always (t, c, z, y, x)
        axes = [Axis(n, _infer_type(n)) for n in "tczyx"[-ndim:]]
    else:
        for a in raw_axes:
            if isinstance(a, str):  # 0.3
                axes.append(Axis(a, _infer_type(a)))
            else:
                name = str(a["name"])
                kind = a.get("type")
                axes.append(
                    Axis(name, str(kind) if kind else _infer_type(name), a.get("unit") or "")
                )
    if len(axes) != ndim:
        raise ValueError(
            f"OME-Zarr multiscales metadata has {len(axes)} axes but dataset "
            f"{datasets[0]['path']!r} has {ndim} dimensions"
        )
    outer = ms.get("coordinateTransformations") or []
    systems: tuple[dict[str, Any], ...] = ()
    if outer and all(is_system_transform(tr) for tr in outer):
        systems, outer = tuple(outer), []
    levels = []
    for ds in datasets:
        arr = group[ds["path"]]
        if not isinstance(arr, zarr.Array):
            raise ValueError(f"OME-Zarr dataset {ds['path']!r} is not an array")
        scale, translation = compose_transforms(
            [ds.get("coordinateTransformations") or [], outer], ndim
        )
        levels.append(
            Level(
                path=str(ds["path"]),
                shape=tuple(int(s) for s in arr.shape),
                scale=scale,
                translation=translation,
                chunks=tuple(int(c) for c in arr.chunks),
            )
        )
    return Multiscale(
        version=version,
        zarr_format=zarr_format,
        name=str(ms.get("name") or ""),
        axes=tuple(axes),
        levels=tuple(levels),
        systems=systems,
    )


def open_multiscale(path: str | Path) -> Multiscale | None:
    """:func:`read_multiscale` of the group at ``path``; None if it is no OME-Zarr image."""
    try:
        node = zarr.open(str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError):
        return None
    if not isinstance(node, zarr.Group):
        return None
    return read_multiscale(node)


def label_parent(path: str | Path) -> Path | None:
    """The OME-Zarr image that ``path`` is a label image of, if ``path`` is ``<image>/labels/<x>``.

    Returns the image group's path when ``path``'s parent is a folder named ``labels`` inside an
    existing OME-Zarr image group, else None.
    """
    p = Path(path).absolute()
    if p.parent.name != "labels":
        return None
    image = p.parent.parent
    if not image.is_dir():
        return None
    return image if open_multiscale(image) is not None else None


# -- levels --------------------------------------------------------------------------------------


def plan_levels(
    shape: Sequence[int],
    chunks: Sequence[int],
    scale: Sequence[float],
    translation: Sequence[float],
    spatial: Sequence[bool],
    max_levels: int | None = None,
) -> list[Level]:
    """Plan the resolution levels of a label pyramid built by halving.

    From one level to the next, the last two spatial axes (y, x) are halved while longer than
    one voxel; another spatial axis (z) only while longer than one voxel and its voxel size is
    at most twice the x voxel size at that level (so strongly anisotropic stacks keep their z
    resolution until x catches up). Non-spatial axes are never downsampled. Sizes round up.

    Levels stop when the longest spatial extent fits in the longest chunk extent, when no axis
    can be halved, or at ``max_levels`` levels (level 0 included).

    Parameters
    ----------
    shape, chunks, scale, translation
        Level 0, one entry per axis.
    spatial
        Per axis, whether it is a space axis.
    max_levels
        At most this many levels; None for no limit.

    Returns
    -------
    list of Level
        Paths ``"0"``, ``"1"``, ...; chunks are level 0's clipped to each level's shape.
    """
    if max_levels is not None and max_levels < 1:
        raise ValueError(f"max_levels={max_levels} must be at least 1")
    nd = len(shape)
    space = [i for i in range(nd) if spatial[i]]
    inplane = set(space[-2:])
    x = space[-1] if space else None
    largest_chunk = max((chunks[i] for i in space), default=1)
    cur_shape = tuple(int(s) for s in shape)
    cur_scale = tuple(float(s) for s in scale)
    cur_tr = tuple(float(t) for t in translation)
    levels = [
        Level(
            "0",
            cur_shape,
            cur_scale,
            cur_tr,
            tuple(min(c, s) for c, s in zip(chunks, cur_shape, strict=True)),
        )
    ]
    while max_levels is None or len(levels) < max_levels:
        if max((cur_shape[i] for i in space), default=1) <= largest_chunk:
            break
        factors = []
        for i in range(nd):
            halve = spatial[i] and cur_shape[i] > 1
            if halve and i not in inplane and x is not None:
                halve = cur_scale[i] <= 2 * cur_scale[x]
            factors.append(2 if halve else 1)
        if all(f == 1 for f in factors):
            break
        cur_tr = tuple(
            t + (f - 1) / 2 * s for t, f, s in zip(cur_tr, factors, cur_scale, strict=True)
        )
        cur_shape = tuple(math.ceil(s / f) for s, f in zip(cur_shape, factors, strict=True))
        cur_scale = tuple(s * f for s, f in zip(cur_scale, factors, strict=True))
        clipped = tuple(min(c, s) for c, s in zip(chunks, cur_shape, strict=True))
        levels.append(Level(str(len(levels)), cur_shape, cur_scale, cur_tr, clipped))
    return levels


def level_factors(finer: Level, coarser: Level) -> tuple[int, ...]:
    """Integer downsampling factors from ``finer`` to ``coarser``, from their shapes.

    Per axis the factor is the size ratio rounded to an integer (so ``33 -> 16`` and
    ``33 -> 17`` are both 2, as pyramids written by other tools round either way).

    Raises
    ------
    ValueError
        If a coarser size is larger than the finer one or does not match any integer factor
        (it must be the finer size divided by the factor, rounded up or down).
    """
    factors = []
    for nf, nc in zip(finer.shape, coarser.shape, strict=True):
        f = max(1, round(nf / nc)) if nc > 0 else 0
        if f < 1 or not (nf // f <= nc <= -(-nf // f)):
            raise ValueError(
                f"levels {finer.path!r} {finer.shape} -> {coarser.path!r} {coarser.shape}: "
                f"size {nc} is not {nf} divided by an integer factor"
            )
        factors.append(f)
    return tuple(factors)


def mirror_levels(
    image: Multiscale, first: int, keep: Sequence[int], chunks: Sequence[int]
) -> list[Level] | None:
    """Label levels matching the image's levels ``first, first + 1, ...`` on the axes ``keep``.

    Each label level takes the image level's shape and transforms on those axes, so it lies
    exactly over it. Returns None when consecutive image levels are not related by integer
    factors (then the label pyramid is planned with :func:`plan_levels` instead).
    """
    out: list[Level] = []
    for k, lv in enumerate(image.levels[first:]):
        shape = tuple(lv.shape[i] for i in keep)
        out.append(
            Level(
                path=str(k),
                shape=shape,
                scale=tuple(lv.scale[i] for i in keep),
                translation=tuple(lv.translation[i] for i in keep),
                chunks=tuple(min(c, s) for c, s in zip(chunks, shape, strict=True)),
            )
        )
    try:
        for a, b in zip(out, out[1:], strict=False):
            level_factors(a, b)
    except ValueError:
        return None
    return out


# -- writing -------------------------------------------------------------------------------------


def zarr_format_of(version: str) -> int:
    """Zarr format of an NGFF version: 2 up to 0.4, 3 from 0.5."""
    if version not in ("0.4", "0.5"):
        raise ValueError(f"writing NGFF {version} is not supported (0.4 or 0.5)")
    return 2 if version == "0.4" else 3


def multiscale_json(
    version: str, name: str, axes: Sequence[Axis], levels: Sequence[Level]
) -> dict[str, Any]:
    """The ``multiscales[0]`` entry for ``levels`` (mode-downsampled labels)."""
    entry: dict[str, Any] = {
        "name": name,
        "axes": [a.to_json() for a in axes],
        "datasets": [
            {"path": lv.path, "coordinateTransformations": lv.transforms_json()} for lv in levels
        ],
        "type": "mode",
        "metadata": {
            "description": "most frequent non-zero label of each 2x2(x2) cell",
            "method": "blockbuster.pipeline.pyramid.downsample_mode",
        },
    }
    if version == "0.4":
        entry = {"version": "0.4", **entry}
    return entry


def _set_ome_attrs(group: zarr.Group, version: str, content: dict[str, Any]) -> None:
    """Merge ``content`` into the group's OME metadata (top level for 0.4, ``ome`` for 0.5)."""
    if version == "0.4":
        group.attrs.update(content)
    else:
        current = group.attrs.get("ome")
        ome: dict[str, Any] = dict(current) if isinstance(current, dict) else {}
        ome.update(content)
        ome["version"] = version
        group.attrs["ome"] = ome


def write_label_image(
    path: str | Path,
    version: str,
    axes: Sequence[Axis],
    levels: Sequence[Level],
    dtype: np.dtype[Any] | str,
    source_image: str | None = None,
    name: str | None = None,
) -> zarr.Group:
    """Create a multiscale label image: a group with empty level arrays and its metadata.

    Parameters
    ----------
    path
        The label image group (replaced if it exists).
    version
        ``"0.4"`` (zarr v2, ``/`` chunk keys) or ``"0.5"`` (zarr v3 with dimension names).
    axes, levels
        Axes and resolution levels (with chunks).
    dtype
        An integer dtype.
    source_image
        ``image-label.source.image``: the path of the labelled image relative to this group
        (``"../../"`` inside an image's ``labels`` group); omitted when None.
    name
        The multiscale's name (default: the group's folder name).
    """
    if np.dtype(dtype).kind not in "iu":
        raise ValueError(f"label images must have an integer dtype, not {dtype}")
    zarr_format = zarr_format_of(version)
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    names = [a.name for a in axes]
    for lv in levels:
        kwargs: dict[str, Any] = {}
        if zarr_format == 2:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kwargs["dimension_names"] = names
        group.create_array(
            lv.path,
            shape=lv.shape,
            chunks=lv.chunks or lv.shape,
            dtype=dtype,
            fill_value=0,
            **kwargs,
        )
    # "colors" SHOULD be present; empty leaves the colours to the viewer
    label: dict[str, Any] = {"version": version, "colors": []}
    if source_image is not None:
        label["source"] = {"image": source_image}
    default = Path(path).name.removesuffix(".ome.zarr").removesuffix(".zarr")
    _set_ome_attrs(
        group,
        version,
        {
            "multiscales": [multiscale_json(version, name or default, axes, levels)],
            "image-label": label,
        },
    )
    return group


def register_label(image: str | Path, name: str, version: str) -> None:
    """List ``name`` in the ``labels`` group of ``image`` (created if missing), once."""
    zarr_format = zarr_format_of(version)
    root = zarr.open_group(str(image), mode="r+")
    if "labels" in root:
        labels = root["labels"]
        if not isinstance(labels, zarr.Group):
            raise ValueError(f"{image}/labels is not a zarr group")
    else:
        labels = zarr.open_group(str(Path(image) / "labels"), mode="a", zarr_format=zarr_format)  # type: ignore[arg-type]
    current = _ome_attrs(dict(labels.attrs)).get("labels") or []
    names = [str(n) for n in current]
    if name not in names:
        names.append(name)
    _set_ome_attrs(labels, version, {"labels": names})


def relative_source(label_image: str | Path, image: str | Path) -> str:
    """``image``'s path relative to the label image group, with a trailing ``/``."""
    rel = os.path.relpath(Path(image).absolute(), Path(label_image).absolute())
    return rel.replace(os.sep, "/").rstrip("/") + "/"


def add_levels(group: zarr.Group, ms: Multiscale, levels: Sequence[Level]) -> None:
    """Create the arrays of ``levels`` in a multiscale group and append them to its metadata.

    The arrays copy level 0's dtype and zarr flavour (chunk keys, dimension names); other
    metadata keys are kept.
    """
    first = group[ms.levels[0].path]
    assert isinstance(first, zarr.Array)
    for lv in levels:
        kwargs: dict[str, Any] = {}
        if ms.zarr_format == 2:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kwargs["dimension_names"] = [a.name for a in ms.axes]
        group.create_array(
            lv.path,
            shape=lv.shape,
            chunks=lv.chunks or lv.shape,
            dtype=first.dtype,
            fill_value=0,
            overwrite=True,
            **kwargs,
        )
    attrs = _ome_attrs(dict(group.attrs))
    entries = [dict(e) for e in attrs["multiscales"]]
    entries[0]["datasets"] = list(entries[0]["datasets"]) + [
        {"path": lv.path, "coordinateTransformations": lv.transforms_json()} for lv in levels
    ]
    if ms.zarr_format == 2:
        group.attrs.update({"multiscales": entries})
    else:  # keeps the version string as it was (SpatialData's "0.5-dev-spatialdata")
        _set_ome_attrs(group, str(attrs.get("version") or ms.version), {"multiscales": entries})
