"""The label pyramid: mode downsampling, and levels built blockwise (in process and by daisy)."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_one_to_one, blobs
from fns import cc_label, first_channel_cc
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ngff import space, write_ngff
from scipy import ndimage as ndi

from blockbuster import tile_process
from blockbuster.io.outputs import create_output
from blockbuster.io.sources import describe_source, ome
from blockbuster.pipeline.pyramid import build_pyramid, downsample_mode


def slow_mode(labels: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Reference: a Python loop over cells with a Counter."""
    out_shape = tuple(-(-s // f) for s, f in zip(labels.shape, factors))
    out = np.zeros(out_shape, dtype=labels.dtype)
    for idx in np.ndindex(*out_shape):
        cell = labels[tuple(slice(i * f, (i + 1) * f) for i, f in zip(idx, factors))]
        counts = collections.Counter(int(v) for v in cell.ravel() if v != 0)
        if counts:
            top = max(counts.values())
            out[idx] = min(v for v, c in counts.items() if c == top)
    return out


@st.composite
def labels_and_factors(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...]]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.uint32, np.uint64, np.int32, np.int64]))
    top = draw(st.integers(1, 6))  # few labels: many ties and mixed cells
    labels = draw(hnp.arrays(dtype, shape, elements=st.integers(0, top)))
    factors = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    return labels, factors


@settings(max_examples=300, deadline=None)
@given(labels_and_factors())
def test_mode_equals_slow_reference(case: tuple[np.ndarray, tuple[int, ...]]) -> None:
    labels, factors = case
    got = downsample_mode(labels, factors)
    assert got.dtype == labels.dtype
    np.testing.assert_array_equal(got, slow_mode(labels, factors))


def test_mode_rules() -> None:
    # majority of non-zero voxels wins over background
    assert downsample_mode(np.array([[0, 0], [0, 7]]), (2, 2)).tolist() == [[7]]
    # a tie goes to the smallest label
    assert downsample_mode(np.array([[9, 9], [4, 4]]), (2, 2)).tolist() == [[4]]
    assert downsample_mode(np.array([[9, 0], [0, 4]]), (2, 2)).tolist() == [[4]]
    # all background stays background; a partial edge cell counts what exists
    assert downsample_mode(np.zeros((2, 3), np.uint32), (2, 2)).tolist() == [[0, 0]]
    assert downsample_mode(np.array([[1, 1, 5], [2, 2, 5]]), (2, 2)).tolist() == [[1, 5]]
    # large values keep their dtype exactly
    big = np.full((2, 2, 2), 2**63 + 5, dtype=np.uint64)
    assert downsample_mode(big, (2, 2, 2)).tolist() == [[[2**63 + 5]]]
    with pytest.raises(ValueError, match="one integer >= 1 per axis"):
        downsample_mode(np.zeros((4, 4)), (2,))


def test_mode_of_large_mostly_uniform_and_noisy_blocks() -> None:
    rng = np.random.default_rng(3)
    smooth = ndi.label(blobs((40, 70, 66), seed=3) > 0.5)[0].astype(np.uint32)
    noise = rng.integers(0, 3, size=(9, 20, 17)).astype(np.uint16)
    for labels in (smooth, noise):
        np.testing.assert_array_equal(
            downsample_mode(labels, (2, 2, 2)), slow_mode(labels, (2, 2, 2))
        )


def reference_levels(level0: np.ndarray, store: str) -> list[np.ndarray]:
    """Each level as the whole-array mode of the level above, cut to the stored shape."""
    ms = ome.read_multiscale(zarr.open_group(store, mode="r"))
    assert ms is not None
    out = [level0]
    for finer, coarser in zip(ms.levels, ms.levels[1:]):
        down = downsample_mode(out[-1], ome.level_factors(finer, coarser))
        out.append(down[tuple(slice(0, n) for n in coarser.shape)])
    return out


def random_labels(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return ndi.label(blobs(shape, sigma=1.5, seed=seed) > 0.5)[0].astype(np.uint32)


@pytest.mark.parametrize("workers", [0, 2])
def test_build_pyramid_equals_reference(tmp_path: Path, workers: int) -> None:
    img = tmp_path / "img.ome.zarr"
    write_ngff(
        img,
        "0.5",
        [np.zeros((21, 70, 67), np.uint8)],
        space("z", "y", "x"),
        [[{"type": "scale", "scale": [1.0, 1.0, 1.0]}]],
    )
    src = describe_source(str(img), 3)
    out = tmp_path / "labels.ome.zarr"
    store, path = create_output(out, src, (8, 16, 16), "uint32")
    level0 = random_labels(src.spatial_shape, seed=5)
    zarr.open_array(store, path=path, mode="r+")[:] = level0
    # inline_voxels=0: with workers, every level goes through daisy
    paths = build_pyramid(store, num_workers=workers, inline_voxels=0)
    assert paths == ["0", "1", "2", "3"]
    for p, want in zip(paths, reference_levels(level0, store)):
        got = zarr.open_array(store, path=p)[:]
        np.testing.assert_array_equal(got, want, err_msg=f"level {p}")
    assert zarr.open_array(store, path="3").shape == (3, 9, 9)


def test_pyramid_of_labels_inside_an_image_with_rounded_down_levels(tmp_path: Path) -> None:
    # image levels 33 -> 16 -> 8 (rounded down, as ome-zarr-py writes them), NGFF 0.4 / zarr v2
    img = tmp_path / "img.ome.zarr"
    shapes = [(5, 33, 41), (5, 16, 20), (5, 8, 10)]
    write_ngff(
        img,
        "0.4",
        [np.zeros(s, np.uint8) for s in shapes],
        space("z", "y", "x"),
        [[{"type": "scale", "scale": [1.0, 33 / n[1], 41 / n[2]]}] for n in shapes],
    )
    src = describe_source(str(img), 3)
    store, path = create_output(img / "labels" / "cells", src, (5, 8, 8), "uint16")
    level0 = random_labels(src.spatial_shape, seed=8).astype(np.uint16)
    zarr.open_array(store, path=path, mode="r+")[:] = level0
    assert build_pyramid(store) == ["0", "1", "2"]
    for p, want in zip(["0", "1", "2"], reference_levels(level0, store)):
        assert zarr.open_array(store, path=p).shape == want.shape
        np.testing.assert_array_equal(zarr.open_array(store, path=p)[:], want)


def test_pyramid_added_to_a_label_image_with_one_level(tmp_path: Path) -> None:
    store = str(tmp_path / "lab.ome.zarr")
    level = ome.Level("0", (30, 40), (0.5, 0.5), (0.0, 0.0), (10, 10))
    ome.write_label_image(
        store, "0.5", [ome.Axis("y", "space"), ome.Axis("x", "space")], [level], "uint32"
    )
    level0 = random_labels((30, 40), seed=2)
    zarr.open_array(store, path="0", mode="r+")[:] = level0
    assert build_pyramid(store, max_levels=3) == ["0", "1", "2"]
    ms = ome.read_multiscale(zarr.open_group(store, mode="r"))
    assert ms is not None
    assert [lv.shape for lv in ms.levels] == [(30, 40), (15, 20), (8, 10)]
    assert ms.levels[2].scale == (2.0, 2.0) and ms.levels[2].translation == (0.75, 0.75)
    arr = zarr.open_array(store, path="2")
    assert arr.metadata.dimension_names == ("y", "x")  # type: ignore[union-attr]
    for p, want in zip(["0", "1", "2"], reference_levels(level0, store)):
        np.testing.assert_array_equal(zarr.open_array(store, path=p)[:], want)
    with pytest.raises(ValueError, match="not an OME-Zarr image"):
        build_pyramid(str(tmp_path / "lab.ome.zarr" / "0"))


def test_tile_process_into_image_labels_then_pyramid_opens_in_ome_zarr_py(
    tmp_path: Path,
) -> None:
    import ome_zarr.io as io_mod
    import ome_zarr.reader as reader_mod

    img = tmp_path / "img.ome.zarr"
    base = blobs((6, 20, 30), seed=4)
    shapes = [(2, 6, 20, 30), (2, 6, 10, 15), (2, 6, 5, 8)]
    write_ngff(
        img,
        "0.5",
        [np.stack([base, 2 * base]), *(np.zeros(s, np.float32) for s in shapes[1:])],
        [{"name": "c", "type": "channel"}, *space("z", "y", "x")],
        [[{"type": "scale", "scale": [1.0, 2.0, 0.5 * 2**k, 0.5 * 2**k]}] for k in range(3)],
    )
    out = img / "labels" / "cells"
    r = tile_process(str(img), first_channel_cc, (3, 8, 8), 1, write_to=out, merge_threshold=0.0)
    assert "pyramid" in r.seconds  # the driver filled the lower levels itself
    level0 = zarr.open_array(str(out), path="0")[:]
    assert_one_to_one(ndi.label(base > 0.5)[0], level0)

    # ome-zarr-py: from the image, the label image is found through labels/; its levels have
    # the image's spatial shapes and scales
    nodes = list(reader_mod.Reader(io_mod.parse_url(str(img)))())
    label_nodes = [n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs)]
    assert len(label_nodes) == 1
    node = label_nodes[0]
    assert [tuple(d.shape) for d in node.data] == [s[1:] for s in shapes]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    want = reference_levels(level0, str(out))
    for k in range(3):
        np.testing.assert_array_equal(np.asarray(node.data[k]), want[k])
    # and from the label image itself, with the image found through image-label.source
    nodes = list(reader_mod.Reader(io_mod.parse_url(str(out)))())
    assert [n.metadata.get("name") for n in nodes if n.data][-1] == "cells"


def test_napari_reads_the_labels_headless(tmp_path: Path) -> None:
    """napari's reader (napari-ome-zarr, no Qt, no viewer) opens the label image with every
    pyramid level and the image's scale: inside the image's labels/ group and standalone."""
    import npe2
    from napari.plugins.io import read_data_with_plugins

    npe2.PluginManager.instance().discover()  # what napari does when it starts
    img = tmp_path / "img.ome.zarr"
    base = blobs((24, 40, 40), seed=9)
    write_ngff(
        img,
        "0.5",
        [base],
        space("z", "y", "x"),
        [[{"type": "scale", "scale": [2.0, 0.5, 0.5]}]],
    )
    inside = img / "labels" / "cells"
    standalone = tmp_path / "cells.ome.zarr"
    for out in (inside, standalone):
        tile_process(str(img), cc_label, (12, 16, 16), 2, write_to=out, merge_threshold=0.0)
    want = [(24, 40, 40), (24, 20, 20), (12, 10, 10)]
    whole = ndi.label(base > 0.5)[0]

    layers, _ = read_data_with_plugins([str(img)], plugin="napari-ome-zarr")
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["image", "labels"]
    data, meta, _ = layers[1]
    assert [tuple(level.shape) for level in data] == want
    assert list(meta["scale"]) == [2.0, 0.5, 0.5]
    assert_one_to_one(whole, np.asarray(data[0]))

    layers, _ = read_data_with_plugins([str(standalone)], plugin="napari-ome-zarr")
    assert [kind for _, _, kind in layers] == ["labels"]
    data, meta, _ = layers[0]
    assert [tuple(level.shape) for level in data] == want
    assert list(meta["scale"]) == [2.0, 0.5, 0.5]
    assert_one_to_one(whole, np.asarray(data[0]))


def test_build_pyramid_never_removes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    store = tmp_path / "labels.ome.zarr"
    zarr.open_group(str(store), mode="w")  # not even read: the check comes first
    mine = tmp_path / "labels.ome.zarr.pyramid.blockbuster"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a blockbuster run directory"):
        build_pyramid(store)
    assert (mine / "notes.txt").read_text() == "mine"
