"""User tasks end to end: tiled equals whole, dependencies, resume, refusal of changed work,
every engine, and the command line on a task run's directory."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from fns import smooth_blocks, threshold_blocks
from scipy import ndimage as ndi

from blockbuster import BlockFailureError, Task, run_tasks
from blockbuster.run.rundir import RunDir

TESTS = str(Path(__file__).parents[1])
SHAPE = (48, 40)
SIGMA = 2.0  # truncate 4: the kernel reaches 8 voxels, the context below


def _image(tmp_path: Path) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.random(SHAPE)
    src = zarr.create_array(str(tmp_path / "img.zarr"), shape=SHAPE, chunks=(16, 16), dtype="f8")
    src[:] = img
    return str(tmp_path / "img.zarr"), img


def _array(path: Path, dtype: str, chunks: tuple[int, int]) -> str:
    # chunks = the task's blocks: blocks run in parallel, so they must not share a chunk
    zarr.create_array(
        str(path), shape=SHAPE, chunks=chunks, dtype=dtype, fill_value=0, overwrite=True
    )
    return str(path)


def _tasks(
    tmp_path: Path, src: str, flag: str | None = None, sigma: float = SIGMA, pause: float = 0.0
):
    calls = tmp_path / "calls"
    calls.mkdir(exist_ok=True)
    smooth_out = _array(tmp_path / "smooth.zarr", "f8", (16, 16))
    mask_out = _array(tmp_path / "mask.zarr", "u1", (24, 20))
    smooth = Task(
        "smooth",
        SHAPE,
        (16, 16),
        functools.partial(smooth_blocks, src, smooth_out, sigma, str(calls), flag, pause),
        context=8,
        fit="shrink",
    )
    mask = Task(
        "mask",
        SHAPE,
        (24, 20),
        functools.partial(threshold_blocks, smooth_out, mask_out, 0.5, str(calls)),
        fit="shrink",
        upstream=[smooth],
    )
    return smooth, mask, calls


def _calls(calls: Path, task: str) -> list[int]:
    return sorted(int(p.name.split(".")[1]) for p in calls.iterdir() if p.name.startswith(task))


def test_two_tasks_on_daisy_workers_equal_the_whole_image(tmp_path: Path) -> None:
    src, img = _image(tmp_path)
    smooth, mask, calls = _tasks(tmp_path, src)
    result = run_tasks([mask, smooth], tmp_path / "run", num_workers=2)
    whole = ndi.gaussian_filter(img, SIGMA, truncate=4.0)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "smooth.zarr"))[:], whole)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "mask.zarr"))[:], whole > 0.5)
    assert result.ok and set(result.tasks) == {"smooth", "mask"}
    assert _calls(calls, "smooth") == list(range(9)) and _calls(calls, "mask") == [0, 1, 2, 3]
    # each block's record keeps what its function returned
    record = RunDir(tmp_path / "run").task_records(smooth).record(5)
    assert record is not None and record["mean"] > 0


def test_failed_blocks_resume_without_redoing_done_ones(tmp_path: Path) -> None:
    src, img = _image(tmp_path)
    flag = tmp_path / "flag"
    flag.touch()
    smooth, mask, calls = _tasks(tmp_path, src, flag=str(flag))
    with pytest.raises(BlockFailureError, match="run the same tasks again to resume") as err:
        run_tasks([smooth, mask], tmp_path / "run", num_workers=2, max_retries=1)
    failed = err.value.result.failed["smooth"]
    assert sorted(failed) == [1, 3, 5, 7]
    assert all(len(errors) == 2 for errors in failed.values())  # tried, retried once
    assert "deliberate failure" in failed[1][-1].traceback
    before = _calls(calls, "smooth")
    assert sorted(set(before)) == list(range(9))

    status = subprocess.run(
        [sys.executable, "-m", "blockbuster", "status", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": TESTS, "PATH": "/usr/bin:/bin"},
    )
    rows = {line.split()[0]: line.split()[1:5] for line in status.stdout.splitlines()[4:6]}
    assert rows["smooth"] == ["5", "4", "0", "0"], status.stdout  # done failed pending running
    assert status.returncode == 1 and "smooth block 1 on" in status.stdout

    flag.unlink()
    result = run_tasks([smooth, mask], tmp_path / "run", num_workers=2, max_retries=1)
    assert result.ok
    again = _calls(calls, "smooth")
    # only the failed blocks ran again
    assert sorted(set(again) - set(before)) == [] and len(again) - len(before) == 4
    whole = ndi.gaussian_filter(img, SIGMA, truncate=4.0)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "mask.zarr"))[:], whole > 0.5)


def test_a_changed_task_is_refused_until_overwrite(tmp_path: Path) -> None:
    src, img = _image(tmp_path)
    smooth, _, calls = _tasks(tmp_path, src)
    run_tasks([smooth], tmp_path / "run", backend="serial")
    smooth3, _, _ = _tasks(tmp_path, src, sigma=3.0)
    with pytest.raises(ValueError, match=r"task\(s\) smooth were different"):
        run_tasks([smooth3], tmp_path / "run", backend="serial")
    n = len(_calls(calls, "smooth"))
    run_tasks([smooth], tmp_path / "run", backend="serial")  # the same task: nothing to do
    assert len(_calls(calls, "smooth")) == n
    run_tasks([smooth3], tmp_path / "run", backend="serial", overwrite=True)
    assert len(_calls(calls, "smooth")) == n + 9
    # context 8 is short of the sigma-3 kernel (12 voxels): the blocks differ from the whole,
    # which is what a changed task must never be allowed to mix into a resumed run
    whole = ndi.gaussian_filter(img, 3.0, truncate=4.0)
    assert not np.array_equal(zarr.open_array(str(tmp_path / "smooth.zarr"))[:], whole)


def test_serial_and_dask_engines_give_the_same_output(tmp_path: Path) -> None:
    from blockbuster import make_local_cluster

    src, img = _image(tmp_path)
    whole = ndi.gaussian_filter(img, SIGMA, truncate=4.0)
    smooth, mask, _ = _tasks(tmp_path, src)
    run_tasks([smooth, mask], tmp_path / "serial", backend="serial")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "mask.zarr"))[:], whole > 0.5)
    smooth, mask, _ = _tasks(tmp_path, src)  # fresh, empty outputs
    client, cluster = make_local_cluster(n_workers=2, dashboard_address=":0")
    try:
        result = run_tasks([smooth, mask], tmp_path / "dask")
        assert result.ok
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "smooth.zarr"))[:], whole)
        mask_out = zarr.open_array(str(tmp_path / "mask.zarr"))[:]
        np.testing.assert_array_equal(mask_out, whole > 0.5)
        # the task changed: the same worker processes must run the new one, not the one
        # they opened before
        smooth3, _, _ = _tasks(tmp_path, src, sigma=3.0)
        run_tasks([smooth3], tmp_path / "dask", overwrite=True)
        on_dask = zarr.open_array(str(tmp_path / "smooth.zarr"))[:]
    finally:
        client.close()
        cluster.close()
    smooth3, _, _ = _tasks(tmp_path, src, sigma=3.0)
    run_tasks([smooth3], tmp_path / "serial3", backend="serial")
    np.testing.assert_array_equal(on_dask, zarr.open_array(str(tmp_path / "smooth.zarr"))[:])


def test_a_worker_started_for_an_unknown_task_names_the_tasks(tmp_path: Path) -> None:
    from blockbuster.run.lease import Lease

    src, _ = _image(tmp_path)
    smooth, _, _ = _tasks(tmp_path, src)
    run_tasks([smooth], tmp_path / "run", backend="serial")
    with Lease(tmp_path / "run"):
        proc = subprocess.run(
            [sys.executable, "-m", "blockbuster.worker", str(tmp_path / "run"), "segment"],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": TESTS, "PATH": "/usr/bin:/bin"},
        )
    assert proc.returncode != 0
    assert "has no task 'segment' (its tasks: smooth)" in proc.stderr


def test_a_folder_that_is_not_a_run_directory_is_refused(tmp_path: Path) -> None:
    src, _ = _image(tmp_path)
    smooth, _, _ = _tasks(tmp_path, src)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "data.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a blockbuster run directory"):
        run_tasks([smooth], tmp_path / "busy")
    assert (tmp_path / "busy" / "data.txt").read_text() == "mine"


def test_resubmit_and_the_status_page_work_on_a_task_run(tmp_path: Path) -> None:
    import json
    import urllib.request

    from blockbuster.run.events import Event, RunStarted
    from blockbuster.ui.live import start_status_server

    src, img = _image(tmp_path)
    flag = tmp_path / "flag"
    flag.touch()
    smooth, mask, calls = _tasks(tmp_path, src, flag=str(flag))
    seen: list[Event] = []
    with pytest.raises(BlockFailureError):
        run_tasks([smooth, mask], tmp_path / "run", max_retries=0, observers=[seen.append])
    started = next(e for e in seen if isinstance(e, RunStarted))
    with start_status_server(RunDir(tmp_path / "run"), tasks=started.tasks) as server:
        with urllib.request.urlopen(server.url + "status.json", timeout=30) as response:
            status = json.loads(response.read())
        with urllib.request.urlopen(server.url, timeout=30) as response:
            page = response.read().decode()
    assert status["totals"] == {"smooth": 9, "mask": 4}
    assert status["tasks"]["smooth"] == {
        "done": 5,
        "failed": 4,
        "pending": 0,
        "running": 0,
        "skipped": 0,
    }
    assert status["tasks"]["mask"]["done"] + status["tasks"]["mask"]["pending"] == 4
    assert "smooth: 9 blocks" in page and 'id="block-map"' not in page

    flag.unlink()
    before = len(_calls(calls, "smooth"))
    proc = subprocess.run(
        [sys.executable, "-m", "blockbuster", "resubmit", str(tmp_path / "run"), "--no-progress"]
        + ["--status-page", "off"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": TESTS, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "smooth          9/9 blocks done, 0 failed ok" in proc.stdout
    assert len(_calls(calls, "smooth")) == before + 4  # the failed blocks only
    whole = ndi.gaussian_filter(img, SIGMA, truncate=4.0)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "mask.zarr"))[:], whole > 0.5)


def test_a_run_stopped_by_an_exception_still_tells_its_observers(tmp_path: Path) -> None:
    from blockbuster.run.events import Event, RunFinished

    def interrupted() -> object:
        def block(b: object) -> None:
            raise KeyboardInterrupt

        return block

    seen: list[Event] = []
    with pytest.raises(KeyboardInterrupt):
        run_tasks([Task("t", (8,), 4, interrupted)], tmp_path / "run", backend="serial",
                  observers=[seen.append])  # fmt: skip
    assert isinstance(seen[-1], RunFinished) and seen[-1].result is None


def _returning(value: object) -> object:
    """A process_block_func (bound with partial): every block returns ``value``."""
    return lambda block: value


def test_block_records_keep_numpy_values_and_refuse_reserved_keys(tmp_path: Path) -> None:
    ok = Task("ok", (8,), 4, functools.partial(_returning, {"n": np.int64(3), "v": np.ones(2)}))
    run_tasks([ok], tmp_path / "a", backend="serial")
    record = RunDir(tmp_path / "a").task_records(ok).record(1)
    assert record is not None and record["n"] == 3 and record["v"] == [1.0, 1.0]
    bad = Task("bad", (8,), 4, functools.partial(_returning, {"seconds": 1}))
    with pytest.raises(BlockFailureError) as err:
        run_tasks([bad], tmp_path / "b", backend="serial", max_retries=0)
    errors = err.value.result.failed["bad"][0]
    assert "the keys ['seconds']" in errors[-1].traceback


def test_changing_a_task_reruns_the_tasks_that_read_it(tmp_path: Path) -> None:
    src, img = _image(tmp_path)
    smooth, mask, calls = _tasks(tmp_path, src)
    run_tasks([smooth, mask], tmp_path / "run", backend="serial")
    assert len(_calls(calls, "mask")) == 4
    smooth3, mask3, _ = _tasks(tmp_path, src, sigma=3.0)
    run_tasks([smooth3, mask3], tmp_path / "run", backend="serial", overwrite=True)
    assert len(_calls(calls, "mask")) == 8  # mask read the old smooth: it ran again


class _Tagged(Task):
    def __init__(self) -> None:
        super().__init__("tagged", (8,), 4)
        self.tags = {"alpha", "beta", "gamma", "delta", "epsilon"}


def test_the_fingerprint_is_the_same_in_every_process() -> None:
    here = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); from test_run_tasks import _Tagged; "
        "from blockbuster.run.fingerprint import task_fingerprint; "
        "print(task_fingerprint(_Tagged()))"
    )
    prints = set()
    for seed in ("1", "2", "3"):
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": TESTS, "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": seed},
        )
        assert proc.returncode == 0, proc.stderr
        prints.add(proc.stdout.strip())
    assert len(prints) == 1


def test_a_finished_run_resumes_without_starting_an_engine(tmp_path: Path, monkeypatch) -> None:
    """Every block is done on disk: the records are verified and no worker starts."""
    import blockbuster.run.driver as driver_module

    src, img = _image(tmp_path)
    smooth, mask, calls = _tasks(tmp_path, src)
    assert run_tasks([smooth, mask], tmp_path / "run", num_workers=2).ok
    before = _calls(calls, "smooth")

    def no_engine(*args, **kwargs):
        raise AssertionError("the engine ran for a finished run")

    monkeypatch.setattr(driver_module, "run_engine", no_engine)
    result = run_tasks([smooth, mask], tmp_path / "run", num_workers=2)
    assert result.ok and result.tasks["smooth"].completed == 9
    assert _calls(calls, "smooth") == before
    # a record removed is a block to redo: then the engine runs
    RunDir(tmp_path / "run").task_records(mask).discard(2)
    with pytest.raises(AssertionError, match="the engine ran"):
        run_tasks([smooth, mask], tmp_path / "run", num_workers=2)


def test_blocks_reading_an_upstream_block_reported_but_never_done_run_again(
    tmp_path: Path,
) -> None:
    """A client claims smooth blocks done without doing them: the mask blocks that read them
    saw the fill value, so the next pass reruns the missing smooth blocks and every mask block."""
    src, img = _image(tmp_path)
    smooth, mask, calls = _tasks(tmp_path, src, pause=0.3)  # the rogue gets in first
    rogue = subprocess.Popen(
        [sys.executable, str(Path(TESTS, "rogue_client.py")), str(tmp_path / "run"), "smooth", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    result = run_tasks([smooth, mask], tmp_path / "run", num_workers=2)
    claimed = int(rogue.communicate(timeout=60)[0].split()[-1])
    assert claimed > 0 and result.ok
    whole = ndi.gaussian_filter(img, SIGMA, truncate=4.0)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "mask.zarr"))[:], whole > 0.5)
    # smooth: each block once (the claimed ones in the second pass); mask: every block twice
    assert _calls(calls, "smooth") == list(range(9))
    assert _calls(calls, "mask") == sorted(2 * [0, 1, 2, 3])
