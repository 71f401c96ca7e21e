"""The end-of-run summary table and the block map picture."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import blobs, run_stage, write_zarr
from fns import cc_label
from serial import run_in_process

from blockbuster.io.sources import ImageSource
from blockbuster.pipeline.driver import prepare_run
from blockbuster.pipeline.spec import read_spec
from blockbuster.pipeline.thumbnail import MapPlane
from blockbuster.run.records import TaskRecords
from blockbuster.run.rundir import RunDir
from blockbuster.ui.live import start_status_server
from blockbuster.ui.mapdraw import Canvas
from blockbuster.ui.report import (
    DONE,
    LATER_FAILED_COLOR,
    STATE_COLORS,
    BlockMap,
    label_colors,
    legend_counts,
    robust_limits,
    summary_table,
    write_block_map,
)
from blockbuster.ui.status import run_status


def make_run(tmp_path: Path, img: np.ndarray, tile: tuple[int, ...]) -> RunDir:
    src = write_zarr(tmp_path / "img.zarr", img)
    run, _, _ = prepare_run(
        src,
        cc_label,
        tile,
        1,
        write_to=tmp_path / "out.zarr",
        sequential_labels=False,
        merge_threshold=0.5,
        overwrite=True,
    )
    return run


def test_summary_table_from_counts() -> None:
    table = summary_table(
        {"segment": (4, 0), "stitch": (3, 1)},
        {"segment": 2.0, "stitch": 4.0, "resolve": 0.25, "total": 8.0},
        num_labels=12345,
        total=4,
        voxels=4000,
    )
    assert table.splitlines() == [
        "stage                 tiles  failed   seconds      voxels/s",
        "segment                 4/4       0      2.00        2.00 k",
        "stitch                  3/4       1      4.00         750.0",
        "resolve                                  0.25             -",
        "total                                    8.00         500.0",
        "labels          12,345",
    ]


def test_summary_table_from_a_run_dir_and_its_status(tmp_path: Path) -> None:
    run = make_run(tmp_path, blobs((40, 60)), (10, 20))  # 4 x 3 tiles, 2400 voxels
    seg = TaskRecords(run.records("segment"), "segment")
    for tile in range(12):
        seg.done(tile, time.time(), 0.1, n_core=0, n_labels=0)
    stitch = TaskRecords(run.records("stitch"), "stitch")
    stitch.done(0, time.time(), 0.3, tiles=[0, 1, 2, 3, 4, 5])  # one block of six tiles
    stitch.failed(6, "x", tiles=[6, 7])
    seconds = {"segment+stitch": 2.4, "resolve": 0.1, "relabel": 1.2, "total": 4.8}
    table = summary_table(run, seconds, num_labels=7)
    assert table.splitlines() == [
        "stage                 tiles  failed   seconds      voxels/s",
        "segment               12/12       0         -             -",
        "stitch                 6/12       2         -             -",
        "relabel                0/12       0      1.20             -",
        "segment+stitch                           2.40        1.00 k",
        "resolve                                  0.10             -",
        "total                                    4.80         500.0",
        "labels          7",
    ]


def test_summary_table_from_a_status_matches_the_run_dir(tmp_path: Path) -> None:
    run = make_run(tmp_path, blobs((40, 60)), (10, 20))
    seg = TaskRecords(run.records("segment"), "segment")
    for tile in range(9):
        seg.done(tile, time.time(), 0.1, n_core=0, n_labels=0)
    seg.failed(10, "Traceback\nValueError: x")
    seconds = {"segment": 1.0, "total": 2.0}
    table = summary_table(run, seconds, num_labels=3)
    assert table.splitlines()[1] == "segment                9/12       1      1.00        1.80 k"
    assert summary_table(run_status(run), seconds, num_labels=3) == table


def _rgb_at(png: np.ndarray, canvas: Canvas, panel: int, x: float, y: float) -> np.ndarray:
    """The PNG's colour at mosaic point ``(x, y)`` of ``panel``."""
    px, py = canvas.panels[panel].pixel(x, y)
    return png[int(py), int(px), :3]


def _blend(color: tuple[float, float, float, float], grey: float) -> np.ndarray:
    rgb, alpha = np.array(color[:3]), color[3]
    return alpha * rgb + (1 - alpha) * grey


def test_block_map_colours_tiles_by_state(tmp_path: Path) -> None:
    import matplotlib.image
    from matplotlib import colormaps

    # a flat mid-grey image (a ramp from 0 to 1 sets the contrast, in the first two columns)
    img = np.full((40, 60), 0.5, dtype=np.float32)
    img[:, :2] = np.linspace(0, 1, 80).reshape(40, 2)
    run = make_run(tmp_path, img, (10, 20))  # grid 4 x 3
    plan = read_spec(run).plan
    seg = TaskRecords(run.records("segment"), "segment")
    done, failed, running = plan.tile_id((1, 1)), plan.tile_id((2, 1)), plan.tile_id((3, 2))
    pending = plan.tile_id((0, 1))
    mp = MapPlane.of(plan)
    for index in plan.tiles():  # the image's pieces, as segment workers save them
        seg.write_plane(plan.tile_id(index), mp.piece(plan, index, img, (0, 0)))
    seg.done(done, time.time(), 3.0, n_core=0, n_labels=0)
    seg.done(plan.tile_id((0, 2)), time.time(), 1.0, n_core=0, n_labels=0)
    seg.failed(failed, "Traceback\nValueError: boom")
    seg.call_started(running)
    stitch_failed = plan.tile_id((2, 2))  # segmented, but its stitch block failed
    seg.done(stitch_failed, time.time(), 1.0, n_core=0, n_labels=0)
    TaskRecords(run.records("stitch"), "stitch").failed(stitch_failed, "Traceback\nOSError: x")

    path = write_block_map(run)
    assert path == run.root / "block_map.png"
    png = matplotlib.image.imread(path)
    bm = BlockMap(run)
    canvas = bm.draw()  # the same drawing: its panels give the pixel positions
    assert png.shape[:2] == (canvas.image.size[1], canvas.image.size[0])
    ax_state, ax_secs = 0, 2

    def centre(tile: int) -> tuple[float, float]:
        (y0, y1), (x0, x1) = plan.core(plan.tile_index(tile))
        return bm.data_xy(0, (y0 + y1) / 2, (x0 + x1) / 2)

    grey = 0.5  # the flat part of the image, drawn mid-grey
    expected = {
        done: _blend(STATE_COLORS["done"], grey),
        failed: _blend(STATE_COLORS["failed"], grey),
        stitch_failed: _blend(STATE_COLORS["done"], grey),  # segment's state, outlined
        running: _blend(STATE_COLORS["running"], grey),
        pending: np.array([grey] * 3),
    }
    for tile, rgb in expected.items():
        got = _rgb_at(png, canvas, ax_state, *centre(tile))
        np.testing.assert_allclose(got, rgb, atol=0.03, err_msg=f"tile {tile}")
    # the stitch failure is outlined: its core's edge is drawn in the later-failure colour
    (y0, y1), (x0, x1) = plan.core(plan.tile_index(stitch_failed))
    edge = _rgb_at(png, canvas, ax_state, *bm.data_xy(0, (y0 + y1) / 2, x0))
    np.testing.assert_allclose(edge, LATER_FAILED_COLOR, atol=0.15)
    # the seconds panel: tiles not done in light grey, done ones in viridis; limits robust
    limits = robust_limits([3.0, 1.0, 1.0])
    assert limits is not None
    norm = (3.0 - limits[0]) / (limits[1] - limits[0])
    np.testing.assert_allclose(
        _rgb_at(png, canvas, ax_secs, *centre(done)), colormaps["viridis"](min(norm, 1.0))[:3],
        atol=0.03,
    )  # fmt: skip
    np.testing.assert_allclose(
        _rgb_at(png, canvas, ax_secs, *centre(pending)), [0.85] * 3, atol=0.03
    )
    # the legend's counts are the status table's (segment's row, then later failures)
    texts = canvas.legend_texts
    states = bm.task_states()
    assert texts == [f"{name} {n}" for name, n in legend_counts(states)]
    assert texts == ["pending 7", "running 1", "done 3", "failed 1", "skipped 0", "stitch failed 1"]
    with start_status_server(run) as server:
        import json
        import urllib.request

        with urllib.request.urlopen(server.url + "status.json", timeout=30) as response:
            status = json.loads(response.read())
    assert status["legend"] == [[name, n] for name, n in legend_counts(states)]
    assert status["tasks"]["segment"] == states["segment"]


def test_block_map_of_a_volume_has_a_panel_per_tile_layer_from_the_first_tile_on(
    tmp_path: Path,
) -> None:
    import matplotlib.image

    img = blobs((20, 32, 48))
    run = make_run(tmp_path, img, (5, 16, 16))  # 4 layers of 2 x 3 tiles
    plan = read_spec(run).plan
    mp = MapPlane.of(plan)
    assert mp.layers == ((0, 5), (5, 10), (10, 15), (15, 20))
    assert mp.zs == (2, 7, 12, 17)  # the middle of each layer: never a tile boundary
    assert [mp.panel_name(k) for k in range(4)][0] == "z 0-4 (plane 2)"
    # one tile in the first layer done: it is on the map at once (no wait for the middle)
    seg = TaskRecords(run.records("segment"), "segment")
    seg.done(0, time.time(), 1.0, n_core=0, n_labels=0)
    bm = BlockMap(run)
    states, _, _, _ = bm.tile_states()
    assert states.shape == (4, 2, 3)
    assert states[0, 0, 0] == DONE and (states.ravel()[1:] != DONE).all()
    canvas = bm.draw()
    names = [text for panel, text in canvas.texts if panel == 0]
    assert names == [
        "z 0-4 (plane 2)",
        "z 5-9 (plane 7)",
        "z 10-14 (plane 12)",
        "z 15-19 (plane 17)",
    ]
    # one tile done: a colour bar (none before a tile is done)
    assert canvas.colorbar
    # every layer done: the pixels of done tiles in each panel
    for tile in range(1, plan.num_tiles):
        seg.done(tile, time.time(), 1.0, n_core=0, n_labels=0)
    path = bm.write(tmp_path / "map.png")
    png = matplotlib.image.imread(path)
    canvas = bm.draw()
    ax_state = 0
    done = _blend(STATE_COLORS["done"], 0.97)  # no image pieces saved: the blank panel
    for k in range(4):
        for iy, ix in ((0, 0), (1, 2)):
            y, x = 8 + 16 * iy, 8 + 16 * ix
            got = _rgb_at(png, canvas, ax_state, *bm.data_xy(k, y, x))
            np.testing.assert_allclose(got, done, atol=0.03, err_msg=f"layer {k}")


def test_block_map_is_drawn_from_the_workers_pieces_without_reading_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = blobs((20, 32, 48))
    run = make_run(tmp_path, img, (5, 16, 16))
    labels, _ = run_in_process(run)  # real segment and relabel workers' code, in process
    reads: list[Any] = []
    real_open = ImageSource.open

    class Spy:
        def __init__(self, arr: Any) -> None:
            self.arr = arr

        def __getitem__(self, index: Any) -> Any:
            reads.append(index)
            return self.arr[index]

    monkeypatch.setattr(ImageSource, "open", lambda self: Spy(real_open(self)))
    bm = BlockMap(run)
    out = bm.write(tmp_path / "maps" / "map.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert reads == []  # the input is never read
    for k, z in enumerate((2, 7, 12, 17)):  # each layer's middle plane, exactly
        np.testing.assert_array_equal(bm.image_plane(k), img[z])
        lab = bm.label_mosaic()
        assert lab is not None
        np.testing.assert_array_equal(bm.map.panel(lab, k), labels[z])
    assert bm.layer_tiles()[2].tolist() == [[12, 13, 14], [15, 16, 17]]  # z layer 2 of 4


def test_labels_are_coloured_one_by_one() -> None:
    labels = np.array([[0, 1, 2], [3, 1000, 1001]], dtype=np.uint32)
    rgb = label_colors(labels)
    assert rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])  # background
    colours = {tuple(np.round(rgb.reshape(-1, 3)[i], 3)) for i in range(1, 6)}
    assert len(colours) == 5  # neighbouring ids, distinct colours
    np.testing.assert_array_equal(label_colors(labels), rgb)  # a label's colour is fixed
    many = label_colors(np.arange(1, 2001, dtype=np.uint64))
    assert len({tuple(np.round(c, 2)) for c in many}) > 1500


def test_colour_limits_are_robust() -> None:
    assert robust_limits([]) is None and robust_limits([np.nan, np.nan]) is None
    rng = np.random.default_rng(0)
    secs = rng.uniform(1.0, 2.0, 200)
    lo, hi = robust_limits(np.append(secs, 500.0))  # type: ignore[misc]
    assert 1.0 <= lo < 1.1 and 1.9 < hi <= 2.0  # the outlier does not stretch them
    lo, hi = robust_limits([1.0] * 9 + [60.0])  # type: ignore[misc]
    assert hi < 2  # one slow tile of ten
    lo, hi = robust_limits([3.055, 3.06, 3.067])  # type: ignore[misc]
    assert hi - lo >= 0.2 * 3.06 - 1e-9 and lo < 3.055 and hi > 3.067  # a sensible span
    lo, hi = robust_limits([0.001, 0.002])  # type: ignore[misc]
    assert lo >= 0 and hi - lo >= 0.01


def test_block_map_of_a_huge_plane_is_strided(tmp_path: Path) -> None:
    img = blobs((300, 2100))
    run = make_run(tmp_path, img, (100, 700))
    run_in_process(run)
    bm = BlockMap(run)
    assert bm.step == 3
    np.testing.assert_array_equal(bm.image_plane(), img[::3, ::3])


def test_block_map_of_many_layers_stays_small(tmp_path: Path) -> None:
    img = np.zeros((64, 256, 256), dtype=np.uint8)
    run = make_run(tmp_path, img, (2, 32, 32))  # 32 layers of 8 x 8 tiles
    mp = BlockMap(run).map
    assert mp.num_panels == 32 and max(mp.mosaic_shape) <= 1024
    assert mp.rows * mp.columns >= 32


def test_block_map_while_tiles_are_missing_leaves_them_blank(tmp_path: Path) -> None:
    img = blobs((30, 40))
    run = make_run(tmp_path, img, (10, 20))
    run_stage(run, "segment", [(0, 1)])  # tile (0, 1) only
    plane = BlockMap(run).image_plane()
    np.testing.assert_array_equal(plane[0:10, 20:40], img[0:10, 20:40])
    assert np.isnan(plane[10:, :]).all() and np.isnan(plane[:, :20]).all()
