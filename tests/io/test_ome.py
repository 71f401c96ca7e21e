"""OME-Zarr (NGFF 0.4 / 0.5) input description and label image output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from ngff import space, write_ngff

from blockbuster.io.outputs import check_output, create_output, is_ome_path
from blockbuster.io.sources import describe_source, ome

VERSIONS = ["0.4", "0.5"]


def scale_tr(scale: list[float], translation: list[float] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if translation is not None:
        out.append({"type": "translation", "translation": translation})
    return out


def czyx_image(path: Path, version: str) -> str:
    """2 channels, 3 levels (y, x halved; z kept), dataset and multiscale transforms."""
    rng = np.random.default_rng(0)
    shapes = [(2, 6, 20, 30), (2, 6, 10, 15), (2, 6, 5, 8)]
    levels = [rng.integers(0, 100, s).astype(np.uint16) for s in shapes]
    axes = [{"name": "c", "type": "channel"}, *space("z", "y", "x")]
    transforms = [
        scale_tr([1, 3, 0.5, 0.5], [0, 1, 2, 3]),
        scale_tr([1, 3, 1, 1], [0, 1, 2.25, 3.25]),
        scale_tr([1, 3, 2, 2], [0, 1, 2.75, 3.75]),
    ]
    outer = scale_tr([1, 2, 2, 2], [0, 10, 0, 0])
    return write_ngff(path, version, levels, axes, transforms, outer)


def test_transforms_compose_in_order() -> None:
    scale, tr = ome.compose_transforms(
        [scale_tr([2.0, 3.0], [1.0, 1.0]), [{"type": "identity"}, *scale_tr([10.0, 1.0])]], 2
    )
    # x -> 10 * (2 x + 1), y -> 3 y + 1
    assert scale == (20.0, 3.0)
    assert tr == (10.0, 1.0)
    with pytest.raises(ValueError, match="3 entries"):
        ome.compose_transforms([scale_tr([1.0, 1.0])], 3)
    with pytest.raises(ValueError, match="inline values"):
        ome.compose_transforms([[{"type": "scale", "path": "s"}]], 2)


def test_sequence_and_affine_transforms() -> None:
    seq = {
        "type": "sequence",
        "transformations": [
            {"type": "scale", "scale": [2.0, 3.0]},
            {"type": "sequence", "transformations": [{"type": "identity"}]},
            {"type": "translation", "translation": [1.0, -1.0]},
        ],
    }
    assert ome.compose_transforms([[seq]], 2) == ((2.0, 3.0), (1.0, -1.0))
    # the affine after a scale: its scale multiplies the translation so far
    affine = {"type": "affine", "affine": [[2.0, 0.0, 1.0], [0.0, 4.0, 0.0], [0.0, 0.0, 1.0]]}
    assert ome.compose_transforms([[seq, affine]], 2) == ((4.0, 12.0), (3.0, -4.0))
    # SpatialData names the axes: output rows in another order are put in input order
    axes = [{"name": "y"}, {"name": "x"}]
    swapped = {
        "type": "affine",
        "affine": [[0.0, 3.0, 5.0], [2.0, 0.0, 7.0]],
        "input": {"name": "yx", "axes": axes},
        "output": {"name": "global", "axes": axes[::-1]},
    }
    assert ome.compose_transforms([[swapped]], 2) == ((2.0, 3.0), (7.0, 5.0))
    rotation = {"type": "affine", "affine": [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]}
    with pytest.raises(ValueError, match="rotation or shear cannot be written as per-axis"):
        ome.compose_transforms([[rotation]], 2)
    with pytest.raises(ValueError, match="does not map 3 axes"):
        ome.compose_transforms([[affine]], 3)


def test_spatialdata_coordinate_systems_are_kept_apart(tmp_path: Path) -> None:
    """One multiscale transformation per named coordinate system (SpatialData's form):
    alternatives, not steps, so levels keep their datasets' transforms alone."""
    systems = [
        {"type": "scale", "scale": [1.0, 2.0, 2.0], "output": {"name": "global"}},
        {"type": "affine", "affine": [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]],
         "output": {"name": "aligned"}},
    ]  # fmt: skip
    axes = [{"name": "c", "type": "channel"}, *space("y", "x")]
    level = np.zeros((2, 8, 8), np.uint8)
    write_ngff(tmp_path / "img", "0.4", [level], axes, [scale_tr([1, 0.5, 0.5])], systems)
    ms = ome.read_multiscale(zarr.open_group(str(tmp_path / "img"), mode="r"))
    assert ms is not None
    assert ms.systems == tuple(systems)
    assert (ms.levels[0].scale, ms.levels[0].translation) == ((1.0, 0.5, 0.5), (0.0, 0.0, 0.0))


@pytest.mark.parametrize("version", VERSIONS)
def test_describe_levels_axes_and_composed_transforms(tmp_path: Path, version: str) -> None:
    img = czyx_image(tmp_path / "img.ome.zarr", version)
    src = describe_source(img, 3)
    assert src.path == "0"
    assert src.shape == (2, 6, 20, 30)
    assert src.spatial_shape == (6, 20, 30)
    assert src.channel_axes == 1 and src.leading_axes == ("c",)
    assert not src.time_axis and src.time_points == 1
    assert src.axis_names == ("z", "y", "x")
    assert src.units == ("micrometer",) * 3
    assert src.ome_version == version
    # dataset transforms, then the multiscale's: scale 2, then translation 10 along z
    assert src.scale == (6.0, 1.0, 1.0)
    assert src.translation == (12.0, 4.0, 6.0)
    one = describe_source(img, 3, level=1)
    assert one == describe_source(img, 3, level="1")
    assert one.path == "1" and one.shape == (2, 6, 10, 15)
    assert one.scale == (6.0, 2.0, 2.0)
    assert one.translation == (12.0, 4.5, 6.5)
    last = describe_source(img, 3, level=-1)
    assert last.path == "2" and last.scale == (6.0, 4.0, 4.0)
    assert last.open().shape == (2, 6, 5, 8)
    # the stored description round-trips
    assert type(one).from_json(json.loads(json.dumps(one.to_json()))) == one


@pytest.mark.parametrize("version", VERSIONS)
def test_time_and_channel_axes(tmp_path: Path, version: str) -> None:
    data = np.zeros((4, 3, 5, 16, 18), dtype=np.uint8)
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        *space("z", "y", "x", unit="nanometer"),
    ]
    img = write_ngff(
        tmp_path / "t.ome.zarr",
        version,
        [data],
        axes,
        [scale_tr([2.5, 1, 40, 8, 8], [100, 0, 0, 0, 0])],
    )
    src = describe_source(img, 3)
    assert src.channel_axes == 2 and src.leading_axes == ("t", "c")
    assert src.time_axis and src.time_points == 4 and src.shape[0] == 4
    assert (src.time_scale, src.time_translation, src.time_unit) == (2.5, 100.0, "second")
    assert src.spatial_shape == (5, 16, 18)
    assert src.scale == (40.0, 8.0, 8.0) and src.units == ("nanometer",) * 3
    with pytest.raises(ValueError, match="channels=False but image has a channel axis 'c'"):
        describe_source(img, 3, channels=False)
    # a time series of 2D images: no channel axis
    img2 = write_ngff(
        tmp_path / "ty.ome.zarr",
        version,
        [np.zeros((3, 10, 12), np.uint8)],
        [{"name": "t", "type": "time"}, *space("y", "x")],
        [scale_tr([1.0, 1.0, 1.0])],
    )
    src2 = describe_source(img2, 2)
    assert src2.time_axis and src2.channel_axes == 1 and src2.leading_axes == ("t",)
    with pytest.raises(ValueError, match="channels=True but image has no channel axis"):
        describe_source(img2, 2, channels=True)


def test_bad_level_and_axes_give_one_line_errors(tmp_path: Path) -> None:
    img = czyx_image(tmp_path / "img.ome.zarr", "0.5")
    for bad in (3, -4, "s1", True):
        with pytest.raises(ValueError) as info:
            describe_source(img, 3, level=bad)
        msg = str(info.value)
        assert "\n" not in msg
        assert msg.startswith(f"level={bad!r} is not a resolution level")
        assert "0 ('0', shape (2, 6, 20, 30)), 1 ('1'" in msg and "2 ('2'" in msg
    with pytest.raises(ValueError, match="3 space axes.*tile_shape has 2 entries"):
        describe_source(img, 2)
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), shape=(8, 8), dtype="uint8")
    with pytest.raises(ValueError, match="level=1 applies to OME-Zarr images"):
        describe_source(str(plain), 2, level=1)
    assert describe_source(str(plain), 2, level=0).shape == (8, 8)


def test_older_versions_without_axis_types(tmp_path: Path) -> None:
    data = np.zeros((1, 2, 4, 6, 8), np.uint8)
    # 0.3: axes are names only; 0.2: no axes (always t, c, z, y, x), no transforms
    img3 = write_ngff(tmp_path / "v3.zarr", "0.3", [data], ["t", "c", "z", "y", "x"])
    img2 = write_ngff(tmp_path / "v2.zarr", "0.2", [data], None)
    for img in (img3, img2):
        src = describe_source(img, 3)
        assert src.leading_axes == ("t", "c") and src.time_axis
        assert src.spatial_shape == (4, 6, 8) and src.scale == (1.0, 1.0, 1.0)
        assert src.ome_version in ("0.2", "0.3")


@pytest.mark.parametrize("version", VERSIONS)
def test_images_written_by_ome_zarr_py(tmp_path: Path, version: str) -> None:
    import ome_zarr.format as fmt_mod
    import ome_zarr.writer as writer

    fmt = fmt_mod.FormatV04() if version == "0.4" else fmt_mod.FormatV05()
    data = np.random.default_rng(1).random((2, 10, 33, 41)).astype(np.float32)
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=fmt.zarr_format)
    writer.write_image(
        data,
        group,
        scale_factors=[2, 4],
        fmt=fmt,
        axes=["c", "z", "y", "x"],
        scale={"c": 1.0, "z": 2.0, "y": 0.5, "x": 0.5},
        axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )
    ms = group.attrs["ome" if version == "0.5" else "multiscales"]
    entry = (ms["multiscales"] if version == "0.5" else ms)[0]
    src = describe_source(str(tmp_path / "img.ome.zarr"), 3)
    assert src.ome_version == version
    assert src.shape == (2, 10, 33, 41) and src.leading_axes == ("c",)
    assert src.scale == (2.0, 0.5, 0.5) and src.units == ("micrometer",) * 3
    path1 = entry["datasets"][1]["path"]
    one = describe_source(str(tmp_path / "img.ome.zarr"), 3, level=path1)
    scale1 = entry["datasets"][1]["coordinateTransformations"][0]["scale"]
    assert one.shape == (2, 10, 16, 20)
    assert one.scale == tuple(scale1[1:])


# -- output ------------------------------------------------------------------------------------


def ome_attrs(path: Path) -> dict[str, Any]:
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    return attrs.get("ome", attrs)


def validate_with_ome_zarr_models(image: Path, version: str) -> None:
    """Validate an image with its labels by ome-zarr-models."""
    import importlib

    models = importlib.import_module(f"ome_zarr_models.v0{version[-1]}")
    if version == "0.4":  # forward refs some pydantic releases leave unresolved
        import pydantic_zarr.v2 as pz2

        for cls in (models.Image, models.ImageLabel, models.Labels):
            cls.model_rebuild(
                _types_namespace={"GroupSpec": pz2.GroupSpec, "ArraySpec": pz2.ArraySpec}
            )
    parsed = models.Image.from_zarr(zarr.open_group(str(image), mode="r"))
    assert parsed.labels is not None
    for name in ome_attrs(image / "labels")["labels"]:
        models.ImageLabel.from_zarr(zarr.open_group(str(image / "labels" / name), mode="r"))


@pytest.mark.parametrize("version", VERSIONS)
def test_label_image_inside_the_image(tmp_path: Path, version: str) -> None:
    img = tmp_path / "img.ome.zarr"
    czyx_image(img, version)
    src = describe_source(str(img), 3)
    out = img / "labels" / "cells"
    assert is_ome_path(out) and is_ome_path(tmp_path / "x.ome.zarr")
    assert not is_ome_path(tmp_path / "labels" / "cells") and not is_ome_path(tmp_path / "o.zarr")
    check_output(out, src)
    assert create_output(out, src, (3, 8, 8), "uint32") == (
        str(out),
        "0",
    )
    # zarr v2 (.zattrs) for a 0.4 image, v3 for 0.5
    assert (out / (".zattrs" if version == "0.4" else "zarr.json")).exists()
    assert (out / "0" / (".zarray" if version == "0.4" else "zarr.json")).exists()
    assert ome_attrs(img / "labels")["labels"] == ["cells"]
    attrs = ome_attrs(out)
    assert attrs["image-label"]["source"] == {"image": "../../"}
    assert attrs["image-label"]["version"] == version
    ms = attrs["multiscales"][0]
    if version == "0.4":
        assert ms["version"] == "0.4"
    else:
        assert attrs["version"] == "0.5"
    assert ms["axes"] == space("z", "y", "x")
    label = ome.read_multiscale(zarr.open_group(str(out), mode="r"))
    image = ome.read_multiscale(zarr.open_group(str(img), mode="r"))
    assert label is not None and image is not None
    # as many levels as the image, each over the image level: same shape and transforms
    assert len(label.levels) == len(image.levels) == 3
    for lab, im in zip(label.levels, image.levels):
        assert lab.shape == im.shape[1:]
        assert lab.scale == im.scale[1:] and lab.translation == im.translation[1:]
    assert label.levels[0].scale == src.scale and label.levels[0].translation == src.translation
    assert zarr.open_array(str(out), path="0").chunks == (3, 8, 8)
    # a second label image is added; writing one again does not list it twice
    create_output(img / "labels" / "nuclei", src, (6, 20, 30), "uint16")
    create_output(out, src, (6, 20, 30), "uint32")
    assert ome_attrs(img / "labels")["labels"] == ["cells", "nuclei"]
    assert zarr.open_array(str(out), path="0").chunks == (6, 20, 30)
    validate_with_ome_zarr_models(img, version)


def test_labels_of_a_level_other_than_0(tmp_path: Path) -> None:
    img = tmp_path / "img.ome.zarr"
    czyx_image(img, "0.5")
    src = describe_source(str(img), 3, level=1)
    out = img / "labels" / "coarse"
    create_output(out, src, (6, 10, 15), "uint32")
    label = ome.read_multiscale(zarr.open_group(str(out), mode="r"))
    assert label is not None
    assert [lv.shape for lv in label.levels] == [(6, 10, 15), (6, 5, 8)]
    assert label.levels[0].scale == src.scale
    # labels of another shape do not belong in this image
    other = describe_source(czyx_image(tmp_path / "other.ome.zarr", "0.5"), 3, level=2)
    bad = replace_shape(other, (2, 6, 7, 7))
    with pytest.raises(ValueError, match="no level of that image has the input's spatial shape"):
        check_output(img / "labels" / "x", bad)


def replace_shape(src: Any, shape: tuple[int, ...]) -> Any:
    from dataclasses import replace

    return replace(src, shape=shape)


def test_standalone_label_image_levels(tmp_path: Path) -> None:
    img = tmp_path / "img.ome.zarr"
    data = np.zeros((2, 6, 40, 44), np.uint8)
    axes = [{"name": "c", "type": "channel"}, *space("z", "y", "x")]
    write_ngff(img, "0.4", [data], axes, [scale_tr([1, 2.0, 0.5, 0.5], [0, 0, 1, 1])])
    src = describe_source(str(img), 3)
    out = tmp_path / "seg" / "cells.ome.zarr"
    create_output(out, src, (6, 8, 8), "uint32")
    assert (out / "zarr.json").exists()  # standalone label images are NGFF 0.5
    attrs = ome_attrs(out)
    assert attrs["version"] == "0.5"
    assert attrs["image-label"]["source"] == {"image": "../../img.ome.zarr/"}
    ms = ome.read_multiscale(zarr.open_group(str(out), mode="r"))
    assert ms is not None and ms.name == "cells"
    # y, x halve each level; z (2.0) only once x reaches 1.0; stop once 44 fits in 8
    assert [lv.shape for lv in ms.levels] == [(6, 40, 44), (6, 20, 22), (3, 10, 11), (2, 5, 6)]
    assert [lv.scale for lv in ms.levels] == [
        (2.0, 0.5, 0.5),
        (2.0, 1.0, 1.0),
        (4.0, 2.0, 2.0),
        (8.0, 4.0, 4.0),
    ]
    # voxel centres: each level moves by half a voxel of the level above
    assert [lv.translation for lv in ms.levels] == [
        (0.0, 1.0, 1.0),
        (0.0, 1.25, 1.25),
        (1.0, 1.75, 1.75),
        (3.0, 2.75, 2.75),
    ]
    assert [lv.chunks for lv in ms.levels] == [(6, 8, 8), (6, 8, 8), (3, 8, 8), (2, 5, 6)]
    arr = zarr.open_array(str(out), path="0")
    assert arr.metadata.dimension_names == ("z", "y", "x")  # type: ignore[union-attr]
    create_output(out, src, (6, 8, 8), "uint32", max_levels=2)
    again = ome.read_multiscale(zarr.open_group(str(out), mode="r"))
    assert again is not None and len(again.levels) == 2


def test_output_with_time_axis(tmp_path: Path) -> None:
    img = tmp_path / "img.ome.zarr"
    axes = [{"name": "t", "type": "time", "unit": "s"}, *space("y", "x")]
    write_ngff(img, "0.5", [np.zeros((3, 20, 24), np.uint8)], axes, [scale_tr([4.0, 1.0, 1.0])])
    src = describe_source(str(img), 2)
    plan = (8, 8)
    out = tmp_path / "lab.ome.zarr"
    create_output(out, src, plan, "uint32", keep_time=True)
    ms = ome.read_multiscale(zarr.open_group(str(out), mode="r"))
    assert ms is not None
    assert [a.name for a in ms.axes] == ["t", "y", "x"]
    assert ms.axes[0] == ome.Axis("t", "time", "second")
    assert ms.levels[0].shape == (3, 20, 24) and ms.levels[0].chunks == (1, 8, 8)
    assert [lv.shape[0] for lv in ms.levels] == [3] * len(ms.levels)  # time is never halved
    assert ms.levels[1].scale == (4.0, 2.0, 2.0)
    # without keep_time the output is spatial only
    create_output(out, src, plan, "uint32")
    ms = ome.read_multiscale(zarr.open_group(str(out), mode="r"))
    assert ms is not None and ms.levels[0].shape == (20, 24)


def test_plan_levels_rules() -> None:
    sp = (True, True, True)
    # strongly anisotropic z keeps its size until x catches up
    levels = ome.plan_levels((64, 1024, 1024), (16, 128, 128), (3.0, 0.5, 0.5), (0, 0, 0), sp)
    assert [lv.shape for lv in levels] == [
        (64, 1024, 1024),
        (64, 512, 512),
        (64, 256, 256),
        (32, 128, 128),
    ]
    assert [lv.scale for lv in levels][-1] == (6.0, 4.0, 4.0)
    assert ome.plan_levels((64, 1024, 1024), (16, 128, 128), (1, 1, 1), (0, 0, 0), sp, 2)[
        -1
    ].shape == (32, 512, 512)
    # one chunk already: only level 0; a size-1 axis is never halved
    assert len(ome.plan_levels((1, 64, 64), (1, 64, 64), (1, 1, 1), (0, 0, 0), sp)) == 1
    two_d = ome.plan_levels((1, 300, 70), (1, 64, 64), (1, 1, 1), (0, 0, 0), sp)
    assert [lv.shape for lv in two_d] == [(1, 300, 70), (1, 150, 35), (1, 75, 18), (1, 38, 9)]
    with pytest.raises(ValueError, match="max_levels"):
        ome.plan_levels((8, 8), (4, 4), (1, 1), (0, 0), (True, True), 0)


def test_ngff_units() -> None:
    assert ome.ngff_unit("nm") == "nanometer"
    assert ome.ngff_unit("µm") == "micrometer"
    assert ome.ngff_unit("micrometer") == "micrometer"
    assert ome.ngff_unit("") == ""
    assert ome.ngff_unit("parsec") == "parsec"
