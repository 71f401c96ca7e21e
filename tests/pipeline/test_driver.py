"""End to end through daisy: worker processes, stage, stitch, resolve, relabel."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_one_to_one, blobs, write_zarr
from fns import (
    cc_label,
    check_position_encoding,
    counting_cc_label,
    fail_on_value,
    first_channel_cc,
)
from scipy import ndimage as ndi

from blockbuster import TileFailureError, tile_process
from blockbuster.pipeline.spec import describe_fn, load_fn, load_fn_ref
from blockbuster.run.rundir import RunDir

CASES = [
    # shape, tile, overlap
    ((45, 61), (16, 20), 0),
    ((45, 61), (16, 20), 3),
    ((21, 30, 35), (8, 12, 16), 0),
    ((21, 30, 35), (8, 12, 16), (2, 3, 1)),
]


@pytest.mark.parametrize(("shape", "tile", "overlap"), CASES)
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("sequential", [False, True])
def test_tiled_equals_whole(
    tmp_path: Path, shape, tile, overlap, workers: int, sequential: bool
) -> None:
    img = blobs(shape, sigma=1.5, seed=len(shape) * 7 + workers)
    src = write_zarr(tmp_path / "img.zarr", img, chunks=tuple(max(1, s // 3) for s in shape))
    calls = tmp_path / "calls"
    calls.mkdir()
    fn = functools.partial(counting_cc_label, calls_dir=str(calls))
    result = tile_process(
        src,
        fn,
        tile,
        overlap,
        write_to=tmp_path / "out.zarr",
        num_workers=workers,
        sequential_labels=sequential,
        merge_threshold=0.0,
    )
    out = zarr.open_array(str(tmp_path / "out.zarr"))[:]
    whole, n_whole = ndi.label(img > 0.5)
    assert out.shape == img.shape and out.dtype == np.uint32
    assert_one_to_one(whole, out)
    assert result.num_labels == n_whole
    n_tiles = int(np.prod([-(-s // t) for s, t in zip(shape, tile)]))
    assert result.tiles_total == result.tiles_completed == n_tiles
    assert result.tiles_failed == 0
    # fn ran exactly once per tile, counted across worker processes
    assert len(list(calls.iterdir())) == n_tiles == result.fn_calls
    if sequential:
        assert set(np.unique(out).tolist()) == set(range(n_whole + 1))
    assert not RunDir.for_output(tmp_path / "out.zarr").root.exists()


def test_fn_sees_only_real_image_voxels(tmp_path: Path) -> None:
    shape = (13, 17, 19)
    img = (np.arange(np.prod(shape)) + 1).reshape(shape).astype(np.int64)
    src = write_zarr(tmp_path / "img.zarr", img)
    log = tmp_path / "log"
    log.mkdir()
    (log / "shape.txt").write_text(",".join(map(str, shape)))
    fn = functools.partial(check_position_encoding, log_dir=str(log))
    tile, halo = (5, 6, 7), (2, 3, 4)
    result = tile_process(src, fn, tile, halo, write_to=tmp_path / "out.zarr", num_workers=2)
    boxes = sorted(p.read_text() for p in log.iterdir() if p.name != "shape.txt")
    expected = []
    for i in range(3):
        for j in range(3):
            for k in range(3):
                idx = (i, j, k)
                start = [max(x * t - h, 0) for x, t, h in zip(idx, tile, halo)]
                stop = [min((x + 1) * t + h, s) for x, t, h, s in zip(idx, tile, halo, shape)]
                expected.append(f"{start};{stop}")
    assert boxes == sorted(expected)
    out = zarr.open_array(str(tmp_path / "out.zarr"))
    assert out.shape == shape
    assert result.num_labels == 1


def test_keep_stage_keeps_the_run_directory(tmp_path: Path, blob_volume) -> None:
    src, img = blob_volume
    result = tile_process(
        src, cc_label, (16, 24, 24), 2, write_to=tmp_path / "out.zarr", keep_stage=True
    )
    run = RunDir.for_output(tmp_path / "out.zarr")
    assert result.run_dir == str(run.root)
    assert run.stage.exists() and run.table.exists() and run.spec_file.exists()
    stage = zarr.open_array(str(run.stage))
    assert stage.shape == (2, 2, 3, 20, 28, 28)


def test_failing_tile_raises_and_keeps_everything_for_resume(tmp_path: Path) -> None:
    img = blobs((30, 40), seed=5)
    img[25, 35] = 7.0  # only the tile holding this voxel (or its halo) fails
    src = write_zarr(tmp_path / "img.zarr", img)
    fn = functools.partial(fail_on_value, bad_value=7.0)
    with pytest.raises(TileFailureError, match="deliberate failure") as err:
        tile_process(src, fn, (10, 10), 0, write_to=tmp_path / "out.zarr", max_retries=1)
    result = err.value.result
    assert result.tiles_failed == 1
    assert result.tiles_completed == result.tiles_total - 1 == 11
    assert result.fn_calls == 11 + 2  # the bad tile ran once plus one retry
    assert not (tmp_path / "out.zarr").exists()
    assert RunDir.for_output(tmp_path / "out.zarr").stage.exists()


def test_channel_axis_is_passed_whole(tmp_path: Path) -> None:
    base = blobs((20, 33, 27), seed=2)
    img = np.stack([base, 2 * base])
    src = write_zarr(tmp_path / "img.zarr", img)
    result = tile_process(
        src,
        first_channel_cc,
        (8, 16, 16),
        2,
        write_to=tmp_path / "out.zarr",
        merge_threshold=0.0,
        channels=True,
    )
    out = zarr.open_array(str(tmp_path / "out.zarr"))[:]
    assert out.shape == base.shape
    assert_one_to_one(ndi.label(base > 0.5)[0], out)
    assert result.fn_calls == 3 * 3 * 2


def test_ome_zarr_in_and_out(tmp_path: Path) -> None:
    img = blobs((24, 40, 40), seed=9)
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    group.create_array("0", shape=img.shape, dtype=img.dtype)[:] = img
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [2.0, 0.5, 0.5]},
                        ],
                    }
                ],
            }
        ],
    }
    tile_process(
        str(tmp_path / "img.ome.zarr"),
        cc_label,
        (12, 16, 16),
        2,
        write_to=tmp_path / "labels.ome.zarr",
        merge_threshold=0.0,
    )
    out = zarr.open_group(str(tmp_path / "labels.ome.zarr"))
    ms = out.attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.5]
    assert [a["unit"] for a in ms["axes"]] == ["micrometer"] * 3
    assert_one_to_one(ndi.label(img > 0.5)[0], out["0"][:])


def test_fn_defined_in_main_and_in_a_module_added_at_run_time(tmp_path: Path) -> None:
    img = blobs((30, 30), seed=4)
    src = write_zarr(tmp_path / "img.zarr", img)
    moddir = tmp_path / "mods"
    moddir.mkdir()
    (moddir / "mysegmenter.py").write_text(
        textwrap.dedent("""
        import numpy as np
        from scipy import ndimage as ndi
        def seg(block):
            return ndi.label(block > 0.5)[0]
    """)
    )
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        import numpy as np
        from scipy import ndimage as ndi
        from blockbuster import tile_process

        def main_fn(block):
            return ndi.label(block > 0.5)[0]

        if __name__ == "__main__":
            r1 = tile_process({src!r}, main_fn, (10, 10), 2, write_to={str(tmp_path / "a.zarr")!r},
                              merge_threshold=0.0, num_workers=2)
            sys.path.append({str(moddir)!r})
            import mysegmenter
            r2 = tile_process({src!r}, mysegmenter.seg, (10, 10), 2,
                              write_to={str(tmp_path / "b.zarr")!r}, merge_threshold=0.0)
            print(r1.num_labels, r2.num_labels)
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr
    n = ndi.label(img > 0.5)[1]
    assert done.stdout.split()[-2:] == [str(n), str(n)]
    whole = ndi.label(img > 0.5)[0]
    for name in ("a.zarr", "b.zarr"):
        assert_one_to_one(whole, zarr.open_array(str(tmp_path / name))[:])


def test_importable_fns_are_stored_by_import_path(tmp_path: Path) -> None:

    ref = describe_fn(functools.partial(fail_on_value, bad_value=7.0))
    assert ref == {"ref": "fns:fail_on_value", "kwargs": {"bad_value": 7.0}}
    assert load_fn_ref(ref).keywords == {"bad_value": 7.0}
    assert describe_fn(cc_label) == {"ref": "fns:cc_label", "kwargs": {}}
    assert describe_fn(lambda b: b) is None
    assert describe_fn(functools.partial(cc_label, np.zeros(3))) is None
    src = write_zarr(tmp_path / "img.zarr", blobs((20, 20)))
    tile_process(src, cc_label, (10, 10), write_to=tmp_path / "o.zarr", keep_stage=True)
    run = RunDir.for_output(tmp_path / "o.zarr")
    assert run.fn_ref_file.exists() and run.fn_file.exists()
    assert load_fn(run) is cc_label
