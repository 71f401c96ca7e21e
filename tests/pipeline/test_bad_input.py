"""Every wrong input named in the docs fails early with a one-line error naming the parameter
and the fix, before any tile runs and without touching what is already on disk."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_one_to_one, blobs, write_zarr
from fns import bad_result, cc_label, huge_ids
from scipy import ndimage as ndi

from blockbuster import TileFailureError, tile_process
from blockbuster.run.rundir import RunDir

ERRORS = (ValueError, TypeError, FileNotFoundError)


def _nothing_written(out: Path) -> None:
    assert not out.exists() and not RunDir.for_output(out).root.exists()


def _refused(tmp_path: Path, src: str, match: str, **override: object) -> None:
    out = Path(str(override.pop("write_to", tmp_path / "out.zarr")))
    kwargs: dict = dict(image=src, fn=cc_label, tile_shape=(8, 8, 8), overlap=1, write_to=out)
    kwargs.update(override)
    with pytest.raises(ERRORS, match=match) as err:
        tile_process(**kwargs)
    assert "\n" not in str(err.value), "the error must be one line"
    _nothing_written(out)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"tile_shape": (8, 8)}, r"give a 3-D tile_shape"),
        ({"tile_shape": (8, 8, 8, 8)}, r"tile_shape=\(8, 8, 8, 8\) must have 2 or 3 entries"),
        ({"tile_shape": (8, 0, 8)}, r"tile_shape=\(8, 0, 8\) must hold positive integers"),
        ({"tile_shape": (8, -3, 8)}, r"tile_shape=.* must hold positive integers"),
        ({"tile_shape": 8}, r"tile_shape=8 must give one size per spatial axis"),
        ({"overlap": -2}, r"overlap=-2 must be >= 0"),
        ({"overlap": (1, 1)}, r"overlap=\(1, 1\) has 2 entries but tile_shape has 3"),
        ({"overlap": (1, -1, 0)}, r"overlap=\(1, -1, 0\) must hold integers >= 0"),
        ({"channels": True}, r"channels=True .* there is no channel axis"),
        ({"num_workers": 0}, r"num_workers"),
        ({"merge_threshold": 1.5}, r"merge_threshold=1.5 must be in \[0, 1\)"),
        ({"timeout": -1}, r"timeout"),
        ({"fn": "not callable"}, r"fn must be a callable"),
        ({"fn": functools.partial(np.add, threading.Lock())}, r"fn cannot be sent"),
        ({"backend": "spark"}, r"backend='spark' must be"),
        ({"timeout": float("nan")}, r"timeout=nan must be a finite number"),
        ({"merge_threshold": "0.5"}, r"merge_threshold='0.5' must be a number"),
        ({"tile_shape": "8,8,8"}, r"tile_shape='8,8,8' must be a tuple of ints"),
        ({"tile_shape": (8, 8.5, 8)}, r"tile_shape=.* must hold ints"),
        ({"overlap": "2"}, r"overlap='2' must be an int"),
        ({"host": "no-such-host.invalid"}, r"host='no-such-host.invalid' does not resolve"),
        ({"host": "192.0.2.1"}, r"host='192.0.2.1' cannot be bound here"),
        ({"status_page": "no-such-host.invalid:0"}, r"status_page='no-such-host.invalid'"),
        ({"max_worker_restarts": -1}, r"max_worker_restarts=-1 must be an integer >= 0"),
        ({"sequential_labels": "yes"}, r"sequential_labels='yes' must be True or False"),
        ({"write_to": "/proc/blockbuster-out.zarr"}, r"write_to=.* cannot be created"),
    ],
)
def test_bad_parameters(tmp_path: Path, blob_volume, override: dict, match: str) -> None:
    src, _ = blob_volume
    _refused(tmp_path, src, match, **override)


def test_status_page_port_taken(tmp_path: Path, blob_volume) -> None:
    import socket

    src, _ = blob_volume
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        _refused(
            tmp_path,
            src,
            rf"status_page='127.0.0.1:{port}' cannot be bound here",
            status_page=f"127.0.0.1:{port}",
        )


def test_zero_size_axis(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", np.zeros((0, 16, 16), np.float32), chunks=(1, 8, 8))
    _refused(tmp_path, src, r"image has shape \(0, 16, 16\): an axis of size 0")


def test_missing_source(tmp_path: Path) -> None:
    _refused(tmp_path, str(tmp_path / "missing.zarr"), r"image=.*missing.zarr' does not exist")


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_source_that_is_not_zarr(tmp_path: Path, kind: str) -> None:
    src = tmp_path / ("stack" if kind == "directory" else "stack.tif")
    if kind == "directory":
        src.mkdir()
        (src / "plane_000.tif").write_bytes(b"II*\0")
    else:
        src.write_bytes(b"II*\0")
    _refused(tmp_path, str(src), r"image=.* is not a zarr array or group .* convert the image")


def test_unsupported_ndim(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", np.zeros((2, 3, 8, 8, 8), dtype=np.uint8))
    _refused(tmp_path, src, r"image has 5 axes .* but tile_shape has 3")
    line = write_zarr(tmp_path / "line.zarr", np.zeros((50,), dtype=np.uint8))
    _refused(tmp_path, line, r"tile_shape=\(8,\) must have 2 or 3 entries", tile_shape=(8,))


def test_write_to_is_the_source(tmp_path: Path, blob_volume) -> None:
    src, img = blob_volume
    with pytest.raises(
        ValueError, match=r"write_to=.* it is the input image or holds it; choose a new path"
    ):
        tile_process(src, cc_label, (8, 8, 8), write_to=src)
    np.testing.assert_array_equal(zarr.open_array(src)[:], img)


def test_write_to_not_writable(tmp_path: Path, blob_volume) -> None:
    src, _ = blob_volume
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _refused(tmp_path, src, r"cannot be created: .*a_file is a file", write_to=blocker / "o.zarr")
    if os.geteuid() != 0:  # root writes anywhere; the permission check only binds others
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        _refused(tmp_path, src, r"no write permission", write_to=ro / "o.zarr")


def test_existing_output_is_never_overwritten_unless_asked(tmp_path: Path, blob_volume) -> None:
    src, _ = blob_volume
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "precious").write_text("x")
    with pytest.raises(ValueError, match=r"already exists; pass overwrite=True") as err:
        tile_process(src, cc_label, (8, 8, 8), write_to=out)
    assert "\n" not in str(err.value)
    assert (out / "precious").read_text() == "x"
    assert not RunDir.for_output(out).root.exists()


def test_write_to_holding_a_different_run(tmp_path: Path, blob_volume) -> None:
    """An unfinished run with other parameters is refused, kept intact, and resumable."""
    src, img = blob_volume
    out = tmp_path / "out.zarr"
    fail = functools.partial(bad_result, kind="float", bad_value=float(img.flat[0]))
    with pytest.raises(TileFailureError):
        tile_process(src, fail, (8, 8, 8), 1, write_to=out, max_retries=0)
    run = RunDir.for_output(out)
    before = {p: p.stat().st_mtime_ns for p in run.root.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"holds an unfinished run, and .*other parameters"):
        tile_process(src, cc_label, (8, 8, 16), 1, write_to=out)
    after = {p: p.stat().st_mtime_ns for p in run.root.rglob("*") if p.is_file()}
    assert before == after
    result = tile_process(src, cc_label, (8, 8, 16), 1, write_to=out, overwrite=True)
    assert_one_to_one(ndi.label(img > 0.5)[0], zarr.open_array(str(out))[:])
    assert result.fn_calls == result.tiles_total


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("shape", r"fn returned shape \(\d+, \d+\) for a block of spatial shape"),
        ("float", r"fn returned dtype float32; labels must be integers"),
        ("negative", r"fn returned negative labels"),
    ],
)
def test_bad_fn_result_is_that_tiles_error(tmp_path: Path, kind: str, match: str) -> None:
    img = blobs((30, 40), seed=5)
    img[25, 35] = 7.0
    src = write_zarr(tmp_path / "img.zarr", img)
    fn = functools.partial(bad_result, kind=kind, bad_value=7.0)
    with pytest.raises(TileFailureError, match=match) as err:
        tile_process(src, fn, (10, 10), 0, write_to=tmp_path / "out.zarr", max_retries=0)
    result = err.value.result
    assert result.tiles_failed == 1
    (tile, errors), *others = result.failed["segment"].items()
    assert not others and tile == 11  # tile (2, 3) holds voxel (25, 35)
    assert errors[-1].message.startswith("ValueError: fn returned")


def test_any_label_values_fit_the_id_scheme(tmp_path: Path) -> None:
    """IDs near 2**64 from fn are renumbered per tile; there is no cap to exceed."""
    img = blobs((30, 40), seed=2)
    src = write_zarr(tmp_path / "img.zarr", img)
    r = tile_process(src, huge_ids, (10, 10), 2, write_to=tmp_path / "o.zarr", merge_threshold=0)
    whole, n = ndi.label(img > 0.5)
    assert r.num_labels == n
    assert_one_to_one(whole, zarr.open_array(str(tmp_path / "o.zarr"))[:])


def test_fn_import_path_that_does_not_import(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20)))
    out = tmp_path / "o.zarr"
    done = subprocess.run(
        [sys.executable, "-m", "blockbuster", "segment", src, str(out), "--tile", "8,8"]
        + ["--fn", "no_such_package.mod:fn"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith(
        "error: --fn 'no_such_package.mod:fn': cannot import 'no_such_package.mod'"
    )
    assert len(done.stderr.strip().splitlines()) == 1
    _nothing_written(out)


DISK_FULL = textwrap.dedent(
    """
    import functools, os, sys
    sys.path.insert(0, {tests!r})
    import numpy as np, zarr
    from scipy import ndimage as ndi
    from conftest import assert_one_to_one, blobs, write_zarr
    from fns import fill_disk_once
    from blockbuster import TileFailureError, tile_process

    small, tmp = sys.argv[1], sys.argv[2]
    img = blobs((60, 80), seed=4)
    img[55, 75] = 7.0  # the last tile fills the disk
    src = write_zarr(os.path.join(tmp, "img.zarr"), img, chunks=(10, 10))
    armed, filler = os.path.join(tmp, "armed"), os.path.join(small, "filler")
    open(armed, "w").close()
    fn = functools.partial(fill_disk_once, armed=armed, filler=filler, trigger=7.0)
    out = os.path.join(small, "out.zarr")
    try:
        tile_process(src, fn, (10, 10), 2, write_to=out, max_retries=1, merge_threshold=0)
        raise SystemExit("the run should have stopped on a full disk")
    except TileFailureError as e:
        print("REPORT:", str(e).splitlines()[0])
        assert "No space left on device" in str(e), str(e)
        assert "free space there, then run the same call again" in str(e)
        staged = e.result.tiles_completed
    assert not os.path.exists(os.path.join(out, "zarr.json"))
    os.remove(armed)
    os.remove(filler)
    r = tile_process(src, fn, (10, 10), 2, write_to=out, max_retries=1, merge_threshold=0)
    assert_one_to_one(ndi.label(img > 0.5)[0], zarr.open_array(out)[:])
    print("STAGED", staged, "TILES", r.tiles_total, "CALLS", r.fn_calls)
    """
)


def test_disk_full_while_staging_stops_reports_and_resumes(tmp_path: Path) -> None:
    """A real full filesystem (a 4 MiB tmpfs in a private mount namespace)."""
    small = tmp_path / "small"
    small.mkdir()
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL.format(tests=str(Path(__file__).parents[1])))
    probe = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")
    done = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c"]
        + ['mount -t tmpfs -o size=4m tmpfs "$1" && exec "$2" "$3" "$1" "$4"', "_"]
        + [str(small), sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    staged, total, calls = (int(v) for v in done.stdout.split("STAGED")[1].split()[::2])
    assert 0 < staged < total  # it stopped part way ...
    assert calls < 2 * total  # ... and the rerun did not redo the staged tiles
