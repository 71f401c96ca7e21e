"""ImageSource descriptions of plain zarr inputs, stored specs, and plain outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from blockbuster.io.outputs import create_output
from blockbuster.io.sources import ImageSource, describe_source
from blockbuster.pipeline.stage import any_chunk_stored

OLD_SPEC_SOURCE = {
    # an ImageSource as spec.json stored it before time axes and OME versions were described
    "store": "/data/img.zarr",
    "path": "",
    "shape": [2, 10, 12],
    "dtype": "float32",
    "channel_axes": 1,
    "scale": [1.0, 1.0],
    "translation": [0.0, 0.0],
    "axis_names": ["y", "x"],
    "units": ["", ""],
}


def test_old_specs_load_with_defaults() -> None:
    src = ImageSource.from_json(OLD_SPEC_SOURCE)
    assert src.shape == (2, 10, 12) and src.spatial_shape == (10, 12)
    assert not src.time_axis and src.leading_axes == () and src.ome_version == ""
    assert src.time_points == 1 and not src.time_axis
    assert ImageSource.from_json(src.to_json()) == src


def test_plain_array_with_named_axes(tmp_path: Path) -> None:
    arr = zarr.create_array(str(tmp_path / "t.zarr"), shape=(3, 8, 9), dtype="uint8")
    arr.attrs.update({"axis_names": ["t^", "y", "x"], "units": ["nm", "nm"]})
    src = describe_source(str(tmp_path / "t.zarr"), 2)
    assert src.channel_axes == 1 and src.leading_axes == ("t",) and src.time_axis
    assert src.axis_names == ("y", "x") and src.units == ("nm", "nm")
    arr.attrs.update({"axis_names": ["c^", "y", "x"]})
    src = describe_source(str(tmp_path / "t.zarr"), 2)
    assert src.leading_axes == ("c",) and not src.time_axis


def test_plain_output_keeps_time_when_asked(tmp_path: Path) -> None:
    arr = zarr.create_array(str(tmp_path / "t.zarr"), shape=(3, 8, 9), dtype="uint8")
    arr.attrs.update({"axis_names": ["t^", "y", "x"]})
    src = describe_source(str(tmp_path / "t.zarr"), 2)
    store, path = create_output(tmp_path / "o.zarr", src, (4, 4), np.uint32, keep_time=True)
    out = zarr.open_array(store, path=path or None)
    assert out.shape == (3, 8, 9) and out.chunks == (1, 4, 4)
    assert out.attrs["axis_names"] == ["t^", "y", "x"]
    store, path = create_output(tmp_path / "o.zarr", src, (4, 4), np.uint32)
    out = zarr.open_array(store, path=path or None)
    assert out.shape == (8, 9) and out.chunks == (4, 4) and path == ""


@pytest.mark.parametrize("keep_time", [False, True])
@pytest.mark.parametrize(
    ("scale", "translation"), [((2.0, 3.0), (4.0, 0.0)), ((0.5, 0.25), (1.5, 0.0))]
)
def test_plain_output_metadata_equals_funlib_prepare_ds(
    tmp_path: Path, keep_time: bool, scale: tuple[float, ...], translation: tuple[float, ...]
) -> None:
    # written by hand (funlib's import costs a second per run): funlib must read it back as
    # the array its own prepare_ds would have made
    from funlib.persistence import open_ds, prepare_ds

    src = ImageSource(
        store="in.zarr",
        path="",
        shape=(3, 8, 9),
        dtype="uint8",
        channel_axes=1,
        scale=scale,
        translation=translation,
        axis_names=("y", "x"),
        units=("nm", "nm"),
        time_axis=True,
        leading_axes=("t",),
    )
    store, _ = create_output(tmp_path / "o.zarr", src, (4, 4), np.uint32, keep_time=keep_time)
    ours = zarr.open_array(store)
    integral = all(float(v).is_integer() for v in scale + translation)
    theirs = prepare_ds(
        str(tmp_path / "f.zarr"),
        shape=ours.shape,
        offset=tuple(int(v) for v in translation) if integral else None,
        voxel_size=tuple(int(v) for v in scale) if integral else None,
        axis_names=(["t^"] if keep_time else []) + ["y", "x"],
        units=["nm", "nm"],
        chunk_shape=ours.chunks,
        dtype=np.uint32,
        mode="w",
    )
    on_disk = zarr.open_array(str(tmp_path / "f.zarr"))  # JSON lists, as ours are read
    extra = {} if integral else {"scale": list(scale), "translation": list(translation)}
    assert dict(ours.attrs) == {**on_disk.attrs, **extra}
    assert ours.metadata.to_dict() == {**on_disk.metadata.to_dict(), "attributes": dict(ours.attrs)}
    back = open_ds(store)
    assert (back.voxel_size, back.offset, back.axis_names) == (
        theirs.voxel_size,
        theirs.offset,
        theirs.axis_names,
    )


@pytest.mark.parametrize(
    ("shards", "fmt", "sep"), [(None, 3, None), ((4, 8), 3, None), (None, 2, "/"), (None, 2, ".")]
)
def test_any_chunk_stored_sees_only_written_chunks(tmp_path: Path, shards, fmt, sep) -> None:
    kwargs = {"chunk_key_encoding": {"name": "v2", "separator": sep}} if sep else {}
    arr = zarr.create_array(
        str(tmp_path / "a.zarr"),
        shape=(10, 16),
        chunks=(2, 4),
        shards=shards,
        dtype="uint32",
        zarr_format=fmt,
        **kwargs,
    )
    assert not any_chunk_stored(arr, ((0, 10), (0, 16)))
    arr[5, 9] = 7  # chunk (2, 2); shard (1, 1)
    arr[0:2, 0:4] = 0  # the fill value: zarr stores nothing
    assert any_chunk_stored(arr, ((5, 6), (9, 10)))
    assert any_chunk_stored(arr, ((0, 10), (0, 16)))
    far = ((0, 4), (0, 8)) if shards else ((0, 4), (0, 4))
    assert not any_chunk_stored(arr, far)
    inside = zarr.create_array(
        zarr.storage.LocalStore(tmp_path / "g.zarr"),
        name="x/y",
        shape=(4,),
        chunks=(2,),
        dtype="uint8",
    )
    inside[3] = 1
    assert any_chunk_stored(inside, ((2, 4),)) and not any_chunk_stored(inside, ((0, 2),))
