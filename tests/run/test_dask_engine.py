"""The Dask path: same stage/stitch/relabel code on a process-based LocalCluster."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import assert_one_to_one, blobs, write_zarr
from fns import (
    GpuEnvLogger,
    cc_label,
    counting_cc_label,
    fail_on_value,
    hang_once,
    sigkill_once,
)
from scipy import ndimage as ndi

import blockbuster.run.gpu as gpu
from blockbuster import TileFailureError, make_local_cluster, tile_process
from blockbuster.run.records import TaskRecords
from blockbuster.run.rundir import RunDir


def test_dask_backend_needs_a_client(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="backend='dask' needs an active"):
        tile_process(src, cc_label, (4, 4), write_to=tmp_path / "o.zarr", backend="dask")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple]:
    client, cluster = make_local_cluster(n_workers=2, dashboard_address=":0")
    try:
        yield client, cluster
    finally:
        client.close()
        cluster.close()


@pytest.mark.parametrize("sequential", [False, True])
def test_tiled_equals_whole_on_a_two_process_cluster(
    tmp_path: Path, cluster: tuple, sequential: bool
) -> None:
    from distributed.system import MEMORY_LIMIT

    client, _ = cluster
    workers = client.scheduler_info()["workers"].values()
    assert [w["memory_limit"] for w in workers] == [MEMORY_LIMIT // 2] * 2  # split evenly
    img = blobs((24, 40, 36), sigma=1.5, seed=5)
    src = write_zarr(tmp_path / "img.zarr", img)
    calls = tmp_path / "calls"
    calls.mkdir()
    fn = functools.partial(counting_cc_label, calls_dir=str(calls))
    result = tile_process(
        src,
        fn,
        (10, 16, 16),
        2,
        write_to=tmp_path / "out.zarr",
        merge_threshold=0.0,
        sequential_labels=sequential,
    )
    whole, n = ndi.label(img > 0.5)
    out = zarr.open_array(str(tmp_path / "out.zarr"))[:]
    assert_one_to_one(whole, out)
    assert result.num_labels == n
    assert len(list(calls.iterdir())) == result.fn_calls == result.tiles_total == 27
    # the work ran in the cluster's worker processes, not in daisy workers
    assert set(result.tasks) == {"segment", "stitch", "relabel"}
    assert not (tmp_path / "out.zarr.blockbuster" / "server").exists()


def test_failed_tile_on_dask_is_reported(tmp_path: Path, cluster: tuple) -> None:
    img = blobs((20, 20), seed=2)
    img[15, 15] = 1.5
    src = write_zarr(tmp_path / "img.zarr", img)
    fn = functools.partial(fail_on_value, bad_value=1.5)
    with pytest.raises(TileFailureError, match="deliberate failure") as err:
        tile_process(src, fn, (10, 10), write_to=tmp_path / "o.zarr", max_retries=1)
    result = err.value.result
    assert list(result.failed["segment"]) == [3]
    assert len(result.failed["segment"][3]) == 2  # first try and one retry
    assert RunDir.for_output(tmp_path / "o.zarr").stage.exists()


@pytest.mark.parametrize("fault", ["hang", "sigkill"])
def test_hung_or_killed_worker_costs_one_block(tmp_path: Path, cluster: tuple, fault: str) -> None:
    client, _ = cluster
    img = blobs((40, 50), seed=11)
    img[25, 33] = 1.5  # the trigger: the tile holding it hangs (or dies) on its first try
    src = write_zarr(tmp_path / "img.zarr", img, chunks=(10, 10))
    markers = tmp_path / "markers"
    markers.mkdir()
    faulty = hang_once if fault == "hang" else sigkill_once
    kwargs = {"write_to": tmp_path / "out.zarr", "merge_threshold": 0.0, "keep_stage": True}
    result = tile_process(
        src,
        functools.partial(faulty, marker_dir=str(markers), trigger=1.5),
        (10, 10),
        2,
        timeout=4,
        **kwargs,
    )
    assert (markers / ("hung" if fault == "hang" else "killed")).exists()
    assert result.tiles_completed == result.tiles_total == 20
    assert result.fn_calls == 21  # the faulty try and its retry
    if fault == "hang":  # the watchdog recorded why it killed the worker
        records = RunDir.for_output(tmp_path / "out.zarr").records("segment")
        (error,) = TaskRecords(records, "segment").errors()
        assert "ran past timeout=4 s" in error.traceback
    clean = tile_process(
        src,
        cc_label,
        (10, 10),
        2,
        write_to=tmp_path / "clean.zarr",
        merge_threshold=0.0,
        backend="daisy",
    )
    assert clean.num_labels == result.num_labels
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "out.zarr"))[:],
        zarr.open_array(str(tmp_path / "clean.zarr"))[:],
    )
    client.wait_for_workers(2)  # the nanny restarted the killed worker


def test_in_process_client_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from distributed import Client

    src = write_zarr(tmp_path / "img.zarr", blobs((16, 16)))
    with Client(processes=False, dashboard_address=":0") as client:
        assert client is not None
        with pytest.raises(RuntimeError, match=r"in-process worker \(processes=False\)") as err:
            tile_process(src, cc_label, (8, 8), write_to=tmp_path / "o.zarr")
        assert "make_local_cluster" in str(err.value)
    assert not (tmp_path / "o.zarr").exists()
    assert not (tmp_path / "o.zarr.blockbuster").exists()


def _worker_env() -> tuple[str, str]:
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES", "-"), os.environ.get("OMP_NUM_THREADS", "-")


def test_make_local_cluster_uses_processes_and_prints_the_dashboard(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(gpu, "_warned", False)  # no GPU can be counted
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.warns(RuntimeWarning, match="assuming 8 GiB"):
        client, cluster = make_local_cluster(use_gpu=True, dashboard_address=":0")
    try:
        assert len(cluster.workers) == 1  # one GPU evaluation at a time
        assert set(client.run(_worker_env).values()) == {("-", "1")}  # not pinned to a device
        assert all(not a.startswith("inproc://") for a in client.scheduler_info()["workers"])
        assert client.dashboard_link.startswith("http")
        assert f"Dask dashboard: {client.dashboard_link}" in capsys.readouterr().out
    finally:
        client.close()
        cluster.close()
    with pytest.raises(ValueError, match="fixes processes"):
        make_local_cluster(processes=False)
    with pytest.raises(ValueError, match="n_workers=0 must be a positive integer"):
        make_local_cluster(n_workers=0)
    with pytest.raises(ValueError, match="only with use_gpu=True"):
        make_local_cluster(gpus=[0])


def test_gpu_cluster_has_one_worker_per_gpu_each_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed.system import MEMORY_LIMIT

    # the job was given GPUs 3 and 1 (which of a node's GPUs NVML then measures is tested in
    # test_gpu; NVML is hidden here: distributed's own GPU monitoring would call the fake)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(gpu, "_warned", False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    with pytest.warns(RuntimeWarning, match="assuming 8 GiB"):
        client, cluster = make_local_cluster(use_gpu=True, dashboard_address=":0")
    try:
        assert sorted(client.run(_worker_env).values()) == [("1", "1"), ("3", "1")]
        # the machine's memory is split over the workers (not 1/cores each, dask's default
        # for a one-thread worker, which pauses a GPU worker holding a large tile)
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
        assert limits == [MEMORY_LIMIT // 2] * 2
        # tiles run on the pinned workers (one thread each)
        img = blobs((40, 40), seed=6)
        src = write_zarr(tmp_path / "img.zarr", img)
        log = tmp_path / "log"
        log.mkdir()
        result = tile_process(
            src,
            GpuEnvLogger(str(log)),
            (10, 10),
            2,
            write_to=tmp_path / "o.zarr",
            merge_threshold=0.0,
        )
        assert result.fn_calls == result.tiles_total == 16
        entries = {tuple(p.read_text().split(" ", 2)[:2]) for p in log.iterdir()}
        assert entries <= {("1", "1"), ("3", "1")}
        assert_one_to_one(ndi.label(img > 0.5)[0], zarr.open_array(str(tmp_path / "o.zarr"))[:])
        # workers added later are pinned too, taking the GPUs in turn
        cluster.scale(3)
        client.wait_for_workers(3)
        assert sorted(e[0] for e in client.run(_worker_env).values()) == ["1", "3", "3"]
    finally:
        client.close()
        cluster.close()
    client, cluster = make_local_cluster(
        use_gpu=True, gpus=["GPU-x"], n_workers=2, dashboard_address=":0"
    )
    try:
        assert set(client.run(_worker_env).values()) == {("GPU-x", "1")}
    finally:
        client.close()
        cluster.close()


def _span_names(dask_scheduler: Any) -> list[tuple[str, ...]]:
    return sorted({tuple(s.name) for s in dask_scheduler.extensions["spans"].spans.values()})


def test_performance_report_spans_and_memory_per_stage(tmp_path: Path, cluster: tuple) -> None:
    client, _ = cluster
    img = blobs((16, 40, 40), sigma=1.5, seed=9)
    src = write_zarr(tmp_path / "img.zarr", img)
    report = tmp_path / "run.html"
    result = tile_process(
        src,
        cc_label,
        (8, 16, 16),
        2,
        write_to=tmp_path / "out.zarr",
        merge_threshold=0,
        backend="dask",
        performance_report=str(report),
    )
    whole, _ = ndi.label(img > 0.5)
    assert_one_to_one(whole, zarr.open_array(str(tmp_path / "out.zarr"))[:])
    text = report.read_text()
    # the task stream names every stage's tasks (the profile's call stacks are sampled, so
    # whether they caught run_block is chance)
    assert "Dask Performance Report" in text
    assert all(f"blockbuster-{stage}" in text for stage in ("segment", "stitch", "relabel"))
    # every stage's blocks ran in its own span, which the scheduler's span metrics group
    names = client.run_on_scheduler(_span_names)
    for stage in ("segment", "stitch", "relabel"):
        assert ("blockbuster", stage) in names
        assert result.tasks[stage].memory, stage  # sampled while it ran
        assert all(b > 0 for _, b in result.tasks[stage].memory)
    assert result.dask_memory == f"{tmp_path / 'out.zarr'}.dask_memory.png"
    assert Path(result.dask_memory).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"dask memory     {result.dask_memory}" in result.summary()


def test_a_performance_report_off_dask_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    src = write_zarr(tmp_path / "img.zarr", np.zeros((8, 8), np.float32))
    out = tmp_path / "o.zarr"
    with pytest.raises(ValueError, match=r"^performance_report='r.html' is Dask's report, and "):
        tile_process(
            src, cc_label, (4, 4), write_to=out, backend="daisy", performance_report="r.html"
        )
    with pytest.raises(ValueError, match="must be an .html file in an existing folder"):
        tile_process(src, cc_label, (4, 4), write_to=out, performance_report="/nowhere/r.html")
    assert not out.exists() and not Path(f"{out}.blockbuster").exists()
