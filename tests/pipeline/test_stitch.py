from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_to_one, blobs, run_stage, write_zarr
from fns import cc_label
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from serial import run_in_process

from blockbuster.pipeline.driver import prepare_run
from blockbuster.pipeline.faces import FacesRef, face_views
from blockbuster.pipeline.plan import TilePlan
from blockbuster.pipeline.stitch import Stitcher, match_labels
from blockbuster.run.records import RecordScanner, TaskRecords


def test_match_labels_any_overlap_at_threshold_zero() -> None:
    a = np.array([1, 1, 1, 2, 2, 0])
    b = np.array([5, 5, 6, 6, 6, 6])
    pairs = match_labels(a, b, 0.0)
    assert sorted(map(tuple, pairs.tolist())) == [(1, 5), (1, 6), (2, 6)]


def test_match_labels_threshold_drops_stray_boundary_voxels() -> None:
    # a's label 1 is b's 5 but for one stray voxel that b gave to its neighbour 6
    a = np.array([1] * 10 + [2] * 10)
    b = np.array([5] * 9 + [6] * 11)
    pairs = match_labels(a, b, 0.5)
    assert sorted(map(tuple, pairs.tolist())) == [(1, 5), (2, 6)]


def test_match_labels_ignores_background() -> None:
    assert match_labels(np.zeros(5, int), np.arange(5), 0.0).shape == (0, 2)


def test_face_views_are_the_touching_planes_or_a_band_of_the_halo() -> None:
    plan = TilePlan((10, 10), (4, 4), (0, 2), (1, 1), (0, 0))
    # no halo along axis 0: the two touching planes, across the tile's core along axis 1 and
    # one voxel more each side (both tiles read it)
    lo, hi = face_views(plan, (0, 1), axis=0)
    assert lo == ((3, 4), (3, 9)) and hi == ((4, 5), (3, 9))
    # halo 2 along axis 1: one plane each side of the face (overlap // 4, at least one)
    lo, hi = face_views(plan, (0, 0), axis=1)
    assert lo == hi == ((0, 4), (3, 5))
    wide = TilePlan((40, 40), (16, 16), (8, 12), (1, 1), (0, 0))
    assert face_views(wide, (0, 0), axis=0)[0] == ((14, 18), (0, 17))
    assert face_views(wide, (1, 1), axis=1)[0] == ((15, 33), (29, 35))


def _tiled(tmp_path: Path, img: np.ndarray, tile, overlap, seq: bool, threshold: float = 0.0):
    src = write_zarr(tmp_path / "img.zarr", img)
    run, _, _ = prepare_run(
        src,
        cc_label,
        tile,
        overlap,
        write_to=tmp_path / "out.zarr",
        sequential_labels=seq,
        merge_threshold=threshold,
        overwrite=True,
    )
    return run_in_process(run)


@st.composite
def cases(draw: st.DrawFn):
    ndim = draw(st.integers(2, 3))
    shape = tuple(draw(st.integers(4, 28 if ndim == 3 else 60)) for _ in range(ndim))
    tile = tuple(draw(st.integers(1, max(1, s))) for s in shape)
    overlap = draw(st.one_of(st.integers(0, 4), st.tuples(*[st.integers(0, 4)] * ndim)))
    sigma = draw(st.sampled_from([0.0, 1.0, 2.0]))
    seed = draw(st.integers(0, 2**16))
    return shape, tile, overlap, sigma, seed, draw(st.booleans())


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cases())
def test_tiled_equals_whole_for_connected_components(tmp_path: Path, case) -> None:
    """Random shapes, tiles and halos: threshold + label stitched == labelled whole."""
    shape, tile, overlap, sigma, seed, seq = case
    img = (
        blobs(shape, sigma=sigma, seed=seed)
        if sigma
        else np.random.default_rng(seed).random(shape).astype(np.float32)
    )
    out, num = _tiled(tmp_path, img, tile, overlap, seq)
    whole, n_whole = ndi.label(img > 0.5)
    assert_one_to_one(whole, out)
    assert num == n_whole
    if seq:
        assert set(np.unique(out).tolist()) == set(range(n_whole + 1))


@pytest.mark.parametrize(("tile", "overlap"), [((3, 4), 0), ((5, 3), 2), ((4, 4, 4), 1)])
def test_grouped_blocks_equal_whole(tmp_path: Path, tile, overlap) -> None:
    """Many small tiles: stitch and relabel blocks hold groups of tiles, result == whole."""
    shape = (61, 59) if len(tile) == 2 else (22, 29, 31)
    img = blobs(shape, sigma=1.5, seed=7)
    src = write_zarr(tmp_path / "img.zarr", img)
    run, spec, _ = prepare_run(
        src,
        cc_label,
        tile,
        overlap,
        write_to=tmp_path / "out.zarr",
        sequential_labels=True,
        merge_threshold=0.0,
        overwrite=True,
    )
    groups = list(spec.plan.groups())
    assert 1 < len(groups) < spec.plan.num_tiles  # grouping is in effect
    out, num = run_in_process(run)
    whole, n_whole = ndi.label(img > 0.5)
    assert_one_to_one(whole, out)
    assert num == n_whole
    stitched = RecordScanner(run.records("stitch")).scan().done
    assert sorted(stitched) == list(range(spec.plan.num_tiles))


@pytest.mark.parametrize("overlap", [0, 2])
def test_empty_tiles_are_never_read_and_sparse_volumes_equal_whole(
    tmp_path: Path, overlap: int
) -> None:
    """Few objects in a large empty volume: faces with an empty side cost no stage read,
    background-only relabel blocks no read either, and the result equals the whole image's."""
    img = np.zeros((24, 96, 96), np.float32)
    img[2:9, 10:30, 20:27] = 1.0  # cut by the faces at y = 16 and y = 24
    img[15:22, 70:75, 60:90] = 1.0  # cut by the faces at x = 64 and x = 72, z = 16
    src = write_zarr(tmp_path / "img.zarr", img)
    run, spec, _ = prepare_run(
        src,
        cc_label,
        (8, 8, 8),
        overlap,
        write_to=tmp_path / "out.zarr",
        sequential_labels=True,
        merge_threshold=0.0,
        overwrite=True,
    )
    plan = spec.plan
    run_stage(run, "segment")
    # stitch reads the face files of labelled tiles only: empty tiles wrote none, and the
    # stage is never read
    records = TaskRecords(run.records("stitch"), "stitch")
    segments = TaskRecords(run.records("segment"), "segment")
    empty = [t for t, r in segments.done_records().items() if r["n_labels"] == 0]
    assert empty and not any(FacesRef.of(segments.record(t)) for t in empty)
    stitcher = Stitcher(plan, records, 0.0, segments, faces=run.faces)
    edges = [e for g in plan.groups() for e in stitcher.edges(g)]
    assert len(edges) > 0
    out, num = run_in_process(run)
    whole, n_whole = ndi.label(img > 0.5)
    assert_one_to_one(whole, out)
    assert num == n_whole == 2


def test_default_threshold_on_blobs_still_matches_whole(tmp_path: Path) -> None:
    img = blobs((40, 64, 64), sigma=3.0, seed=3)
    out, num = _tiled(tmp_path, img, (16, 24, 24), 4, False, threshold=0.5)
    whole, n_whole = ndi.label(img > 0.5)
    assert_one_to_one(whole, out)


def touching_pair(shape=(40, 40)) -> np.ndarray:
    """Two distinct square objects that touch along the vertical line x=20 (a tile face)."""
    img = np.zeros(shape, dtype=np.float32)
    img[10:30, 8:20] = 1.0  # object A, value 1
    img[10:30, 20:32] = 2.0  # object B, value 2, touching A across x = 19|20
    return img


def test_touching_objects_across_a_face_stay_two(tmp_path: Path) -> None:
    img = touching_pair()
    src = write_zarr(tmp_path / "img.zarr", img)
    run, _, _ = prepare_run(
        src,
        value_label,
        (40, 20),
        6,
        write_to=tmp_path / "out.zarr",
        sequential_labels=True,
        merge_threshold=0.5,
        overwrite=True,
    )
    out, num = run_in_process(run)
    assert num == 2
    assert len(np.unique(out[10:30, 8:20])) == 1 and len(np.unique(out[10:30, 20:32])) == 1
    assert out[15, 10] != out[15, 25]


def value_label(block: np.ndarray) -> np.ndarray:
    """Objects are told apart by their intensity: label = connected components per value."""
    out = np.zeros(block.shape, dtype=np.int64)
    nxt = 0
    for v in np.unique(block[block > 0]):
        lab, n = ndi.label(block == v)
        out[lab > 0] = lab[lab > 0] + nxt
        nxt += n
    return out


def test_cut_object_ends_as_one_label_with_every_tiling(tmp_path: Path) -> None:
    img = np.zeros((33, 41, 29), dtype=np.float32)
    zz, yy, xx = np.ogrid[:33, :41, :29]
    img[(zz - 16) ** 2 + (yy - 20) ** 2 + (xx - 14) ** 2 < 12**2] = 1.0
    for tile, overlap in [((8, 8, 8), 0), ((8, 8, 8), 3), ((5, 7, 9), (1, 2, 3))]:
        out, num = _tiled(tmp_path, img, tile, overlap, True, threshold=0.5)
        assert num == 1, (tile, overlap)
        assert set(np.unique(out)) == {0, 1}


def full_connectivity(block: np.ndarray) -> np.ndarray:
    """Threshold + connected components with diagonal (26-) connectivity."""
    from scipy import ndimage

    return ndimage.label(block > 0.5, structure=np.ones((3,) * block.ndim))[0]


@pytest.mark.parametrize("overlap", [1, 4])
def test_objects_touching_only_across_a_corner_of_tiles_merge(tmp_path: Path, overlap: int) -> None:
    from scipy import ndimage

    img = np.zeros((16, 16, 16), np.float32)
    img[4:8, 4:8, 4:8] = 1  # two blobs meeting at one corner of the eight tiles: (7,7,7)-(8,8,8)
    img[8:12, 8:12, 8:12] = 1
    src = write_zarr(tmp_path / "img.zarr", img)
    run, _, _ = prepare_run(
        src,
        full_connectivity,
        (8, 8, 8),
        overlap,
        write_to=tmp_path / "o.zarr",
        merge_threshold=0.0,
    )
    out, n = run_in_process(run)
    whole = ndimage.label(img > 0.5, structure=np.ones((3, 3, 3)))[0]
    assert n == whole.max() == 1
    assert_one_to_one(whole, out)
