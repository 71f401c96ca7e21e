"""What a user sees from a run: progress lines, the summary table, the block map and the live
status page, through the real driver and CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import matplotlib.image as mpimg
from conftest import blobs, write_zarr
from fns import cc_label

from blockbuster import tile_process
from blockbuster.run.rundir import RunDir

TESTS = str(Path(__file__).parents[1])


def test_progress_lines_table_and_block_map(tmp_path: Path, capsys) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((30, 40), seed=1))
    out = tmp_path / "out.zarr"
    r = tile_process(src, cc_label, (10, 10), 1, write_to=out, num_workers=2, progress=True)
    err = capsys.readouterr().err
    assert re.search(r"live status page at http://127\.0\.0\.1:\d+/", err)
    for stage in ("segment", "stitch", "relabel"):
        assert re.search(rf"^{stage}: 12/12 tiles, 0 failed, [\d.]+ s", err, re.M), err
    # the table: one row per stage with every tile done; the label count once, in the summary
    for stage in ("segment", "stitch", "relabel"):
        assert re.search(rf"^{stage}\s+12/12\s+0\s", r.table, re.M), r.table
    assert "labels" not in r.table
    assert r.summary().count("labels          ") == 1
    assert r.table in err  # printed at the end with progress on
    # the run directory is gone, the block map sits beside the output
    assert not RunDir.for_output(out).root.exists()
    assert r.block_map == str(out) + ".block_map.png"
    assert mpimg.imread(r.block_map).ndim == 3
    # and the status page's final copy beside it, named in the summary
    assert r.status_page == str(out) + ".status.html" and Path(r.status_page).is_file()
    assert f"status page     {r.status_page}" in r.summary()
    assert 'id="segment-done">12<' in Path(r.status_page).read_text()


def test_live_status_page_while_the_run_goes(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((30, 40), seed=2))
    calls = tmp_path / "calls"
    calls.mkdir()
    kwargs = json.dumps({"calls_dir": str(calls), "delay": 0.4})
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockbuster", "segment", src, str(tmp_path / "o.zarr")]
        + ["--fn", "fns:slow_logged", "--fn-kwargs", kwargs, "--tile", "10,10"]
        + ["--no-progress", "--status-page", "127.0.0.1:0"],
        cwd=tmp_path,
        env={"PYTHONPATH": TESTS, "PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert url, line
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with urllib.request.urlopen(url.group(1) + "status.json", timeout=5) as resp:
                status = json.load(resp)
            seg = status["tasks"]["segment"]
            assert sum(seg.values()) == status["total"] == 12
            seen.append(seg["done"])
            if 0 < seg["done"] < 12:
                with urllib.request.urlopen(url.group(1), timeout=5) as resp:
                    assert b'id="segment-done"' in resp.read()
                break
            time.sleep(0.2)
        assert any(0 < d < 12 for d in seen), seen  # seen part way through
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
