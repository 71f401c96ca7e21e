from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr
from conftest import assert_one_to_one, blobs, write_zarr
from scipy import ndimage as ndi

TESTS = str(Path(__file__).parent)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": TESTS, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "blockbuster.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=env,
    )


def test_segment_with_a_module_fn(tmp_path: Path) -> None:
    img = blobs((40, 50), seed=1)
    src = write_zarr(tmp_path / "img.zarr", img)
    done = cli(
        "segment",
        src,
        str(tmp_path / "out.zarr"),
        "--fn",
        "fns:cc_label",
        "--tile",
        "16,16",
        "--overlap",
        "2",
        "--workers",
        "2",
        "--merge-threshold",
        "0",
        "--sequential",
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    whole, n = ndi.label(img > 0.5)
    assert f"labels          {n}" in done.stdout
    assert_one_to_one(whole, zarr.open_array(str(tmp_path / "out.zarr"))[:])


def test_default_watershed_with_kwargs(tmp_path: Path) -> None:
    img = np.zeros((32, 48), dtype=np.float32)
    img[5:12, 5:12] = 1
    img[20:28, 30:40] = 1
    src = write_zarr(tmp_path / "img.zarr", img)
    done = cli(
        "segment",
        src,
        str(tmp_path / "out.zarr"),
        "--tile",
        "16,24",
        "--overlap",
        "4",
        "--fn-kwargs",
        json.dumps({"threshold": 0.5, "sigma": 0}),
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = zarr.open_array(str(tmp_path / "out.zarr"))[:]
    assert len(np.unique(out[img > 0])) == 2 and (out[img == 0] == 0).all()


def test_failed_tiles_exit_nonzero(tmp_path: Path) -> None:
    img = blobs((20, 20), seed=1)
    img[3, 3] = 7.0
    src = write_zarr(tmp_path / "img.zarr", img)
    done = cli(
        "segment",
        src,
        str(tmp_path / "out.zarr"),
        "--fn",
        "fns:fail_on_value",
        "--fn-kwargs",
        '{"bad_value": 7.0}',
        "--tile",
        "10,10",
        "--max-retries",
        "0",
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "FAILED segment: 1 failed" in done.stderr
    assert "deliberate failure" in done.stderr


def test_bad_fn_is_a_one_line_error(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20)))
    done = cli(
        "segment", src, str(tmp_path / "o.zarr"), "--fn", "nosuch", "--tile", "8,8", cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --fn 'nosuch' must look like package.module:function"
