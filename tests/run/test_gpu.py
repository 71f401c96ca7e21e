"""GPU tile sizing against faked NVML answers (the real call runs on a GPU machine only)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from conftest import blobs, fake_nvml, write_zarr
from fns import GpuEnvLogger
from hypothesis import given
from hypothesis import strategies as st

import blockbuster.run.gpu as gpu
from blockbuster import tile_process
from blockbuster.pipeline.spec import read_spec
from blockbuster.run.rundir import RunDir


def need(tile, overlap, per_voxel):
    return math.prod(t + 2 * o for t, o in zip(tile, overlap)) * per_voxel


def test_docs_example_fits_an_8_gib_card_unchanged() -> None:
    assert gpu.size_tile((1, 2048, 2048), (0, 20, 20), 400, 8 * 2**30) == (1, 2048, 2048)


def test_smaller_card_gets_square_tiles_within_ten_percent() -> None:
    tile = gpu.size_tile((1, 2048, 2048), (0, 20, 20), 400, 2 * 2**30)
    assert tile[0] == 1 and abs(tile[1] - tile[2]) <= max(tile) // 10 + 1
    assert need(tile, (0, 20, 20), 400) <= 2**30
    bigger = (1, int(tile[1] / 0.81), int(tile[2] / 0.81))
    assert need(bigger, (0, 20, 20), 400) > 2**30


@given(
    st.tuples(st.integers(1, 512), st.integers(1, 4096), st.integers(1, 4096)),
    st.tuples(st.integers(0, 8), st.integers(0, 32), st.integers(0, 32)),
    st.integers(4, 2000),
    st.integers(2**28, 2**36),
)
def test_sized_tile_fits_half_the_free_memory(tile, overlap, per_voxel, free) -> None:
    try:
        out = gpu.size_tile(tile, overlap, per_voxel, free)
    except ValueError as e:
        assert "reduce overlap" in str(e)
        assert need((1, 1, 1), overlap, per_voxel) > free // 2
        return
    assert all(1 <= o <= t for o, t in zip(out, tile))
    assert need(out, overlap, per_voxel) <= free // 2


def test_memory_read_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml(monkeypatch, [3 * 2**30, 5 * 2**30])
    found = gpu.find_gpus()
    assert (list(found.free), found.measured) == ([3 * 2**30, 5 * 2**30], True)


@pytest.mark.parametrize(
    ("value", "devices"),
    [
        (None, None),
        ("", []),
        ("-1", []),
        ("0,1", ["0", "1"]),
        (" 2 , 3 ", ["2", "3"]),
        ("2,-1,3", ["2"]),  # CUDA ignores everything after an invalid entry
        ("GPU-8f2a,MIG-1c3d", ["GPU-8f2a", "MIG-1c3d"]),
    ],
)
def test_visible_devices_read_as_cuda_does(
    monkeypatch: pytest.MonkeyPatch, value: str | None, devices: list[str] | None
) -> None:
    if value is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert gpu.visible_devices() == devices


def test_every_gpu_when_none_is_assigned(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml(monkeypatch, [3 * 2**30, 5 * 2**30, 7 * 2**30])
    assert gpu.find_gpus() == gpu.GPUs(("0", "1", "2"), (3 * 2**30, 5 * 2**30, 7 * 2**30), True)


def test_only_the_gpus_a_scheduler_assigned(monkeypatch: pytest.MonkeyPatch) -> None:
    # a node with 8 GPUs of which the job got 3 and 5 (SLURM/LSF set CUDA_VISIBLE_DEVICES):
    # the others' free memory must not size tiles, and workers must not be pinned to them
    fake_nvml(monkeypatch, {str(i): (i + 1) * 2**30 for i in range(8)})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu.find_gpus() == gpu.GPUs(("3", "5"), (4 * 2**30, 6 * 2**30), True)
    # by UUID, as some schedulers and MIG set it
    fake_nvml(monkeypatch, {"0": 2**30, "GPU-aa": 9 * 2**30, "GPU-bb": 2 * 2**30})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bb,GPU-aa")
    assert gpu.find_gpus() == gpu.GPUs(("GPU-bb", "GPU-aa"), (2 * 2**30, 9 * 2**30), True)


def test_unknown_assigned_gpu_falls_back_with_its_name_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_nvml(monkeypatch, [2**30])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-gone")
    monkeypatch.setattr(gpu, "_warned", False)
    with pytest.warns(RuntimeWarning, match="NVML"):
        assert gpu.find_gpus() == gpu.GPUs(("GPU-gone",), (8 * 2**30,), False)


def test_without_nvml_the_assigned_gpus_are_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(gpu, "_warned", False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    with pytest.warns(RuntimeWarning, match="assuming 8 GiB"):
        assert gpu.find_gpus() == gpu.GPUs(("1", "0"), (8 * 2**30,), False)


def test_without_nvml_assume_8_gib_and_warn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpu, "_warned", False)
    with pytest.warns(RuntimeWarning, match="assuming 8 GiB"):
        found = gpu.find_gpus()
        assert (list(found.free), found.measured) == ([8 * 2**30], False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(gpu.find_gpus().free) == [8 * 2**30]  # warned once only


def test_driver_error_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    def broken() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", broken)
    monkeypatch.setattr(gpu, "_warned", False)
    with pytest.warns(RuntimeWarning, match="NVML"):
        assert gpu.find_gpus().measured is False


ROOM = 2 * 1000 * 28 * 28  # a 24 x 24 tile + halo at 1000 bytes/voxel, twice


@pytest.mark.parametrize(
    ("gpus", "assigned", "devices"),
    [
        # two GPUs, the smaller with room for a 24 x 24 tile + halo
        ([ROOM, 10**12], None, {"0", "1"}),
        # eight GPUs, the job was given 6 and 2; the others are nearly full (sizing against
        # them would fail) and must not be used
        ({**{str(i): 1000 for i in range(8)}, "2": ROOM, "6": 10**12}, "6,2", {"6", "2"}),
    ],
)
def test_use_gpu_sizes_tiles_and_pins_workers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gpus: list[int] | dict[str, int],
    assigned: str | None,
    devices: set[str],
) -> None:
    fake_nvml(monkeypatch, gpus)
    if assigned is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", assigned)
    src = write_zarr(tmp_path / "img.zarr", blobs((60, 60), seed=1))
    log = tmp_path / "log"
    log.mkdir()
    result = tile_process(
        src,
        GpuEnvLogger(str(log)),
        (64, 64),
        2,
        write_to=tmp_path / "o.zarr",
        use_gpu=True,
        num_workers=2,
        keep_stage=True,
        merge_threshold=0.0,
    )
    plan = read_spec(RunDir.for_output(tmp_path / "o.zarr")).plan
    assert need(plan.tile, plan.overlap, 1000) <= 1000 * 28 * 28
    assert plan.tile[0] >= 20 and plan.tile[1] >= 20
    assert result.fn_calls == plan.num_tiles
    entries = [p.read_text().split(" ", 2) for p in log.iterdir()]
    assert {e[0] for e in entries} <= devices  # each worker on one of the run's GPUs
    assert {e[1] for e in entries} == {"1"}
