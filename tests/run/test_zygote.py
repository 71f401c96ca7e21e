"""The zygote that forks local workers: what a child gets, refusals, and its own end."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_to_one, blobs, write_zarr
from fns import log_process
from scipy import ndimage as ndi

from blockbuster import tile_process
from blockbuster.run.zygote import Zygote, spawn

WORKER = [sys.executable, "-m", "blockbuster.worker"]


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_forked_worker_gets_the_callers_output_and_exit_status(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with Zygote.start() as zygote:
        child = spawn(zygote.path, [*WORKER, "--help"], dict(os.environ))
        assert child is not None
        assert child.wait(timeout=60) == 0
        assert "usage: python -m blockbuster.worker" in capfd.readouterr().out
        # a worker that refuses its arguments exits as the interpreter would (argparse: 2)
        child = spawn(zygote.path, [*WORKER, "only-one-argument"], dict(os.environ))
        assert child is not None
        assert child.wait(timeout=60) == 2
        assert "the following arguments are required: task" in capfd.readouterr().err
        # not a worker's command line: never forked
        assert spawn(zygote.path, [sys.executable, "-c", "print(1)"], dict(os.environ)) is None


def test_a_request_with_another_import_environment_is_refused() -> None:
    with Zygote.start() as zygote:
        for var, value in (("PYTHONPATH", "/elsewhere"), ("OMP_NUM_THREADS", "7")):
            env = dict(os.environ, **{var: f"{os.environ.get(var, '')}{value}"})
            assert spawn(zygote.path, [*WORKER, "--help"], env) is None, var
    # gone: the caller starts the interpreter itself
    assert spawn(zygote.path, [*WORKER, "--help"], dict(os.environ)) is None


def test_the_zygote_ends_with_the_driver_that_started_it(tmp_path: Path) -> None:
    driver = (
        "import os, signal, sys\n"
        "from blockbuster.run.zygote import Zygote\n"
        "z = Zygote.start()\n"
        "print(z.proc.pid, z.folder, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True)
    assert out.returncode == -signal.SIGKILL
    pid, folder = out.stdout.split()
    assert _gone(int(pid), within=10)
    assert not Path(folder).exists()  # its socket and folder removed on the way out


def _logged_run(
    tmp_path: Path, shape: tuple[int, ...], seed: int, tile: tuple[int, ...], out: str
) -> tuple[Any, list[list[str]]]:
    """A 2-worker run of ``log_process`` on blobs, its labels checked against whole-image
    labelling; the result and each fn call's logged row (pid, sid, draw, parent, fresh)."""
    import zarr

    image = blobs(shape, seed=seed)
    src = write_zarr(tmp_path / "image.zarr", image)
    log = tmp_path / "log"
    log.mkdir()
    result = tile_process(
        src,
        functools.partial(log_process, log_dir=str(log)),
        tile,
        2,
        write_to=tmp_path / out,
        num_workers=2,
        merge_threshold=0,
    )
    assert result.ok
    level0 = tmp_path / out / "0" if out.endswith(".ome.zarr") else tmp_path / out
    whole, _ = ndi.label(image > 0.5)
    assert_one_to_one(zarr.open_array(str(level0))[:], whole)
    files = sorted(log.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return result, [p.read_text().split("\t") for p in files]


def test_local_workers_are_forked_by_the_zygote(tmp_path: Path) -> None:
    result, rows = _logged_run(tmp_path, (24, 48, 48), 3, (8, 16, 16), "labels.zarr")
    assert len(rows) == result.fn_calls == result.tiles_total
    workers = {tuple(row) for row in rows}
    assert len({w[0] for w in workers}) >= 2
    for pid, sid, _, parent, fresh in workers:
        assert "blockbuster.run.zygote" in parent  # forked, not a fresh interpreter
        assert sid == pid  # its own session, as a started worker has
        assert fresh == "True"  # SIGPIPE ignored, SIGINT raises: as in a fresh interpreter
    # each worker's first draw of the legacy numpy generator: fresh state, not the zygote's
    first: dict[str, str] = {}
    for pid, _, draw, *_ in rows:  # in the order they were written
        first.setdefault(pid, draw)
    assert len(set(first.values())) == len(first)


def _counting_starts(monkeypatch: pytest.MonkeyPatch, kill: bool = False) -> list[Zygote]:
    started: list[Zygote] = []
    original = Zygote.start.__func__  # type: ignore[attr-defined]

    def start(cls: type[Zygote], log: Path | None = None) -> Zygote | None:
        zygote = original(cls, log)
        if zygote is not None:
            started.append(zygote)
            if kill:
                zygote.proc.kill()
                zygote.proc.wait()
        return zygote

    monkeypatch.setattr(Zygote, "start", classmethod(start))
    return started


def test_one_zygote_serves_every_daisy_run_of_a_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an OME-Zarr output: segment and stitch, relabel and the pyramid are separate daisy runs
    started = _counting_starts(monkeypatch)
    result, rows = _logged_run(tmp_path, (16, 64, 64), 4, (8, 32, 32), "labels.ome.zarr")
    assert result.ok and "pyramid" in result.seconds
    assert len(started) == 1
    assert started[0].proc.poll() is not None  # it ends with the call
    assert not started[0].folder.exists()
    assert all("blockbuster.run.zygote" in row[3] for row in rows)


def test_a_run_whose_zygote_is_gone_starts_its_workers_as_interpreters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _counting_starts(monkeypatch, kill=True)
    _, rows = _logged_run(tmp_path, (16, 48, 48), 5, (8, 16, 16), "labels.zarr")
    assert len(started) == 1
    assert rows and not any("blockbuster.run.zygote" in row[3] for row in rows)


def test_a_zygote_started_before_its_run_directory_keeps_its_log_there(tmp_path: Path) -> None:
    # started before the run directory exists, it logs beside its socket; close copies what
    # it wrote into the run's logs (an empty log is not copied) and removes its folder
    kept = tmp_path / "logs" / "zygote.log"
    kept.parent.mkdir()
    with Zygote.start() as zygote:
        assert zygote.log.parent == zygote.folder
        zygote.keep_log = kept
    assert not kept.exists() and not zygote.folder.exists()
    with Zygote.start() as zygote:
        with open(zygote.log, "a") as f:
            f.write("Traceback: an import failed\n")
        zygote.keep_log = kept
    assert kept.read_text() == "Traceback: an import failed\n"
    assert not zygote.folder.exists()


def test_the_traceback_of_a_zygote_that_fails_reaches_the_run_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its preload fails (a broken scipy first on the path): the traceback is written before
    # the zygote cleans up its folder, and close copies it into the run's logs
    fake = tmp_path / "path" / "scipy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('a broken scipy')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "path"))
    kept = tmp_path / "logs" / "zygote.log"
    kept.parent.mkdir()
    kept.write_text("an earlier attempt\n")
    zygote = Zygote.start()
    assert zygote is not None
    assert zygote.proc.wait(timeout=60) == 1
    zygote.keep_log = kept
    zygote.close()
    text = kept.read_text()
    assert text.startswith("an earlier attempt\n")  # appended, not replaced
    assert "ImportError: a broken scipy" in text
    assert not zygote.folder.exists()
