"""blockbuster deletes only what it created: overwrite=True and write_to against other files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import blobs, write_zarr
from fns import cc_label

from blockbuster import TileFailureError, tile_process
from blockbuster.run.ownership import RUN_MARKER, output_mark, remove_created, remove_debris
from blockbuster.run.rundir import RunDir


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "data"
    folder.mkdir()
    src = write_zarr(folder / "img.zarr", blobs((20, 30)), chunks=(10, 10))
    (folder / "notes.txt").write_text("the user's own file")
    return folder, src


def _run(src: str, write_to: object, **kw: object):
    return tile_process(src, cc_label, (10, 10), 0, write_to=write_to, merge_threshold=0.0, **kw)


@pytest.mark.parametrize(
    "target, message",
    [
        ("folder", "was not written by blockbuster"),
        ("input", "it is the input image or holds it"),
        ("file", "is an existing file"),
        ("cwd", "it is the current directory or holds it"),
    ],
)
def test_overwrite_refuses_what_blockbuster_did_not_write(
    tmp_path: Path,
    data: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    message: str,
) -> None:
    folder, src = data
    if target == "cwd":
        monkeypatch.chdir(folder)
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.csv").write_text("a,b\n1,2\n")
    write_to = {
        "folder": other,
        "input": folder / "img.zarr",
        "file": folder / "notes.txt",
        "cwd": Path("."),
    }[target]
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="write_to") as err:
        _run(src, write_to, overwrite=True)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert _tree(tmp_path) == before  # nothing deleted, nothing written
    assert not any(p.name.endswith(".blockbuster") for p in tmp_path.rglob("*"))


def test_empty_write_to_is_refused(data: tuple[Path, str]) -> None:
    _, src = data
    with pytest.raises(ValueError, match="write_to is required"):
        _run(src, "", overwrite=True)


def test_write_to_inside_the_input_store_is_refused(data: tuple[Path, str]) -> None:
    folder, src = data
    before = _tree(folder)
    with pytest.raises(ValueError, match="lies inside the input store"):
        _run(src, folder / "img.zarr" / "labels.zarr")
    assert _tree(folder) == before


def test_overwrite_replaces_a_blockbuster_output_and_only_it(data: tuple[Path, str]) -> None:
    folder, src = data
    out = folder / "labels.zarr"
    _run(src, out)
    mark = output_mark(out)
    assert mark is not None and mark["complete"] is True
    first_id = mark["run_id"]
    _run(src, out, overwrite=True)
    second = output_mark(out)
    assert second is not None and second["run_id"] != first_id
    assert (folder / "notes.txt").read_text() == "the user's own file"
    np.testing.assert_array_equal(zarr.open_array(str(out))[:] > 0, blobs((20, 30)) > 0.5)


def test_run_dir_that_is_not_ours_is_refused(data: tuple[Path, str]) -> None:
    folder, src = data
    out = folder / "labels.zarr"
    stranger = RunDir.for_output(out).root
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("do not delete")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="is not a blockbuster run directory"):
            _run(src, out, overwrite=overwrite)
    assert (stranger / "thesis.tex").read_text() == "do not delete"


def test_run_directory_is_private_and_marked(data: tuple[Path, str]) -> None:
    folder, src = data
    out = folder / "labels.zarr"
    _run(src, out, keep_stage=True)
    root = RunDir.for_output(out).root
    assert (root / RUN_MARKER).exists()
    assert os.stat(root).st_mode & 0o777 == 0o700
    assert os.stat(root / "spec.json").st_mode & 0o077 == 0


def test_repeating_a_finished_call_reports_it_and_finishes_an_interrupted_cleanup(
    data: tuple[Path, str],
) -> None:
    folder, src = data
    out = folder / "labels.zarr"
    _run(src, out, keep_stage=True)
    expected = zarr.open_array(str(out))[:]
    root = RunDir.for_output(out).root
    # the driver was stopped after it finished the output, before the run directory went
    again = _run(src, out)
    assert again.ok and again.already_finished
    assert again.num_labels == len(np.unique(expected)) - 1
    assert not root.exists()
    # ... or while it was deleting it (renamed aside, half gone)
    debris = out.with_name(f".{root.name}.removing-0123456789ab")
    (debris / "stage.zarr").mkdir(parents=True)
    third = _run(src, out)
    assert third.already_finished and not debris.exists()
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], expected)
    # another fn on the same write_to is not "finished": it needs overwrite
    with pytest.raises(ValueError, match="already exists"):
        tile_process(src, np.zeros_like, (10, 10), 0, write_to=out)


def test_remove_created_renames_aside_first(tmp_path: Path) -> None:
    victim = tmp_path / "run.blockbuster"
    (victim / "a").mkdir(parents=True)
    (victim / "a" / "f").write_text("x")
    remove_created(victim)
    assert not victim.exists()
    assert list(tmp_path.iterdir()) == []
    left = tmp_path / ".run.blockbuster.removing-abc"
    left.mkdir()
    remove_debris(victim)
    assert not left.exists()


def test_run_dir_without_a_spec_never_costs_an_existing_write_to(data: tuple[Path, str]) -> None:
    folder, src = data
    out = folder / "labels.zarr"
    out.mkdir()
    (out / "mine.txt").write_text("not blockbuster's")
    RunDir.for_output(out).root.mkdir()  # empty: as a driver killed at its very start leaves it
    with pytest.raises(ValueError, match="already exists; pass overwrite=True"):
        _run(src, out)
    assert (out / "mine.txt").read_text() == "not blockbuster's"


def test_spec_of_another_release_is_named_as_such(data: tuple[Path, str]) -> None:
    import json

    folder, src = data
    out = folder / "labels.zarr"
    with pytest.raises(TileFailureError):  # float labels: every tile fails, the run dir is kept
        tile_process(src, np.ones_like, (10, 10), 0, write_to=out)
    spec = RunDir.for_output(out).spec_file
    data_ = json.loads(spec.read_text())
    spec.write_text(json.dumps({**data_, "version": 1}))
    with pytest.raises(ValueError, match="written by another blockbuster release .spec version 1"):
        tile_process(src, np.ones_like, (10, 10), 0, write_to=out)
