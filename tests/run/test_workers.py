"""Launch templates in workers/, run for real with fake sbatch/bsub that start the worker here."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_one_to_one, blobs, fake_nvml, write_zarr
from fns import GpuEnvLogger, cc_label
from scipy import ndimage as ndi

from blockbuster import tile_process

WORKERS = Path(__file__).parents[2] / "workers"

FAKE_SBATCH = """#!/usr/bin/env bash
# Fake sbatch: log the arguments, then run the --wrap command here and wait (like --wait).
echo "$@" >> "$FAKE_LOG"
while [ $# -gt 0 ]; do
  case "$1" in
    --wrap) shift; exec bash -c "$1" ;;
    --wrap=*) exec bash -c "${1#--wrap=}" ;;
  esac
  shift
done
echo "fake sbatch: no --wrap" >&2; exit 2
"""

FAKE_BSUB = """#!/usr/bin/env bash
# Fake bsub: log the arguments, skip the options, run the command here and wait (like -K).
echo "$@" >> "$FAKE_LOG"
while [ $# -gt 0 ]; do
  case "$1" in
    -K) shift ;;
    -J|-W|-n|-R|-o|-env|-q|-gpu) shift 2 ;;
    *) break ;;
  esac
done
exec "$@"
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "sbatch", FAKE_SBATCH)
    _executable(bin_dir / "bsub", FAKE_BSUB)
    log = tmp_path / "scheduler.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    return log


@pytest.mark.parametrize(
    ("template", "knobs", "expect"),
    [
        ("slurm.sh", {"SLURM_MEM": "3G", "SLURM_GPUS": "1"}, ["--mem=3G", "--gpus-per-task=1"]),
        ("lsf.sh", {"LSF_MEM_MB": "3000", "LSF_QUEUE": "gpu"}, ["rusage[mem=3000]", "-q gpu"]),
    ],
)
def test_scheduler_templates_run_real_workers(
    tmp_path: Path,
    fake_scheduler: Path,
    monkeypatch: pytest.MonkeyPatch,
    template: str,
    knobs: dict[str, str],
    expect: list[str],
) -> None:
    for k, v in knobs.items():
        monkeypatch.setenv(k, v)
    img = blobs((36, 44), seed=3)
    src = write_zarr(tmp_path / "img.zarr", img)
    result = tile_process(
        src,
        cc_label,
        (12, 12),
        2,
        write_to=tmp_path / "out.zarr",
        num_workers=2,
        merge_threshold=0.0,
        launcher=str(WORKERS / template),
    )
    assert result.fn_calls == result.tiles_total == 12
    assert_one_to_one(ndi.label(img > 0.5)[0], zarr.open_array(str(tmp_path / "out.zarr"))[:])
    submissions = fake_scheduler.read_text().splitlines()
    # one job per worker slot and task: at least one each for segment, stitch and relabel
    assert {
        t for t in ("segment", "stitch", "relabel") if any(f"bb-{t}" in s for s in submissions)
    } == {"segment", "stitch", "relabel"}
    for needle in expect:
        assert all(needle in s for s in submissions), needle


def test_workers_started_by_hand_find_the_recorded_server(tmp_path: Path) -> None:
    """A launcher that drops DAISY_CONTEXT: workers connect via RUN_DIR/server/TASK.json."""
    launcher = _executable(
        tmp_path / "by_hand.sh",
        f'#!/usr/bin/env bash\nexec env -u DAISY_CONTEXT {WORKERS / "local.sh"} "$1" "$2" 1\n',
    )
    img = blobs((30, 30), seed=8)
    src = write_zarr(tmp_path / "img.zarr", img)
    result = tile_process(
        src,
        cc_label,
        (10, 10),
        1,
        write_to=tmp_path / "out.zarr",
        merge_threshold=0.0,
        launcher=str(launcher),
        keep_stage=True,
    )
    assert result.fn_calls == 9
    server = tmp_path / "out.zarr.blockbuster" / "server"
    assert sorted(p.name for p in server.iterdir()) == [
        "relabel.json",
        "segment.json",
        "stitch.json",
    ]
    assert_one_to_one(ndi.label(img > 0.5)[0], zarr.open_array(str(tmp_path / "out.zarr"))[:])


def test_bad_launcher_is_refused_before_anything_runs(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="launcher="):
        tile_process(src, cc_label, (4, 4), write_to=tmp_path / "o.zarr", launcher="nope.sh")
    assert not (tmp_path / "o.zarr.blockbuster").exists()


def test_host_option_announces_and_records_the_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import socket

    host = socket.gethostname()
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20), seed=4))
    tile_process(src, cc_label, (10, 10), write_to=tmp_path / "o.zarr", host=host, keep_stage=True)
    printed = capsys.readouterr().out
    for task in ("segment", "relabel"):
        info = json.loads((tmp_path / "o.zarr.blockbuster" / "server" / f"{task}.json").read_text())
        assert info["host"] == host
        assert f"{task} workers connect to {host}:{info['port']}" in printed


def test_jobs_get_their_gpus_from_the_scheduler_not_the_driver(
    tmp_path: Path, fake_scheduler: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the driver's machine has two GPUs; the jobs run elsewhere, where SLURM picks their GPUs,
    # so the driver's device numbers must not reach them (threads are still pinned to one)
    fake_nvml(monkeypatch, [2**34, 2**34])
    monkeypatch.setenv("SLURM_GPUS", "1")
    src = write_zarr(tmp_path / "img.zarr", blobs((24, 24), seed=4))
    log = tmp_path / "env"
    log.mkdir()
    result = tile_process(
        src,
        GpuEnvLogger(str(log)),
        (12, 12),
        2,
        write_to=tmp_path / "out.zarr",
        num_workers=2,
        use_gpu=True,
        launcher=str(WORKERS / "slurm.sh"),
    )
    assert result.fn_calls == 4
    entries = [p.read_text().split(" ", 2)[:2] for p in log.iterdir()]
    assert entries == [["-", "1"]] * 4
