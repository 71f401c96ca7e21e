"""The live status page: its JSON and HTML over HTTP, and in a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, write_zarr
from fns import cc_label

from blockbuster import tile_process
from blockbuster.pipeline.driver import prepare_run
from blockbuster.run.records import TaskRecords
from blockbuster.run.rundir import RunDir
from blockbuster.ui.live import _lingering, start_status_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def make_run(tmp_path: Path) -> RunDir:
    src = write_zarr(tmp_path / "img.zarr", blobs((40, 60)))
    run, _, _ = prepare_run(
        src,
        cc_label,
        (10, 20),  # 4 x 3 = 12 tiles
        1,
        write_to=tmp_path / "out.zarr",
        sequential_labels=False,
        merge_threshold=0.5,
        overwrite=True,
    )
    return run


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def test_status_json_and_page_over_http(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    seg = TaskRecords(run.records("segment"), "segment")
    for tile in range(5):
        seg.done(tile, time.time(), 0.1, n_core=0, n_labels=0)
    seg.failed(7, "Traceback\nValueError: boom")
    seg.call_started(9)
    stitch = TaskRecords(run.records("stitch"), "stitch")
    stitch.done(0, time.time(), 0.2, tiles=[0, 1, 2])

    with start_status_server(run) as server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", server.url)
        code, ctype, body = get(server.url + "status.json")
        assert code == 200 and ctype == "application/json"
        status = json.loads(body)
        assert status["total"] == 12
        assert status["tasks"] == {
            "segment": {"done": 5, "failed": 1, "pending": 5, "running": 1, "skipped": 0},
            "stitch": {"done": 3, "failed": 0, "pending": 9, "running": 0, "skipped": 0},
            "relabel": {"done": 0, "failed": 0, "pending": 12, "running": 0, "skipped": 0},
        }
        assert status["failed_tiles"]["segment"] == [7]
        # the failed tile links to its traceback, served by the page
        [failed] = status["failed"]["segment"]
        assert failed["tile"] == 7 and failed["message"] == "ValueError: boom"
        code, ctype, body = get(server.url + failed["url"])
        assert code == 200 and ctype.startswith("text/plain")
        assert "Traceback\nValueError: boom" in body.decode() and "segment 7" in body.decode()
        assert get(server.url + "traceback/segment/3")[0] == 404  # done: no traceback
        # the running tile, with the worker that runs it
        [running] = status["running_tiles"]["segment"]
        assert running["tile"] == 9 and running["host"] == socket.gethostname()
        assert running["pid"] == os.getpid() and running["since"] <= time.time()
        assert status["workers"]["segment"] == {f"{socket.gethostname()} {os.getpid()}": 1}
        # the block map's legend: the segment row's counts, from the same source
        assert dict(map(tuple, status["legend"])) == status["tasks"]["segment"]
        # times: stitch waits for segment, segment has a rate and an ETA
        assert status["timing"]["stitch"]["state"] == "waiting"
        assert status["timing"]["stitch"]["waiting"] == ["segment"]
        assert status["timing"]["segment"]["state"] == "running"
        assert status["elapsed"] >= 0 and status["finished"] is False

        seg.done(5, time.time(), 0.1, n_core=0, n_labels=0)  # counts are read on every request
        assert json.loads(get(server.url + "status.json")[2])["tasks"]["segment"]["done"] == 6

        code, ctype, body = get(server.url)
        page = body.decode()
        assert code == 200 and ctype.startswith("text/html")
        for task in ("segment", "stitch", "relabel"):
            for key in ("done", "failed", "pending", "running"):
                assert f'id="{task}-{key}"' in page
        assert 'id="block-map"' in page and "panel.html" in page
        for name in ("input", "output", "tile shape", "overlap", "workers", "fn"):
            assert f"<th>{name}</th>" in page, name
        assert str(tmp_path / "img.zarr") in page and "10x20" in page
        assert "fns:cc_label" in page
        code, ctype, body = get(server.url + "panel.html")
        panel = body.decode()
        assert code == 200 and ctype.startswith("text/html")
        assert 'id="segment-done">6<' in panel and 'id="stitch-eta">waiting for segment<' in panel
        assert '<a class="traceback" href="traceback/segment/7">' in panel
        assert re.search(r"<td>segment</td><td>9</td><td>[^<]+</td><td>\d+</td>", panel)

        code, ctype, png = get(server.url + "block_map.png?t=123")
        assert code == 200 and ctype == "image/png" and png[:8] == b"\x89PNG\r\n\x1a\n"
        assert get(server.url + "block_map.png")[2] == png  # cached for a couple of seconds
        assert get(server.url + "nothing")[0] == 404
    with pytest.raises(OSError):
        get(server.url + "status.json")  # closed


def test_status_server_survives_the_run_dir_records_going(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with start_status_server(run, port=0) as server:
        shutil.rmtree(run.root / "records", ignore_errors=True)
        status = json.loads(get(server.url + "status.json")[2])
        assert status["tasks"]["segment"] == {
            "done": 0,
            "failed": 0,
            "pending": 12,
            "running": 0,
            "skipped": 0,
        }


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("BLOCKBUSTER_REQUIRE_BROWSER"),
    reason="needs Debian's chromium for a headless browser: apt-get install -y chromium",
)
def test_page_in_a_headless_browser_shows_counts_filled_in_by_its_script(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    run = make_run(tmp_path)
    seg = TaskRecords(run.records("segment"), "segment")
    relabel = TaskRecords(run.records("relabel"), "relabel")
    with start_status_server(run, refresh=1.0) as server:
        page = get(server.url)[2].decode()
        # the page as served holds placeholders: only the script can put numbers there
        assert re.search(r'id="segment-done">&hellip;<', page)
        # records written after the page was served
        for tile in range(8):
            seg.done(tile, time.time(), 0.1, n_core=0, n_labels=0)
        seg.failed(10, "Traceback\nValueError: boom")
        seg.call_started(11)
        relabel.done(0, time.time(), 0.3, tiles=[0, 1, 2, 3])
        result = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--virtual-time-budget=3000",
                "--dump-dom",
                server.url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]

    def cell(element_id: str) -> str:
        match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
        assert match, f"no element {element_id} in the DOM:\n{dom[:3000]}"
        return match.group(1)

    expected = {
        "segment": {"done": "8", "failed": "1", "pending": "2", "running": "1", "skipped": "0"},
        "stitch": {"done": "0", "failed": "0", "pending": "12", "running": "0"},
        "relabel": {"done": "4", "failed": "0", "pending": "8", "running": "0"},
    }
    for task, counts in expected.items():
        for key, value in counts.items():
            assert cell(f"{task}-{key}") == value, (task, key)
    assert cell("connection") == "live"
    # the dashboard's parts, rendered in the browser: times, waiting, running, legend, links
    assert re.fullmatch(r"\d+ s|\d+ min \d+ s", cell("segment-elapsed")), cell("segment-elapsed")
    assert re.fullmatch(r"[\d.]+ tiles/s", cell("segment-rate")), cell("segment-rate")
    assert re.fullmatch(r"\d+ s|\d+ min \d+ s", cell("segment-eta")), cell("segment-eta")
    assert cell("stitch-eta") == "waiting for segment"
    assert cell("run-state") == "running" and re.fullmatch(r"\d+ s", cell("elapsed"))
    running = re.search(r'<table id="running">.*?</table>', dom, re.S)
    assert running, dom[:3000]
    assert re.search(
        rf"<td>segment</td><td>11</td><td>{re.escape(socket.gethostname())}</td>", running.group(0)
    )
    assert cell("num-workers") == "1"
    legend = dict(re.findall(r'data-state="([^"]+)">[^<]* (\d+)<', dom))
    assert legend == {"pending": "2", "running": "1", "done": "8", "failed": "1", "skipped": "0"}
    assert re.search(r'<a class="traceback" href="traceback/segment/10">segment tile 10</a>', dom)
    assert re.search(r'id="segment-failed" class="bad"', dom)  # failures stand out
    assert re.search(r'id="stitch-failed">', dom)
    assert "segment failed tiles: 10" in cell("failed-list")
    # the block map was fetched by the browser, decoded as an image, and swapped in
    img = re.search(r'<img[^>]*id="block-map"[^>]*>', dom)
    assert img, dom[:3000]
    assert re.search(r'src="[^"]*block_map\.png\?t=\d+"', img.group(0))
    size = re.search(r'data-loaded="(\d+)x(\d+)"', img.group(0))
    assert size and int(size.group(1)) > 100 and int(size.group(2)) > 100
    assert np.prod([int(v) for v in size.groups()]) > 0


def test_page_shows_the_final_state_after_the_run_and_gives_way_to_the_next(
    tmp_path: Path,
) -> None:
    from blockbuster.run.events import RunFinished, RunStarted, StageStarted
    from blockbuster.ui.live import StatusPageObserver
    from blockbuster.ui.status import run_tasks_of

    run = make_run(tmp_path)
    tasks = tuple(run_tasks_of(run))
    observer = StatusPageObserver("127.0.0.1:0")
    observer(RunStarted(run.root, tasks))
    observer(StageStarted(tasks[:2]))
    server = observer.server
    assert server is not None
    seg = TaskRecords(run.records("segment"), "segment")
    for tile in range(11):
        seg.done(tile, time.time(), 0.1, n_core=0, n_labels=0)
    seg.failed(11, "Traceback\nValueError: the last one")
    observer(RunFinished(run.root, None, keep=False))
    assert observer.server is None
    shutil.rmtree(run.root)  # the run directory goes: the page still shows the final state
    status = json.loads(get(server.url + "status.json")[2])
    assert status["finished"] is True
    assert status["tasks"]["segment"] == {
        "done": 11, "failed": 1, "pending": 0, "running": 0, "skipped": 0
    }  # fmt: skip
    assert status["timing"]["relabel"]["state"] == "not started"
    assert "ValueError: the last one" in get(server.url + "traceback/segment/11")[2].decode()
    with urllib.request.urlopen(server.url + "panel.html", timeout=30) as response:
        assert response.headers["X-Run-State"] == "finished"
        assert "run <span id='run-state'>finished</span>" in response.read().decode()
    assert get(server.url + "block_map.png")[2][:8] == b"\x89PNG\r\n\x1a\n"
    # the next run's page takes over: the finished one is closed
    run2 = make_run(tmp_path / "second")
    following = StatusPageObserver("127.0.0.1:0")
    following(RunStarted(run2.root, tuple(run_tasks_of(run2))))
    with pytest.raises(OSError):
        get(server.url + "status.json")
    assert following.server is not None
    second = following.server
    following(RunFinished(run2.root, None))
    assert json.loads(get(second.url + "status.json")[2])["finished"] is True
    from blockbuster.ui import live

    for lingering in list(live._lingering):
        lingering.close()


def test_a_real_3d_run_writes_a_static_copy_of_the_final_page(tmp_path: Path) -> None:
    import base64

    import matplotlib.image as mpimg

    from blockbuster import tile_process
    from blockbuster.ui.report import BlockMap

    src = write_zarr(tmp_path / "img.zarr", blobs((12, 30, 40), seed=3))
    out = tmp_path / "out.zarr"
    # 3 layers of 3 x 2 tiles; the run directory kept, so the map's geometry can be read
    r = tile_process(src, cc_label, (4, 10, 20), 1, write_to=out, num_workers=2, keep_stage=True)
    run = RunDir.for_output(out)
    assert r.block_map == str(run.root / "block_map.png")
    assert r.status_page == str(run.root / "status.html")
    assert f"status page     {r.status_page}" in r.summary()
    page = Path(r.status_page).read_text()
    # self-contained: no address but the embedded map, and no script
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(https?:)?//[\w.]", text.replace(str(tmp_path), ""))
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert "<script" not in page and 'src="block_map.png' not in page
    found = re.search(
        r'<img id="block-map" alt="block map" src="data:image/png;base64,([^"]+)"', page
    )
    assert found
    png = base64.b64decode(found.group(1))
    assert png == Path(r.block_map).read_bytes()
    # the final counts, times and parameters
    for task in ("segment", "stitch", "relabel"):
        assert f'id="{task}-done">18<' in page and f'id="{task}-pending">0<' in page
        assert f'id="{task}-eta">finished<' in page
    assert "run <span id='run-state'>finished</span>" in page
    assert "<th>tile shape</th><td>4x10x20</td>" in page
    legend = dict(re.findall(r'data-state="([^"]+)">[^<]* (\d+)<', page))
    assert legend == {"pending": "0", "running": "0", "done": "18", "failed": "0", "skipped": "0"}
    # the map: one panel per tile layer, each named, every tile done in each
    bm = BlockMap(run)
    assert bm.map.num_panels == 3
    canvas = bm.draw()
    assert [text for panel, text in canvas.texts if panel == 0] == [
        "z 0-3 (plane 1)", "z 4-7 (plane 5)", "z 8-11 (plane 9)"
    ]  # fmt: skip
    states, _, _, _ = bm.tile_states()
    assert states.shape == (3, 3, 2) and (states == 2).all()
    image = mpimg.imread(Path(r.block_map))
    assert image.shape[0] > 100 and image.shape[1] > 300


def test_the_final_block_map_is_drawn_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report draws it at the run's end and the live page's final state shows that one."""
    from blockbuster.ui import report

    drawn: list[bool] = []
    original = report.BlockMap.png

    def counting(self: report.BlockMap, *args: object, **kwargs: object) -> bytes:
        drawn.append(True)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(report.BlockMap, "png", counting)
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 24)))
    result = tile_process(
        src,
        cc_label,
        (10, 12),
        write_to=tmp_path / "o.zarr",
        backend="serial",
        status_page="127.0.0.1:0",
    )
    assert result.ok and len(drawn) == 1
    final = _lingering[-1].state
    assert final.final_png is not None and final.final_png == Path(result.block_map).read_bytes()
