"""watershed_fn under tiling: one threshold for the image, and the same labels as the whole
image (its seeds and ties do not depend on where a block starts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_one_to_one
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster import tile_process
from blockbuster.io.sources import describe_source
from blockbuster.pipeline.stats import compute_stats, prepare_fn
from blockbuster.plugins import watershed_fn
from blockbuster.synthetic import nuclei_centres, render_box

SERIAL = {"backend": "serial", "status_page": None}


def packed_nuclei(
    tmp_path: Path, shape: tuple[int, ...], count: int, radius: tuple[float, ...]
) -> tuple[str, np.ndarray]:
    """Touching nuclei covering most of the image (the hard case for a watershed)."""
    centres, radii = nuclei_centres(shape, count, radius, seed=1)
    img = render_box((0,) * len(shape), shape, centres, radii, seed=1)
    arr = zarr.create_array(str(tmp_path / "img.zarr"), shape=shape, chunks=shape, dtype="uint16")
    arr[:] = img
    return str(tmp_path / "img.zarr"), img


@pytest.fixture(scope="module")
def nuclei_2d(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    return packed_nuclei(tmp_path_factory.mktemp("ws2"), (384, 384), 700, (8.0, 8.0))


def test_prepare_takes_the_image_otsu_threshold(nuclei_2d: tuple[str, np.ndarray]) -> None:
    src, img = nuclei_2d
    stats = compute_stats(describe_source(src, 2))
    fn = prepare_fn(watershed_fn(), stats)
    assert fn.threshold == stats.otsu()
    assert 300 < fn.threshold < 1500  # between background (200) and nuclei (1700)
    # a threshold given by hand is kept
    assert prepare_fn(watershed_fn(threshold=700), stats).threshold == 700


@settings(max_examples=15, deadline=None)
@given(y=st.integers(30, 220), x=st.integers(30, 220))
def test_a_crop_labels_its_middle_as_the_whole_image_does(
    nuclei_2d: tuple[str, np.ndarray], y: int, x: int
) -> None:
    src, img = nuclei_2d
    fn = prepare_fn(watershed_fn(), compute_stats(describe_source(src, 2)))
    whole = fn(img)
    halo, size = 30, 64
    crop = fn(img[y - halo : y + size + halo, x - halo : x + size + halo])
    assert_one_to_one(
        whole[y : y + size, x : x + size], crop[halo : halo + size, halo : halo + size]
    )


@pytest.mark.parametrize(
    ("shape", "count", "radius", "tile", "halo"),
    [
        ((384, 384), 700, (8.0, 8.0), (96, 96), 24),
        ((48, 160, 160), 900, (4.0, 5.0, 5.0), (24, 64, 64), 16),
    ],
)
def test_tiled_equals_whole_image_on_packed_nuclei(
    tmp_path: Path,
    shape: tuple[int, ...],
    count: int,
    radius: tuple[float, ...],
    tile: tuple[int, ...],
    halo: int,
) -> None:
    src, img = packed_nuclei(tmp_path, shape, count, radius)
    fn = watershed_fn()  # threshold=None: the image's Otsu threshold
    whole = prepare_fn(fn, compute_stats(describe_source(src, len(shape))))(img)
    result = tile_process(src, fn, tile, halo, write_to=tmp_path / "out.zarr", **SERIAL)
    tiled = zarr.open(str(tmp_path / "out.zarr"))[:]
    assert result.num_labels == len(np.unique(whole)) - 1 > 100
    assert_one_to_one(whole, tiled)
