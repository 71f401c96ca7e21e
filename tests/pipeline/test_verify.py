"""The run directory is the truth: damaged, missing or faked state is redone, never trusted."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import blobs, write_zarr
from fns import cc_label, fail_while_flag

from blockbuster import TileFailureError, tile_process
from blockbuster.pipeline.faces import FacesRef
from blockbuster.pipeline.spec import read_spec
from blockbuster.pipeline.stage import StageFiles
from blockbuster.pipeline.verify import damaged_tiles, verify_inputs
from blockbuster.run.records import TaskRecords
from blockbuster.run.rundir import RunDir

BAD = 1.5


@pytest.fixture
def volume(tmp_path: Path) -> tuple[str, np.ndarray]:
    img = blobs((30, 40), seed=5)
    img[25, 35] = BAD  # tile 11 of the 3x4 grid
    return write_zarr(tmp_path / "img.zarr", img, chunks=(10, 10)), img


@pytest.fixture(params=[(30, 40), (80, 100)], ids=["a file per tile", "shards"])
def volumes(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, np.ndarray]:
    """The 3x4 grid of :func:`volume` (a block per tile, so a file per tile in the stage), and
    an 8x10 grid, whose segment blocks of several tiles share a shard."""
    img = blobs(request.param, seed=5)
    img[25, 35] = BAD
    return write_zarr(tmp_path / "img.zarr", img, chunks=(10, 10)), img


def _clean(tmp_path: Path, src: str) -> np.ndarray:
    out = tmp_path / "clean.zarr"
    if not out.exists():
        tile_process(src, cc_label, (10, 10), 2, write_to=out, merge_threshold=0.0)
    return zarr.open_array(str(out))[:]


def _failed_run(tmp_path: Path, src: str) -> tuple[Path, functools.partial, Path]:
    """A run whose tile 11 failed: every other tile is staged, the run directory kept."""
    flag = tmp_path / "flag"
    flag.touch()
    calls = tmp_path / "calls"
    calls.mkdir(exist_ok=True)
    fn = functools.partial(fail_while_flag, flag=str(flag), bad_value=BAD, calls_dir=str(calls))
    out = tmp_path / "out.zarr"
    with pytest.raises(TileFailureError):
        tile_process(src, fn, (10, 10), 2, write_to=out, merge_threshold=0.0, max_retries=0)
    flag.unlink()
    return out, fn, calls


def _resume(out: Path, fn: functools.partial, **kw: object):
    return tile_process(kw.pop("src"), fn, (10, 10), 2, write_to=out, merge_threshold=0.0, **kw)


@pytest.mark.parametrize(
    "damage",
    [
        "delete chunk",
        "truncate chunk",
        "truncate faces",
        "flip faces",
        "flipped byte",
        "record cut short",
    ],
)
def test_damaged_state_is_redone_on_resume(
    tmp_path: Path, volumes: tuple[str, np.ndarray], damage: str
) -> None:
    src, img = volumes
    out, fn, calls = _failed_run(tmp_path, src)
    run = RunDir.for_output(out)
    plan = read_spec(run).plan
    records = TaskRecords(run.records("segment"), "segment")
    victim = next(t for t, r in sorted(records.done_records().items()) if r["n_labels"])
    index = plan.tile_index(victim)
    stage = StageFiles(run.stage, plan)
    assert (stage.shard is not None) == (img.size > 1200)
    chunk = stage.file(index)
    if damage == "delete chunk":
        chunk.unlink()
    elif damage == "truncate chunk":
        chunk.write_bytes(chunk.read_bytes()[:7])
    elif damage == "truncate faces":  # the victim's faces are the last in their log
        refs = {t: FacesRef.of(r) for t, r in records.done_records().items() if r["n_labels"]}
        victim = max(refs, key=lambda t: (refs[t].log, refs[t].offset))  # type: ignore[union-attr]
        ref = refs[victim]
        assert ref is not None
        path = run.faces / ref.log
        path.write_bytes(path.read_bytes()[: ref.offset + 5])
    elif damage == "flip faces":  # same size: found by stitch (its CRC-32), not by the check
        ref = FacesRef.of(records.record(victim) or {})
        assert ref is not None
        path = run.faces / ref.log
        data = bytearray(path.read_bytes())
        data[ref.offset + ref.nbytes // 2] ^= 0x01
        path.write_bytes(bytes(data))
        assert victim not in damaged_tiles(run, plan)
    elif damage == "flipped byte":  # its checksum no longer matches
        log, start, end = _done_line(run, victim)
        data = bytearray(log.read_bytes())
        data[start + data[start:end].index(b'"seconds"') + 3] ^= 0x01
        log.write_bytes(bytes(data))
    else:  # a crash cut the last record of a log short
        log = next(iter(sorted(run.records("segment").glob("log.*.jsonl"))))
        victim = max(_done_lines(log), key=lambda item: item[1])[0]
        _, start, end = _done_line(run, victim)
        with open(log, "r+b") as f:
            f.truncate(start + (end - start) // 2)
    redo = {victim}
    if damage in ("delete chunk", "truncate chunk", "truncate faces"):
        found = damaged_tiles(run, plan)
        assert victim in found
        if damage != "truncate faces" and stage.shard is not None:
            # the labelled tiles of the victim's shard
            same = [t for t in found if stage.file(plan.tile_index(t)) == chunk]
            assert set(found) == set(same) and len(same) > 1
            redo = set(same)
        else:
            assert set(found) == {victim}
    before = len(list(calls.iterdir()))
    result = _resume(out, fn, src=src)
    assert result.ok
    # what was damaged and the tile that failed ran fn again, nothing else did
    assert len(list(calls.iterdir())) - before == len(redo) + 1
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], _clean(tmp_path, src))


def _done_lines(log: Path) -> list[tuple[int, int, int]]:
    """``(tile, start, end)`` of each done record's line in ``log``."""
    out, start = [], 0
    for line in log.read_bytes().split(b"\n")[:-1]:
        record = json.loads(line.rpartition(b"\t")[0])
        if record["kind"] == "done":
            out.append((record["tile"], start, start + len(line)))
        start += len(line) + 1
    return out


def _done_line(run: RunDir, tile: int) -> tuple[Path, int, int]:
    for log in run.records("segment").glob("log.*.jsonl"):
        for t, start, end in _done_lines(log):
            if t == tile:
                return log, start, end
    raise AssertionError(f"no done record of tile {tile}")


@pytest.mark.parametrize("what", ["chunks", "array"])
def test_every_stage_chunk_deleted_resumes_to_the_clean_output(
    tmp_path: Path, volume: tuple[str, np.ndarray], what: str
) -> None:
    src, _ = volume
    out, fn, _ = _failed_run(tmp_path, src)
    run = RunDir.for_output(out)
    if what == "array":
        shutil.rmtree(run.stage)
    for chunk in (run.stage / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    assert _resume(out, fn, src=src).ok
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], _clean(tmp_path, src))


def test_corrupt_spec_and_table(tmp_path: Path, volume: tuple[str, np.ndarray]) -> None:
    src, _ = volume
    out, fn, _ = _failed_run(tmp_path, src)
    run = RunDir.for_output(out)
    run.table.write_bytes(b"this is not a database" * 100)
    good = run.spec_file.read_bytes()
    run.spec_file.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"spec\.json is damaged .*overwrite=True") as err:
        _resume(out, fn, src=src)
    assert "\n" not in str(err.value)
    status = subprocess.run(
        [sys.executable, "-m", "blockbuster", "status", str(run.root)],
        capture_output=True,
        text=True,
    )
    assert status.returncode == 2 and "spec.json is damaged" in status.stderr
    assert "Traceback" not in status.stderr
    run.spec_file.write_bytes(good)
    assert _resume(out, fn, src=src).ok  # the table is rebuilt from the records
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], _clean(tmp_path, src))


def test_corrupt_error_record_does_not_break_status(
    tmp_path: Path, volume: tuple[str, np.ndarray]
) -> None:
    src, _ = volume
    out, _, _ = _failed_run(tmp_path, src)
    run = RunDir.for_output(out)
    for log in run.records("segment").glob("log.*.jsonl"):  # every error record damaged
        lines = log.read_bytes().split(b"\n")
        log.write_bytes(b"\n".join(ln.replace(b'"error"', b'"errxr"', 1) for ln in lines))
    status = subprocess.run(
        [sys.executable, "-m", "blockbuster", "status", str(run.root)],
        capture_output=True,
        text=True,
    )
    assert "Traceback" not in status.stderr
    assert "segment" in status.stdout


def test_resume_with_another_fn_or_a_changed_input_is_refused(
    tmp_path: Path, volume: tuple[str, np.ndarray]
) -> None:
    src, img = volume
    out, fn, _ = _failed_run(tmp_path, src)
    other = functools.partial(fn.func, **{**fn.keywords, "bad_value": 2.5})
    with pytest.raises(ValueError, match="fn is not the one it was started with"):
        _resume(out, other, src=src)
    with pytest.raises(ValueError, match="fn is not the one"):
        _resume(out, np.zeros_like, src=src)
    changed = img.copy()
    changed[:10] = 1 - changed[:10]  # same shape and dtype, other data
    zarr.open_array(src, mode="r+")[:] = changed
    with pytest.raises(ValueError, match="the input image changed since it started"):
        _resume(out, fn, src=src)
    # blockbuster verify names the tiles whose input is not what fn was given
    report = verify_inputs(RunDir.for_output(out))
    plan = read_spec(RunDir.for_output(out)).plan
    assert report.checked == 11
    assert set(report.changed) == {t for t in range(plan.num_tiles) if t < 8 and t != 11}
    cli = subprocess.run(
        [sys.executable, "-m", "blockbuster", "verify", str(RunDir.for_output(out).root)],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 1
    assert "8 tile(s) read other input than fn was given" in cli.stdout


ROGUE = Path(__file__).parents[1] / "rogue_client.py"


# segment alone: the stitch blocks reading the tiles it claimed find them without a record
@pytest.mark.parametrize("tasks", ["segment", "segment,stitch", "relabel"])
def test_a_client_reporting_blocks_it_did_not_do_never_yields_a_wrong_output(
    tmp_path: Path, volume: tuple[str, np.ndarray], tasks: str
) -> None:
    src, _ = volume
    out = tmp_path / "out.zarr"
    run = RunDir.for_output(out)
    rogue = ROGUE
    proc = subprocess.Popen(
        [sys.executable, str(rogue), str(run.root), tasks, "1"], stdout=subprocess.PIPE, text=True
    )
    slow = functools.partial(
        fail_while_flag, flag="/nonexistent", bad_value=BAD, calls_dir=str(tmp_path)
    )
    result = tile_process(src, slow, (10, 10), 2, write_to=out, merge_threshold=0.0)
    proc.communicate(timeout=60)
    assert result.ok
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], _clean(tmp_path, src))


def test_a_persistent_rogue_client_fails_the_run_naming_the_blocks(
    tmp_path: Path, volume: tuple[str, np.ndarray]
) -> None:
    src, _ = volume
    out = tmp_path / "out.zarr"
    run = RunDir.for_output(out)
    rogue = ROGUE
    proc = subprocess.Popen([sys.executable, str(rogue), str(run.root), "relabel", "3"])
    slow = functools.partial(
        fail_while_flag, flag="/nonexistent", bad_value=BAD, calls_dir=str(tmp_path)
    )
    try:
        with pytest.raises(TileFailureError, match="left no valid record") as err:
            tile_process(src, slow, (10, 10), 2, write_to=out, merge_threshold=0.0)
    finally:
        proc.kill()
    assert not err.value.result.ok
    spec = json.loads(run.spec_file.read_text())
    assert spec["output_store"] == str(out)  # the run directory is kept for a resume
