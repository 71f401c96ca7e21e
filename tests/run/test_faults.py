"""Faults for real: SIGKILLed workers, hung fns, a fn that always fails, a killed driver."""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import blobs, write_zarr
from fns import (
    always_sigkill,
    cc_label,
    exit_once,
    fail_on_value,
    hang_once,
    sigkill_once,
    sigstop_once,
)

from blockbuster import TileFailureError, tile_process
from blockbuster.io.boxes import box_slices
from blockbuster.pipeline.plan import TilePlan
from blockbuster.pipeline.spec import read_spec
from blockbuster.run.records import TaskRecords
from blockbuster.run.rundir import RunDir

TRIGGER = 1.5  # outside the blobs' [0, 1] range, and foreground like them


def image_with_trigger(tmp_path: Path, shape=(40, 50), at=(25, 33)) -> tuple[str, np.ndarray]:
    img = blobs(shape, seed=11)
    img[at] = TRIGGER
    return write_zarr(tmp_path / "img.zarr", img, chunks=(10, 10)), img


def clean_run(tmp_path: Path, src: str, tile, overlap) -> np.ndarray:
    tile_process(
        src, cc_label, tile, overlap, write_to=tmp_path / "clean.zarr", merge_threshold=0.0
    )
    return zarr.open_array(str(tmp_path / "clean.zarr"))[:]


def test_sigkilled_worker_costs_one_block(tmp_path: Path) -> None:
    src, _ = image_with_trigger(tmp_path)
    markers = tmp_path / "markers"
    markers.mkdir()
    fn = functools.partial(sigkill_once, marker_dir=str(markers), trigger=TRIGGER)
    result = tile_process(
        src, fn, (10, 10), 2, write_to=tmp_path / "out.zarr", num_workers=2, merge_threshold=0.0
    )
    assert (markers / "killed").exists()  # a worker really died mid-block
    assert result.tiles_completed == result.tiles_total == 20
    assert result.fn_calls == 21  # the killed block ran once more, nothing else did
    out = zarr.open_array(str(tmp_path / "out.zarr"))[:]
    np.testing.assert_array_equal(out, clean_run(tmp_path, src, (10, 10), 2))


def test_hung_fn_is_killed_at_timeout_and_retried(tmp_path: Path) -> None:
    src, _ = image_with_trigger(tmp_path)
    markers = tmp_path / "markers"
    markers.mkdir()
    fn = functools.partial(hang_once, marker_dir=str(markers), trigger=TRIGGER)
    start = time.monotonic()
    result = tile_process(
        src,
        fn,
        (10, 10),
        2,
        write_to=tmp_path / "out.zarr",
        num_workers=2,
        merge_threshold=0.0,
        timeout=4,
    )
    assert time.monotonic() - start < 120
    assert (markers / "hung").exists()
    assert result.tiles_completed == result.tiles_total
    assert result.fn_calls == result.tiles_total + 1
    out = zarr.open_array(str(tmp_path / "out.zarr"))[:]
    np.testing.assert_array_equal(out, clean_run(tmp_path, src, (10, 10), 2))


def test_always_failing_tile_is_reported_with_its_traceback(tmp_path: Path) -> None:
    src, _ = image_with_trigger(tmp_path, at=(35, 45))  # only tile (3, 4) holds it
    fn = functools.partial(fail_on_value, bad_value=TRIGGER)
    with pytest.raises(TileFailureError) as err:
        tile_process(
            src, fn, (10, 10), 0, write_to=tmp_path / "out.zarr", max_retries=2, num_workers=2
        )
    result = err.value.result
    plan_tile = 3 * 5 + 4
    assert list(result.failed["segment"]) == [plan_tile]
    attempts = result.failed["segment"][plan_tile]
    assert len(attempts) == 3  # first try and two retries
    assert "RuntimeError: deliberate failure" in attempts[-1].traceback
    assert "fns.py" in attempts[-1].traceback
    assert result.tiles_completed == 19 and result.tiles_failed == 1
    assert f"tile {plan_tile} on" in result.summary()
    assert "deliberate failure" in str(err.value)
    assert not (tmp_path / "out.zarr").exists()


def _block_keys(img: np.ndarray, plan: TilePlan) -> dict[str, int]:
    keys = {}
    for index in plan.tiles():
        block = np.ascontiguousarray(img[box_slices(plan.read(index))])
        keys[hashlib.sha1(block.tobytes()).hexdigest()] = plan.tile_id(index)
    return keys


def _calls_per_tile(calls: Path, keys: dict[str, int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for p in calls.iterdir():
        tile = keys[p.name.split(".")[0]]
        counts[tile] = counts.get(tile, 0) + 1
    return counts


def _wait_for_workers_to_exit(run_dir: Path, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        alive = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"blockbuster.worker" in cmd and str(run_dir).encode() in cmd:
                alive.append(pid)
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"workers still running {limit} s after the driver died: {alive}")


def test_killed_driver_resumes_without_redoing_staged_tiles(tmp_path: Path) -> None:
    img = blobs((60, 80), seed=21)
    src = write_zarr(tmp_path / "img.zarr", img)
    calls = tmp_path / "calls"
    calls.mkdir()
    out = tmp_path / "out.zarr"
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import functools, sys
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from fns import slow_logged
        from blockbuster import tile_process
        fn = functools.partial(slow_logged, calls_dir={str(calls)!r}, delay=0.4)
        r = tile_process({src!r}, fn, (10, 10), 2, write_to={str(out)!r}, num_workers=2,
                         merge_threshold=0.0)
        print("DONE", r.fn_calls)
    """)
    )
    first = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while len(list(calls.iterdir())) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    run = RunDir.for_output(out)
    _wait_for_workers_to_exit(run.root)
    staged = set(TaskRecords(run.records("segment"), "segment").done_records())
    assert 0 < len(staged) < 48
    plan = read_spec(run).plan
    keys = _block_keys(img, plan)
    before = _calls_per_tile(calls, keys)

    second = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    after = _calls_per_tile(calls, keys)
    rerun = {t for t in after if after[t] > before.get(t, 0)}
    assert not rerun & staged, "fn ran again for tiles that were already staged"
    assert set(after) == set(range(plan.num_tiles))  # every tile ran at least once overall
    assert not run.root.exists()
    np.testing.assert_array_equal(
        zarr.open_array(str(out))[:], clean_run(tmp_path, src, (10, 10), 2)
    )


def test_frozen_worker_is_killed_and_the_run_ends_in_bounded_time(tmp_path: Path) -> None:
    src, _ = image_with_trigger(tmp_path)
    markers = tmp_path / "markers"
    markers.mkdir()
    fn = functools.partial(sigstop_once, marker_dir=str(markers), trigger=TRIGGER)
    start = time.monotonic()
    result = tile_process(
        src,
        fn,
        (10, 10),
        2,
        write_to=tmp_path / "out.zarr",
        num_workers=2,
        merge_threshold=0.0,
        timeout=4,
        keep_stage=True,
    )
    elapsed = time.monotonic() - start
    assert (markers / "stopped").exists()  # a worker really froze mid-block
    assert elapsed < 60, f"the driver waited {elapsed:.0f} s on a frozen worker"
    assert result.ok and result.fn_calls == result.tiles_total + 1
    errors = [e for es in TaskRecordsFor(tmp_path / "out.zarr", "segment") for e in es]
    assert any("killed by SIGKILL" in e.traceback for e in errors)
    out = zarr.open_array(str(tmp_path / "out.zarr"))[:]
    np.testing.assert_array_equal(out, clean_run(tmp_path, src, (10, 10), 2))


def TaskRecordsFor(out: Path, task: str) -> list[list]:  # noqa: N802
    from blockbuster.run.records import TaskRecords

    records = TaskRecords(RunDir.for_output(out).records(task), task)
    errors: dict[int, list] = {}
    for err in records.errors():
        errors.setdefault(err.tile, []).append(err)
    return list(errors.values())


@pytest.mark.parametrize("how, cause", [("exit0", "exited with status 0"), ("segv", "SIGSEGV")])
def test_worker_dying_inside_fn_names_the_tile_and_the_cause(
    tmp_path: Path, how: str, cause: str
) -> None:
    src, _ = image_with_trigger(tmp_path, at=(35, 45))  # tile 19
    markers = tmp_path / "markers"
    markers.mkdir()
    fn = functools.partial(exit_once, marker_dir=str(markers), trigger=TRIGGER, how=how)
    result = tile_process(
        src,
        fn,
        (10, 10),
        0,
        write_to=tmp_path / "out.zarr",
        merge_threshold=0.0,
        keep_stage=True,
    )
    assert result.ok and result.fn_calls == 21
    (errors,) = TaskRecordsFor(tmp_path / "out.zarr", "segment")
    assert errors[0].tile == 19 and cause in errors[0].message


def test_worker_restart_cap_is_reported_as_the_cause(tmp_path: Path) -> None:
    src, _ = image_with_trigger(tmp_path, at=(35, 45))
    fn = functools.partial(always_sigkill, trigger=TRIGGER)
    with pytest.raises(TileFailureError) as err:
        tile_process(
            src,
            fn,
            (10, 10),
            0,
            write_to=tmp_path / "out.zarr",
            merge_threshold=0.0,
            max_retries=10,
            max_worker_restarts=2,
        )
    summary = err.value.result.summary()
    assert "worker restarts" in summary and "max_worker_restarts" in summary
    assert "tile 19" in summary and "SIGKILL" in summary
