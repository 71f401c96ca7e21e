"""Face files hold exactly the voxels stitch would cut from the stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.io.boxes import box_slices
from blockbuster.pipeline.faces import (
    FacesLog,
    FacesRef,
    face_views,
    log_sizes,
    read_faces,
    tile_faces,
)
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


def test_faces_logs_round_trip_and_refuse_damaged_bytes(tmp_path: Path) -> None:
    faces = {"up0": np.arange(12, dtype=np.uint32).reshape(3, 4), "down2": np.zeros((0, 5))}
    other = {"up1": np.full((2, 2), 7, dtype=np.uint64)}
    log = FacesLog(tmp_path / "faces")
    first, second = log.append(faces), log.append(other)
    assert first.log == second.log and second.offset == first.offset + first.nbytes
    assert log_sizes(tmp_path / "faces") == {first.log: second.offset + second.nbytes}
    for ref, want in ((first, faces), (second, other)):
        assert FacesRef.of(ref.as_record()) == ref
        back = read_faces(tmp_path / "faces", ref)
        assert back is not None and back.keys() == want.keys()
        for k, v in want.items():
            np.testing.assert_array_equal(back[k], v)
            assert back[k].dtype == v.dtype
    path = tmp_path / "faces" / first.log
    data = bytearray(path.read_bytes())
    data[first.offset + 3] ^= 0x10
    path.write_bytes(bytes(data))
    assert read_faces(tmp_path / "faces", first) is None  # its CRC-32 no longer matches
    assert read_faces(tmp_path / "faces", second) is not None
    path.write_bytes(bytes(data[: second.offset + 2]))
    assert read_faces(tmp_path / "faces", second) is None  # cut short
    path.unlink()
    assert read_faces(tmp_path / "faces", second) is None
    # a log removed under the writer, or a record naming a path, never reaches a file elsewhere
    assert log.append(other).log != first.log
    assert FacesRef.of({**first.as_record(), "faces_log": "../x"}) is None
    log.close()
