"""SpatialData stores: segmenting an image element into a labels element that
``spatialdata.read_zarr`` lists, with the image's transformations for every coordinate system.

The images are written multiscale: spatialdata 0.7.2 cannot write single-scale raster
elements with ome-zarr 0.18 (it passes ``scaler=None``, which ome-zarr 0.18 no longer reads
as "no pyramid").
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import spatialdata as sd  # in the test extra: the tests never skip for want of it
import zarr
from conftest import assert_one_to_one, blobs
from fns import first_channel_cc
from scipy import ndimage as ndi
from spatialdata.models import Image2DModel, Image3DModel, Labels2DModel
from spatialdata.transformations import (
    Affine,
    Scale,
    Sequence,
    Translation,
    get_transformation,
)

from blockbuster import tile_process

pytestmark = pytest.mark.filterwarnings("ignore:::spatialdata", "ignore:::ome_zarr")

FAST: dict[str, Any] = {"num_workers": 1, "progress": False, "status_page": None}


def _transformations() -> dict[str, Any]:
    """A sequence to "global" and an affine that swaps y and x (a rotation) to "aligned"."""
    to_global = Sequence([Scale([2.0, 3.0], axes=("y", "x")), Translation([10.0, 5.0], ("y", "x"))])
    aligned = Affine(
        [[0.0, 1.0, 4.0], [1.0, 0.0, 2.0], [0.0, 0.0, 1.0]],
        input_axes=("x", "y"),
        output_axes=("x", "y"),
    )
    return {"global": to_global, "aligned": aligned}


def _image_2d(path: Path) -> tuple[Any, np.ndarray]:
    b = blobs((48, 56))
    image = Image2DModel.parse(
        np.stack([b, 2 * b]),
        dims=("c", "y", "x"),
        transformations=_transformations(),
        scale_factors=[2],
    )
    sdata = sd.SpatialData(images={"he": image})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata.write(path)
    return sdata, ndi.label(b > 0.5)[0]


def _level0(element: Any) -> np.ndarray:
    return np.asarray(
        element["scale0"]["image"].values if hasattr(element, "children") else element
    )


def _matrix(t: Any, axes: tuple[str, ...]) -> np.ndarray:
    return np.asarray(t.to_affine_matrix(input_axes=axes, output_axes=axes))


def test_tile_process_writes_a_labels_element(tmp_path: Path) -> None:
    store = tmp_path / "sample.zarr"
    _, whole = _image_2d(store)
    result = tile_process(
        str(store / "images" / "he"),
        first_channel_cc,
        (16, 16),
        4,
        write_to=str(store / "labels" / "cells"),
        merge_threshold=0,
        **FAST,
    )
    assert result.num_labels == whole.max()
    # the block map and the status page lie beside the store, not among its elements
    assert result.block_map == f"{store}.cells.block_map.png"
    assert result.status_page == f"{store}.cells.status.html"
    assert sorted(p.name for p in (store / "labels").iterdir()) == ["cells", "zarr.json"]
    back = sd.read_zarr(store)
    assert list(back.labels) == ["cells"]
    labels = back.labels["cells"]
    assert_one_to_one(whole, _level0(labels))
    # the levels mirror the image's (spatial axes)
    shapes = [labels[k]["image"].shape for k in sorted(labels.children)]
    image = back.images["he"]
    assert shapes == [image[k]["image"].shape[1:] for k in sorted(image.children)]

    got = get_transformation(labels, get_all=True)
    of_image = get_transformation(image, get_all=True)
    assert set(got) == set(of_image) == {"global", "aligned"}
    for cs in got:  # the same map of y, x for every coordinate system
        np.testing.assert_array_equal(
            _matrix(got[cs], ("y", "x")), _matrix(of_image[cs], ("y", "x"))
        )
    # and the same transformations spatialdata itself gives a labels element it writes with them
    reference = tmp_path / "reference.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd.SpatialData(
            labels={
                "cells": Labels2DModel.parse(
                    whole.astype(np.uint32),
                    dims=("y", "x"),
                    transformations=_transformations(),
                    scale_factors=[2],
                )
            }
        ).write(reference)
    expected = get_transformation(sd.read_zarr(reference).labels["cells"], get_all=True)
    assert got == expected
    assert got["global"] == _transformations()["global"]


def test_single_scale_image(tmp_path: Path) -> None:
    """A single-scale image element (made from a written two-level one, see the module doc):
    the labels get their own pyramid, and the element keeps SpatialData's OME version."""
    store = tmp_path / "single.zarr"
    _, whole = _image_2d(store)
    group = zarr.open_group(str(store / "images" / "he"), mode="r+")
    meta = dict(group.attrs["ome"])
    meta["multiscales"] = [
        {**meta["multiscales"][0], "datasets": meta["multiscales"][0]["datasets"][:1]}
    ]
    group.attrs["ome"] = meta
    shutil.rmtree(store / "images" / "he" / "s1")
    zarr.consolidate_metadata(str(store))
    assert not hasattr(sd.read_zarr(store).images["he"], "children")  # single-scale now
    tile_process(
        str(store / "images" / "he"),
        first_channel_cc,
        (16, 16),
        4,
        write_to=str(store / "labels" / "cells"),
        merge_threshold=0,
        **FAST,
    )
    labels = sd.read_zarr(store).labels["cells"]
    assert_one_to_one(whole, _level0(labels))
    assert len(labels.children) > 1
    assert (
        zarr.open_group(str(store / "labels" / "cells")).attrs["ome"]["version"] == meta["version"]
    )
    assert get_transformation(labels, get_all=True)["global"] == _transformations()["global"]


def test_segment_adds_3d_labels_to_the_object(tmp_path: Path) -> None:
    from blockbuster.spatialdata import segment

    b = blobs((12, 24, 28), seed=3) ** 2  # separate blobs (at 0.5 they percolate in 3D)
    image = Image3DModel.parse(
        np.stack([b, 2 * b]),
        dims=("c", "z", "y", "x"),
        transformations={"global": Scale([2.0, 0.5, 0.5], axes=("z", "y", "x"))},
        scale_factors=[2],
    )
    sdata = sd.SpatialData(images={"vol": image})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata.write(tmp_path / "vol.zarr")
    result = segment(
        sdata, "vol", first_channel_cc, tile_shape=(8, 12, 12), overlap=2, merge_threshold=0, **FAST
    )
    assert result.num_labels > 1
    assert list(sdata.labels) == ["vol_labels"]
    labels = sdata.labels["vol_labels"]
    assert_one_to_one(ndi.label(b > 0.5)[0], _level0(labels))
    assert get_transformation(labels, get_all=True) == {
        "global": Scale([2.0, 0.5, 0.5], axes=("z", "y", "x"))
    }
    assert "vol_labels" in sd.read_zarr(tmp_path / "vol.zarr").labels


def test_segment_needs_a_store() -> None:
    from blockbuster.spatialdata import segment

    image = Image2DModel.parse(np.zeros((1, 8, 8), np.float32), dims=("c", "y", "x"))
    sdata = sd.SpatialData(images={"he": image})
    with pytest.raises(ValueError, match=r"sdata.path is None\); write it first with sdata.write"):
        segment(sdata, "he", first_channel_cc, tile_shape=(8, 8))
    with pytest.raises(ValueError, match=r"image_key='nope' is not an image element"):
        segment(sdata, "nope", first_channel_cc, tile_shape=(8, 8))


def test_segment_names_a_bad_labels_key_before_writing(tmp_path: Path) -> None:
    from blockbuster.spatialdata import segment

    store = tmp_path / "sample.zarr"
    _image_2d(store)
    sdata = sd.read_zarr(store)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    with pytest.raises(ValueError, match=r"^labels_key='\.cells' is not a SpatialData element"):
        segment(sdata, "he", first_channel_cc, labels_key=".cells", tile_shape=(16, 16))
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before


def test_a_plain_zarr_group_with_a_labels_group_is_no_spatialdata_store(tmp_path: Path) -> None:
    from blockbuster.io import sdstore

    mine = tmp_path / "mine.zarr"
    zarr.open_group(str(mine), mode="w").create_group("labels")
    assert not sdstore.is_store(mine)
    assert sdstore.labels_element(mine / "labels" / "seg") is None
    store = tmp_path / "sample.zarr"
    _image_2d(store)
    assert sdstore.is_store(store)


def test_a_transformation_without_axes_cannot_lose_its_channel() -> None:
    from blockbuster.io.sdstore import drop_channel

    scale = {"type": "scale", "scale": [1.0, 0.5, 0.5]}  # no input axes: which is c?
    with pytest.raises(ValueError, match="does not name its axes"):
        drop_channel(scale, {"c"})
    assert drop_channel(scale, set()) == scale  # nothing to drop: copied as it is


def test_bad_paths_fail_before_writing(tmp_path: Path) -> None:
    store = tmp_path / "sample.zarr"
    _image_2d(store)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    cases = [
        ({"image": store, "write_to": tmp_path / "out.zarr"}, r"image='.*sample.zarr' is a "),
        (
            {"image": store / "images" / "he", "write_to": store / "images" / "cells"},
            r"write_to='.*images/cells' is an image element path .* labels go to",
        ),
        (
            {"image": store / "images" / "he", "write_to": store / "labels" / ".cells"},
            r"SpatialData element names",
        ),
        (
            {"image": store / "images" / "he", "write_to": store / "labels" / "cells", "level": 1},
            r"pass level=0",
        ),
    ]
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), shape=(2, 16, 16), dtype="f4")
    cases.append(
        (
            {"image": plain, "write_to": store / "labels" / "cells", "channels": True},
            r"the input is no image element of it",
        )
    )
    for kwargs, message in cases:
        image, write_to = kwargs.pop("image"), kwargs.pop("write_to")
        with pytest.raises(ValueError, match=message):
            tile_process(
                str(image), first_channel_cc, (16, 16), 0, write_to=str(write_to), **kwargs
            )
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before


def test_a_labels_element_blockbuster_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    """Not with the same call, and not with overwrite=True: only blockbuster's own output is."""
    store = tmp_path / "sample.zarr"
    _image_2d(store)
    theirs = Labels2DModel.parse(np.ones((64, 64), np.uint32), dims=("y", "x"), scale_factors=[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.read_zarr(store)
        sdata["cells"] = theirs
        sdata.write_element("cells")
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    refusals = {
        False: "already exists; pass overwrite=True",
        True: "was not written by blockbuster",
    }
    for overwrite, refusal in refusals.items():
        with pytest.raises(ValueError, match=f"write_to=.*labels/cells.*{refusal}"):
            tile_process(
                str(store / "images" / "he"),
                first_channel_cc,
                (16, 16),
                0,
                write_to=str(store / "labels" / "cells"),
                overwrite=overwrite,
                **FAST,
            )
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert (_level0(sd.read_zarr(store).labels["cells"]) == 1).all()
