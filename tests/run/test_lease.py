"""One driver per run: the lease, two drivers at once, workers started by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import blobs, write_zarr
from fns import cc_label

from blockbuster import tile_process
from blockbuster.run.lease import LEASE_FILE, Lease, LeaseHeldError, check_live_lease, read_holder
from blockbuster.run.rundir import RunDir


def test_lease_is_exclusive_and_released(tmp_path: Path) -> None:
    first = Lease(tmp_path).acquire()
    with pytest.raises(LeaseHeldError, match=f"pid {os.getpid()} on"):
        Lease(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LEASE_FILE).exists()
    with Lease(tmp_path):
        assert read_holder(tmp_path) is not None
    assert read_holder(tmp_path) is None


def test_stale_lease_of_a_dead_driver_is_taken_over(tmp_path: Path, caplog) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    info = {"host": os.uname().nodename, "pid": int(dead.stdout), "started": 0, "token": "x"}
    (tmp_path / LEASE_FILE).write_text(json.dumps(info))
    with caplog.at_level("WARNING", logger="blockbuster"), Lease(tmp_path) as lease:
        assert lease.held()
    assert "taking over the lease" in caplog.text


def test_lease_without_heartbeat_goes_stale_and_a_lost_lease_is_noticed(tmp_path: Path) -> None:
    other_host = {"host": "node-elsewhere", "pid": 1, "started": time.time(), "token": "t0"}
    path = tmp_path / LEASE_FILE
    path.write_text(json.dumps(other_host))
    with pytest.raises(LeaseHeldError, match="node-elsewhere"):
        Lease(tmp_path, stale_after=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))  # its driver stopped renewing it two minutes ago
    lease = Lease(tmp_path, stale_after=60).acquire()
    lease.stop_heartbeat()
    # a third driver takes it over (this one was frozen past the bound)
    os.utime(path, (old, old))
    thief = Lease(tmp_path, stale_after=60).acquire()
    with pytest.raises(LeaseHeldError, match="lost its lease"):
        lease.check()
    lease.release()  # does not remove the thief's lease
    assert thief.held()
    thief.release()


def test_workers_started_by_hand_need_a_live_driver(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no driver is running it"):
        check_live_lease(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "blockbuster.worker", str(tmp_path), "segment"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "no driver is running it" in proc.stderr


def test_second_driver_and_resubmit_are_refused_while_the_first_runs(tmp_path: Path) -> None:
    img = blobs((40, 40), seed=3)
    src = write_zarr(tmp_path / "img.zarr", img, chunks=(10, 10))
    out = tmp_path / "out.zarr"
    calls = tmp_path / "calls"
    calls.mkdir()
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import functools, sys
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from fns import slow_logged
        from blockbuster import tile_process
        fn = functools.partial(slow_logged, calls_dir={str(calls)!r}, delay=0.3)
        tile_process({src!r}, fn, (10, 10), 0, write_to={str(out)!r}, merge_threshold=0.0)
        print("DONE")
    """)
    )
    first = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run = RunDir.for_output(out)
    deadline = time.monotonic() + 60
    while not list(calls.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (run.root / LEASE_FILE).exists()
    with pytest.raises(LeaseHeldError, match=f"pid {first.pid} on"):
        tile_process(src, cc_label, (10, 10), 0, write_to=out, merge_threshold=0.0)
    cli = subprocess.run(
        [sys.executable, "-m", "blockbuster", "resubmit", str(run.root), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2, cli.stderr
    assert "another blockbuster driver is running this run" in cli.stderr
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert len(list(calls.iterdir())) == 16  # fn once per tile: the others never ran it
    clean = tmp_path / "clean.zarr"
    tile_process(src, cc_label, (10, 10), 0, write_to=clean, merge_threshold=0.0)
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], zarr.open_array(str(clean))[:])
