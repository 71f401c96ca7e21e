"""Face files hold exactly the voxels stitch would cut from the stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.io.boxes import box_slices
from blockbuster.pipeline.faces import face_views, read_faces, tile_faces, write_faces
from blockbuster.pipeline.plan import TilePlan, normalize_overlap, normalize_tile_shape


@st.composite
def plans(draw: st.DrawFn) -> TilePlan:
    ndim = draw(st.integers(2, 3))
    time_axis = ndim == 3 and draw(st.booleans())
    shape = tuple(draw(st.integers(1, 30)) for _ in range(ndim))
    tile = normalize_tile_shape([draw(st.integers(1, 12)) for _ in range(ndim)], shape)
    overlap = normalize_overlap(tuple(draw(st.integers(0, 4)) for _ in range(ndim)), tile)
    if time_axis:
        tile, overlap = (1, *tile[1:]), (0, *overlap[1:])
    return TilePlan(shape, tile, overlap, (1,) * ndim, (0,) * ndim, time_axis)


def _stage_chunk(plan: TilePlan, image: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """The stage chunk a segment worker would hold: the image's read box in the stage frame."""
    chunk = np.zeros(plan.stage_tile_shape, dtype=image.dtype)
    read = plan.read(index)
    chunk[box_slices(read, plan.stage_origin(index))] = image[box_slices(read)]
    return chunk


@settings(max_examples=60, deadline=None)
@given(plans(), st.integers(0, 2**16))
def test_faces_equal_the_stage_views_of_every_face(plan: TilePlan, seed: int) -> None:
    image = np.random.default_rng(seed).integers(1, 1000, plan.shape).astype(np.uint32)
    faces = {
        index: tile_faces(plan, index, _stage_chunk(plan, image, index))
        for index in np.ndindex(*plan.grid)
    }
    expected_faces = 0
    for index in np.ndindex(*plan.grid):
        for axis, nb in plan.upper_neighbors(index):
            expected_faces += 1
            box_lo, box_hi = face_views(plan, index, axis)
            np.testing.assert_array_equal(faces[index][f"up{axis}"], image[box_slices(box_lo)])
            np.testing.assert_array_equal(faces[nb][f"down{axis}"], image[box_slices(box_hi)])
    # each face once per side, none across time points
    assert sum(len(f) for f in faces.values()) == 2 * expected_faces
    if plan.time_axis:
        assert not any(k.endswith("0") for f in faces.values() for k in f)


def test_face_files_round_trip(tmp_path: Path) -> None:
    faces = {"up0": np.arange(12, dtype=np.uint32).reshape(3, 4), "down2": np.zeros((0, 5))}
    assert read_faces(tmp_path / "faces", 7) is None
    write_faces(tmp_path / "faces", 7, faces)
    back = read_faces(tmp_path / "faces", 7)
    assert back is not None and back.keys() == faces.keys()
    for k, v in faces.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == v.dtype
