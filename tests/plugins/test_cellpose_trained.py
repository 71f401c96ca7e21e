"""A real learned model under tiling: the Cellpose 3 network of tests/trained_cellpose.py,
trained here from scratch on synthetic nuclei once per test session (about 2-4 minutes on 2
CPU cores; nothing is downloaded or committed).

cellpose_fn's defaults -- one normalisation for the whole image, the halo it suggests (one
object diameter) -- give tiled labels that match the whole-image labels (F1 at IoU 0.5 >=
0.98) on images with touching nuclei, a dim region and an empty one, in 2D and 3D; with
mask="auto" the empty tiles are never segmented, and nothing is found in empty space. The
same run with Cellpose's per-tile normalisation finds objects in the noise: the test that
shows what the default fixes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from trained_cellpose import DIAMETER, f1, synthetic_image, train_model

from blockbuster import tile_process
from blockbuster.io.sources import describe_source
from blockbuster.pipeline.stats import compute_stats, prepare_fn
from blockbuster.plugins.cellpose import cellpose_fn, cellpose_major

pytestmark = pytest.mark.skipif(
    cellpose_major() >= 4, reason="the trained model is a cellpose 3 network"
)
SERIAL = {"backend": "serial", "status_page": None}


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(train_model(tmp_path_factory.mktemp("trained"), seed=0))


def false_objects(labels: np.ndarray, empty_from: int) -> int:
    """Labels with most of their voxels at or beyond ``empty_from`` along the last axis."""
    total = dict(zip(*np.unique(labels, return_counts=True), strict=True))
    right = dict(zip(*np.unique(labels[..., empty_from:], return_counts=True), strict=True))
    return sum(1 for k, n in right.items() if k != 0 and n > total[k] / 2)


def _write(tmp_path: Path, img: np.ndarray) -> str:
    arr = zarr.create_array(str(tmp_path / "img.zarr"), shape=img.shape, dtype=img.dtype)
    arr[:] = img
    return str(tmp_path / "img.zarr")


def _whole(src: str, fn: Any, img: np.ndarray) -> np.ndarray:
    """The whole image segmented at once, with the fn prepared as tile_process prepares it."""
    return np.asarray(prepare_fn(fn, compute_stats(describe_source(src, img.ndim)))(img))


@pytest.fixture(scope="module")
def image_2d(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray, np.ndarray]:
    # touching nuclei in the left half, a dim band on top, background noise on the right
    img, truth = synthetic_image((512, 1024), 400, seed=5, empty_fraction=0.5, dim=0.25, gap=0.85)
    return _write(tmp_path_factory.mktemp("img2d"), img), img, truth


def test_defaults_tiled_equals_whole_and_empty_space_stays_empty(
    tmp_path: Path, weights: str, image_2d: tuple[str, np.ndarray, np.ndarray]
) -> None:
    src, img, truth = image_2d
    fn = cellpose_fn(weights, diameter=DIAMETER)
    assert fn.normalize == "image" and fn.suggest_overlap() == 24  # one diameter
    whole = _whole(src, fn, img)
    result = tile_process(
        src,
        fn,
        (128, 128),
        write_to=tmp_path / "t.zarr",
        mask="auto",
        keep_stage=True,
        **SERIAL,
    )
    tiled = zarr.open(str(tmp_path / "t.zarr"))[:]
    from blockbuster.pipeline.spec import read_spec
    from blockbuster.run.rundir import RunDir

    assert read_spec(RunDir(result.run_dir)).plan.overlap == (24, 24)  # the fn's suggestion
    # columns 640.. read no nucleus even with their halo: 3 of 8 tile columns never run
    assert result.tiles_skipped == 4 * 3 and result.fn_calls == 4 * 5
    assert f1(tiled, whole) >= 0.98
    assert f1(whole, truth) >= 0.95  # a real model: it finds the nuclei
    assert f1(tiled, truth) >= f1(whole, truth) - 0.005  # tiling costs (almost) nothing
    assert false_objects(tiled, 512) == false_objects(whole, 512) == 0


def test_per_tile_normalisation_finds_objects_in_noise(
    tmp_path: Path, weights: str, image_2d: tuple[str, np.ndarray, np.ndarray]
) -> None:
    src, img, truth = image_2d
    # the right half only: every tile is noise, or nuclei at its left edge
    fn = cellpose_fn(weights, diameter=DIAMETER, normalize="tile")
    tile_process(src, fn, (128, 128), 24, write_to=tmp_path / "t.zarr", **SERIAL)
    tiled = zarr.open(str(tmp_path / "t.zarr"))[:]
    assert false_objects(tiled, 512 + 24) > 0
    whole = _whole(src, fn, img)  # one image, one normalisation: nothing there
    assert false_objects(whole, 512 + 24) == 0


def test_explicit_low_high_equals_image_normalisation_by_hand(
    weights: str, image_2d: tuple[str, np.ndarray, np.ndarray]
) -> None:
    src, img, _ = image_2d
    stats = compute_stats(describe_source(src, 2))
    low, high = stats.percentile(1), stats.percentile(99)
    crop = img[:160, :160]
    by_image = prepare_fn(cellpose_fn(weights, diameter=DIAMETER), stats)(crop)
    explicit = cellpose_fn(weights, diameter=DIAMETER, normalize=(low, high))(crop)
    np.testing.assert_array_equal(by_image, explicit)


def test_3d_plane_by_plane_tiled_equals_whole(tmp_path: Path, weights: str) -> None:
    img, truth = synthetic_image(
        (16, 192, 384), 120, radius=(6.0, 12.0, 12.0), seed=7, empty_fraction=0.5, gap=0.9
    )
    src = _write(tmp_path, img)
    fn = cellpose_fn(weights, diameter=DIAMETER, stitch_threshold=0.25)
    whole = _whole(src, fn, img)
    result = tile_process(
        src, fn, (16, 96, 96), write_to=tmp_path / "t.zarr", mask="auto", **SERIAL
    )
    tiled = zarr.open(str(tmp_path / "t.zarr"))[:]
    assert result.tiles_skipped == 2  # the last tile column (x 288..384, read from 264)
    assert f1(whole, truth) >= 0.9
    assert f1(tiled, whole) >= 0.98
    assert false_objects(tiled, 192) == 0


def test_one_plane_tiles_of_a_volume(tmp_path: Path, weights: str) -> None:
    img, truth = synthetic_image((3, 160, 160), 40, radius=(6.0, 12.0, 12.0), seed=8)
    src = _write(tmp_path, img)
    fn = cellpose_fn(weights, diameter=DIAMETER)
    result = tile_process(src, fn, (1, 160, 160), write_to=tmp_path / "t.zarr", **SERIAL)
    tiled = zarr.open(str(tmp_path / "t.zarr"))[:]
    assert result.fn_calls == 3 and tiled.shape == img.shape
    for z in range(3):  # a (1, Y, X) block comes back from Cellpose as a 2D mask
        assert f1(tiled[z], truth[z]) >= 0.9
