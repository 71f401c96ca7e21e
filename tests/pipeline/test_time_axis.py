"""Images with a time axis are segmented time point by time point and never stitched across
time."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_one_to_one, blobs
from fns import cc_label_ndim, first_channel_cc
from ngff import space, write_ngff
from scipy import ndimage as ndi

from blockbuster import tile_process


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_time_points_are_segmented_apart(tmp_path: Path, version: str) -> None:
    # the same objects at every time point: stitching across time would merge them
    frames = np.stack([blobs((6, 20, 24), seed=s) for s in (1, 1, 2)])
    img = write_ngff(
        tmp_path / "movie.ome.zarr",
        version,
        [frames],
        [{"name": "t", "type": "time", "unit": "second"}, *space("z", "y", "x")],
        [[{"type": "scale", "scale": [30.0, 2.0, 0.5, 0.5]}]],
    )
    out = tmp_path / "labels.ome.zarr"
    fn = functools.partial(cc_label_ndim, ndim=3)
    r = tile_process(img, fn, (3, 8, 8), 1, write_to=out, merge_threshold=0.0, num_workers=2)
    labels = zarr.open_array(str(out), path="0")[:]
    assert labels.shape == frames.shape
    assert r.fn_calls == r.tiles_total == 3 * 2 * 3 * 3
    seen: set[int] = set()
    for t in range(3):
        whole, n = ndi.label(frames[t] > 0.5)
        assert_one_to_one(whole, labels[t])
        ids = set(np.unique(labels[t]).tolist()) - {0}
        assert len(ids) == n and not ids & seen  # no label spans two time points
        seen |= ids
    assert r.num_labels == len(seen)
    assert r.block_map is not None and Path(r.block_map).exists()
    ms = zarr.open_group(str(out)).attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "z", "y", "x"]
    assert ms["axes"][0]["type"] == "time"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [30.0, 2.0, 0.5, 0.5]


def test_time_and_channels_into_the_images_labels(tmp_path: Path) -> None:
    frames = np.stack([blobs((16, 20), seed=s) for s in (3, 4)])  # t, y, x
    data = np.stack([frames, 2 * frames], axis=1)  # t, c, y, x
    img = write_ngff(
        tmp_path / "movie.ome.zarr",
        "0.5",
        [data],
        [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, *space("y", "x")],
        [[{"type": "scale", "scale": [1.0, 1.0, 0.5, 0.5]}]],
    )
    out = tmp_path / "movie.ome.zarr" / "labels" / "cells"
    tile_process(img, first_channel_cc, (7, 9), 2, write_to=out, merge_threshold=0.0)
    labels = zarr.open_array(str(out), path="0")[:]
    assert labels.shape == (2, 16, 20)
    for t in range(2):
        assert_one_to_one(ndi.label(frames[t] > 0.5)[0], labels[t])
    assert zarr.open_group(str(tmp_path / "movie.ome.zarr" / "labels")).attrs["ome"]["labels"] == [
        "cells"
    ]
