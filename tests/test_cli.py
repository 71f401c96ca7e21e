from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_one_to_one, blobs, write_zarr
from scipy import ndimage as ndi

TESTS = str(Path(__file__).parent)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": TESTS, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "blockbuster.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=env,
    )


def test_segment_with_a_module_fn(tmp_path: Path) -> None:
    img = blobs((40, 50), seed=1)
    src = write_zarr(tmp_path / "img.zarr", img)
    done = cli(
        "segment",
        src,
        str(tmp_path / "out.zarr"),
        "--fn",
        "fns:cc_label",
        "--tile",
        "16,16",
        "--overlap",
        "2",
        "--workers",
        "2",
        "--merge-threshold",
        "0",
        "--sequential",
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    whole, n = ndi.label(img > 0.5)
    assert f"labels          {n:,}" in done.stdout
    assert done.stdout.count("voxels/s") == 1  # the table, once: no progress on stderr
    assert_one_to_one(whole, zarr.open_array(str(tmp_path / "out.zarr"))[:])


def test_with_progress_the_table_is_printed_once(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((32, 32), seed=2))
    args = ["segment", src, str(tmp_path / "out.zarr"), "--fn", "fns:cc_label"]
    done = cli(*args, "--tile", "16,16", "--status-page", "off", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "labels          " in done.stdout and "voxels/s" not in done.stdout
    assert done.stderr.count("voxels/s") == 1
    assert "segment: 4/4 tiles" in done.stderr


def test_default_watershed_with_kwargs(tmp_path: Path) -> None:
    img = np.zeros((32, 48), dtype=np.float32)
    img[5:12, 5:12] = 1
    img[20:28, 30:40] = 1
    src = write_zarr(tmp_path / "img.zarr", img)
    done = cli(
        "segment",
        src,
        str(tmp_path / "out.zarr"),
        "--tile",
        "16,24",
        "--overlap",
        "4",
        "--fn-kwargs",
        json.dumps({"threshold": 0.5, "sigma": 0}),
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = zarr.open_array(str(tmp_path / "out.zarr"))[:]
    assert len(np.unique(out[img > 0])) == 2 and (out[img == 0] == 0).all()


def test_mask_auto_skips_empty_tiles_and_the_summary_says_so(tmp_path: Path) -> None:
    img = np.zeros((64, 96), dtype=np.float32)
    img[5:12, 5:12] = 1  # one object in the first tile; every other tile is empty
    src = write_zarr(tmp_path / "img.zarr", img)
    args = ["segment", src, str(tmp_path / "out.zarr"), "--fn", "fns:cc_label"]
    done = cli(*args, "--tile", "16,16", "--mask", "auto", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # 24 tiles: the object's tile and its neighbours (halo 0: only its own tile) run
    assert "tiles           24/24 completed (23 skipped: no foreground), 0 failed" in done.stdout
    assert "fn calls        1" in done.stdout
    assert "intensity       p1 0" in done.stdout


def test_failed_tiles_exit_nonzero(tmp_path: Path) -> None:
    img = blobs((20, 20), seed=1)
    img[3, 3] = 7.0
    src = write_zarr(tmp_path / "img.zarr", img)
    done = cli(
        "segment",
        src,
        str(tmp_path / "out.zarr"),
        "--fn",
        "fns:fail_on_value",
        "--fn-kwargs",
        '{"bad_value": 7.0}',
        "--tile",
        "10,10",
        "--max-retries",
        "0",
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "FAILED segment: 1 failed" in done.stderr
    assert "deliberate failure" in done.stderr


def test_bad_fn_is_a_one_line_error(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20)))
    done = cli(
        "segment", src, str(tmp_path / "o.zarr"), "--fn", "nosuch", "--tile", "8,8", cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: --fn 'nosuch' must look like package.module:function or path/to/file.py:function"
    )


def test_status_then_resubmit_redoes_only_the_failed_tile(tmp_path: Path) -> None:
    img = blobs((30, 40), seed=6)
    img[25, 35] = 1.5  # tile (2, 3) only, with overlap 0
    src = write_zarr(tmp_path / "img.zarr", img)
    flag = tmp_path / "broken"
    flag.touch()
    calls = tmp_path / "calls"
    calls.mkdir()
    kwargs = json.dumps({"flag": str(flag), "bad_value": 1.5, "calls_dir": str(calls)})
    out = tmp_path / "out.zarr"
    run_dir = tmp_path / "out.zarr.blockbuster"
    done = cli(
        "segment",
        src,
        str(out),
        "--fn",
        "fns:fail_while_flag",
        "--fn-kwargs",
        kwargs,
        "--tile",
        "10,10",
        "--merge-threshold",
        "0",
        "--max-retries",
        "1",
        "--workers",
        "2",
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert len(list(calls.iterdir())) == 12 + 1  # 12 tiles, the bad one retried once

    status = cli("status", str(run_dir), cwd=tmp_path)
    assert status.returncode == 1
    rows = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()[6:9]}
    assert rows["segment"][:3] == ["11", "1", "0"]  # done, failed, pending
    assert rows["segment"][-1] == "13"  # fn calls
    # stitch blocks next to the failed tile wait for it; the others ran
    assert rows["stitch"][:3] == ["8", "0", "4"] and rows["relabel"][:3] == ["0", "0", "12"]
    assert "segment tile 11 on" in status.stdout
    assert "2 attempt(s): RuntimeError: deliberate failure" in status.stdout
    tracebacks = cli("status", "--tracebacks", str(run_dir), cwd=tmp_path)
    assert "fns.py" in tracebacks.stdout and "=== segment tile 11" in tracebacks.stdout

    flag.unlink()
    again = cli("resubmit", str(run_dir), "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(list(calls.iterdir())) == 13 + 1  # only the failed tile ran again
    whole = ndi.label(img > 0.5)[0]
    assert_one_to_one(whole, zarr.open_array(str(out))[:])
    assert not run_dir.exists()


def test_status_of_a_kept_finished_run(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20), seed=2))
    done = cli(
        "segment",
        src,
        str(tmp_path / "o.zarr"),
        "--fn",
        "fns:cc_label",
        "--tile",
        "10,10",
        "--keep-stage",
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    status = cli("status", str(tmp_path / "o.zarr.blockbuster"), cwd=tmp_path)
    assert status.returncode == 0
    assert "(finished)" in status.stdout
    for line in status.stdout.splitlines()[6:9]:
        assert line.split()[1:4] == ["4", "0", "0"]
    missing = cli("status", str(tmp_path), cwd=tmp_path)
    assert missing.returncode == 2 and "not a blockbuster run directory" in missing.stderr


def test_status_of_a_finished_run_whose_run_directory_is_gone(tmp_path: Path) -> None:
    """After a run that removed its run directory, ``status`` on that directory (or on the
    output) says the run finished and where the labels are; ``--tracebacks`` of a run with
    no failure says there are none."""
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20), seed=2))
    args = ["segment", src, str(tmp_path / "o.zarr"), "--fn", "fns:cc_label", "--tile", "10,10"]
    done = cli(*args, "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "o.zarr.blockbuster").exists()
    for target in ("o.zarr.blockbuster", "o.zarr"):
        status = cli("status", str(tmp_path / target), cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert status.stdout.strip() == (
            "finished: the run directory was removed when the run ended; the labels are "
            f"{tmp_path / 'o.zarr'}"
        )
    kept = cli(*args[:2], str(tmp_path / "k.zarr"), *args[3:], "--keep-stage", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    status = cli("status", str(tmp_path / "k.zarr.blockbuster"), "--tracebacks", cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.strip() == "no failed tiles: no tracebacks"


def test_cellpose_plugin_missing_model_is_a_one_line_error(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20)))
    env_models = tmp_path / "models"
    env_models.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "blockbuster.cli",
            "segment",
            src,
            str(tmp_path / "o.zarr"),
            "--plugin",
            "cellpose",
            "--fn-kwargs",
            '{"model": "nuclei"}',
            "--tile",
            "10,10",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={
            "PATH": "/usr/bin:/bin",
            "CELLPOSE_LOCAL_MODELS_PATH": str(env_models),
            "HOME": str(tmp_path),
        },
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: cellpose_fn(model='nuclei'):")
    assert str(env_models / "nucleitorch_0") in done.stderr
    assert not (tmp_path / "o.zarr.blockbuster").exists()


def test_errors_name_the_flag_not_the_parameter(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20)))
    bad_tile = cli("segment", src, str(tmp_path / "o.zarr"), "--tile", "8,0", cwd=tmp_path)
    assert bad_tile.returncode == 2
    assert "error: --tile (8, 0) must hold positive integers" in bad_tile.stderr
    assert "tile_shape" not in bad_tile.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = cli("segment", src, str(other), "--tile", "8,8", "--overwrite", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--overwrite replaces only blockbuster outputs" in refused.stderr
    assert (other / "keep.txt").read_text() == "mine"
    threshold = cli(
        "segment",
        src,
        str(tmp_path / "o.zarr"),
        "--tile",
        "8,8",
        "--merge-threshold",
        "2",
        cwd=tmp_path,
    )
    assert threshold.returncode == 2 and "--merge-threshold 2.0 must be in" in threshold.stderr


def test_an_internal_error_is_exit_3_with_its_traceback(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import blockbuster.api
    from blockbuster import cli as cli_module

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(blockbuster.api, "run_config", broken)
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20)))
    rc = cli_module.main(["segment", src, str(tmp_path / "o.zarr"), "--tile", "8,8"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "Traceback" in err and "error: internal error (TypeError" in err


def test_resubmit_from_another_directory_imports_what_the_first_driver_did(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "myseg.py").write_text(
        "from pathlib import Path\n"
        "from fns import cc_label\n"
        "def seg(block, flag):\n"
        "    if Path(flag).exists() and block.max() > 0.9:\n"
        "        raise RuntimeError('flagged')\n"
        "    return cc_label(block)\n"
    )
    img = blobs((30, 40), seed=6)
    img[0, 0] = 1.0  # tile 0 fails while the flag exists
    src = write_zarr(tmp_path / "img.zarr", img)
    flag = tmp_path / "flag"
    flag.touch()
    kwargs = json.dumps({"flag": str(flag)})
    first = cli(
        "segment", src, str(tmp_path / "o.zarr"), "--fn", "myseg:seg", "--fn-kwargs", kwargs,
        "--tile", "10,10", "--no-progress", "--status-page", "off", "--max-retries", "0",
        cwd=project,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    flag.unlink()
    again = cli(
        "resubmit", str(tmp_path / "o.zarr.blockbuster"), "--no-progress", "--status-page",
        "off", cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "12/12 completed, 0 failed" in again.stdout


def _plain_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as its console script runs it: no PYTHONPATH, and (``-P``) no current
    directory on ``sys.path``."""
    return subprocess.run(
        [sys.executable, "-P", "-m", "blockbuster.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={"PATH": "/usr/bin:/bin"},
    )


FN_SOURCE = """
import numpy as np
from scipy import ndimage


def cc(block):
    return ndimage.label(block > 0.5)[0].astype(np.uint32)
"""


@pytest.mark.parametrize("form", ["module", "path"])
def test_fn_from_the_current_directory_or_a_file_path(tmp_path: Path, form: str) -> None:
    """``--fn myseg:cc`` with myseg.py in the current directory, and ``--fn
    sub/myseg.py:cc`` from anywhere, run on the workers too and equal whole-image labels."""
    img = blobs((40, 50), seed=1)
    src = write_zarr(tmp_path / "img.zarr", img)
    folder = tmp_path if form == "module" else tmp_path / "sub"
    folder.mkdir(exist_ok=True)
    (folder / "myseg.py").write_text(FN_SOURCE)
    fn = "myseg:cc" if form == "module" else f"{folder / 'myseg.py'}:cc"
    out = tmp_path / "out.zarr"
    args = ["segment", src, str(out), "--fn", fn, "--tile", "20,25", "--overlap", "2"]
    done = _plain_cli(*args, "--workers", "2", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    labels = zarr.open_array(str(out))[:]
    assert_one_to_one(labels, ndi.label(img > 0.5)[0])


def test_fn_path_that_is_not_a_python_file_names_the_flag(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((40, 50), seed=1))
    args = ["segment", src, str(tmp_path / "o.zarr"), "--fn", "nowhere/seg.py:cc"]
    done = _plain_cli(*args, "--tile", "20,25", cwd=tmp_path)
    assert done.returncode != 0
    assert "--fn 'nowhere/seg.py:cc'" in done.stderr and "is not a Python file" in done.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_help_shows_every_default_from_the_config() -> None:
    """Every run flag's help ends with RunConfig's default in the CLI's spelling, so the
    defaults have one source; the flags the Python API leaves unset say nothing."""
    from blockbuster.cli import build_parser
    from blockbuster.config import RunConfig

    parser = build_parser()
    segment = parser._subparsers._group_actions[0].choices["segment"]  # type: ignore[union-attr]
    helps = {a.dest: a.help or "" for a in segment._actions}
    expected = {"num_workers": "1", "merge_threshold": "0.5", "timeout": "3600", "max_retries": "2"}
    for name in RunConfig.flags():
        default = RunConfig.field(name).default
        if default in (None, (), "") or isinstance(default, bool):
            assert "(default:" not in helps[name], name
        else:
            spelled = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
            assert helps[name].endswith(f"(default: {spelled})"), name
            if name in expected:
                assert spelled.startswith(expected[name]), name
    text = subprocess.run(
        [sys.executable, "-m", "blockbuster.cli", "segment", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "(default: 3600" in " ".join(text.split())
    top = subprocess.run(
        [sys.executable, "-m", "blockbuster.cli", "--help"], capture_output=True, text=True
    ).stdout
    for help_text in (text, top):  # plain text: no reST markup
        assert "``" not in help_text and ":func:" not in help_text and ":class:" not in help_text


@pytest.mark.parametrize(
    ("flags", "said", "unsaid"),
    [
        (["--workers", "0"], "--workers 0", "num_workers"),
        (["--status-page", "nowhere"], "or be off for no page", "None"),
    ],
)
def test_errors_name_flags_and_the_cli_words_for_none(
    tmp_path: Path, flags: list[str], said: str, unsaid: str
) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20), seed=2))
    args = ["segment", src, str(tmp_path / "o.zarr"), "--fn", "fns:cc_label", "--tile", "10,10"]
    done = cli(*args, *flags, cwd=tmp_path)
    assert done.returncode == 2
    assert said in done.stderr and unsaid not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.zarr").exists()


def test_plugins_lists_every_parameter_with_its_default(tmp_path: Path) -> None:
    import inspect

    from blockbuster.plugins import watershed_fn
    from blockbuster.plugins.cellpose import cellpose_fn

    done = cli("plugins", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for build in (watershed_fn, cellpose_fn):
        for p in inspect.signature(build).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                assert f"**{p.name} (default: any other keyword)" in text
            else:
                assert f"    {p.name} (default: {p.default!r})" in text
    # the default threshold is stated, in plain text
    assert "None: Otsu's threshold of the whole image's" in text
    assert "``" not in text and ":func:" not in text
    one = cli("plugins", "watershed", cwd=tmp_path).stdout
    assert one.startswith("watershed: blockbuster.plugins.watershed.watershed_fn")
    assert "cellpose" not in one


def test_an_unknown_plugin_parameter_is_a_one_line_error_before_anything_is_written(
    tmp_path: Path,
) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20)))
    out = tmp_path / "o.zarr"
    done = cli(
        "segment", src, str(out), "--tile", "8,8", "--fn-kwargs", '{"thresh": 3}', cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: --fn-kwargs: the watershed plugin takes no thresh; its parameters are sigma, "
        "threshold, h, sampling, channel (see blockbuster plugins watershed)"
    )
    assert not out.exists() and not Path(f"{out}.blockbuster").exists()
