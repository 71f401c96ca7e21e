from __future__ import annotations

import threading
from itertools import product
from pathlib import Path

import fns
import numpy as np
import pytest
from conftest import blobs, run_stage, write_zarr
from fns import cc_label, zeros

from blockbuster.pipeline.driver import prepare_run
from blockbuster.pipeline.segment import check_labels, renumber_core_first
from blockbuster.pipeline.stage import any_chunk_stored, open_stage


def test_renumber_puts_core_labels_first() -> None:
    labels = np.array([[7, 7, 0, 3], [9, 9, 0, 3]])
    core = (slice(None), slice(2, 4))  # holds 0 and 3
    out, n_core, n_labels = renumber_core_first(labels, core, "uint32")
    assert out.dtype == np.uint32
    assert (n_core, n_labels) == (1, 3)
    assert out[0, 3] == 1 and out[1, 3] == 1
    assert {out[0, 0], out[1, 0]} == {2, 3}
    assert (out == 0).sum() == 2


def test_renumber_keeps_huge_and_sparse_ids_apart() -> None:
    big = np.iinfo(np.uint64).max - 5
    labels = np.array([big, big, 2**40, 1], dtype=np.uint64)
    out, n_core, n_labels = renumber_core_first(labels, (slice(None),))
    assert n_core == n_labels == 3
    assert out[0] == out[1] and len(np.unique(out)) == 3


def test_renumber_of_an_empty_tile_is_zeros() -> None:
    out, n_core, n_labels = renumber_core_first(np.zeros((4, 5), np.int32), (slice(1, 3),) * 2)
    assert (n_core, n_labels) == (0, 0)
    assert out.dtype == np.uint64 and out.shape == (4, 5) and not out.any()


def test_renumber_without_halo_equals_renumber_with_a_core_box_covering_everything() -> None:
    labels = np.random.default_rng(1).integers(0, 50, (6, 7)) * 1000
    labels[0, 0] = 0
    whole = renumber_core_first(labels, (slice(None), slice(None)))
    boxed = renumber_core_first(labels, (slice(0, 6), slice(0, 7)))
    n = len(np.unique(labels[labels != 0]))
    assert whole[1:] == boxed[1:] == (n, n)
    np.testing.assert_array_equal(whole[0], boxed[0])
    # a bijection onto 1..n that keeps background
    pairs = np.unique(np.stack([labels.ravel(), whole[0].ravel()]), axis=1)
    assert pairs.shape[1] == n + 1
    assert set(pairs[1].tolist()) == set(range(n + 1))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros((3, 3), np.int32), "shape"),
        (np.zeros((4, 4), np.float32), "dtype"),
        (np.full((4, 4), -1, np.int32), "negative"),
    ],
)
def test_check_labels_rejects_bad_results(labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_labels(labels, (4, 4))


def test_check_labels_accepts_bool() -> None:
    assert check_labels(np.ones((2, 2), bool), (2, 2)).dtype == np.uint8


def test_an_empty_retry_clears_what_an_earlier_attempt_staged(tmp_path: Path) -> None:
    """Empty tiles skip their stage write only when nothing was staged there before."""
    src = write_zarr(tmp_path / "img.zarr", np.zeros((8, 12), np.float32))
    run, spec, _ = prepare_run(
        src,
        zeros,
        (4, 6),
        1,
        write_to=tmp_path / "out.zarr",
        sequential_labels=False,
        merge_threshold=0.5,
        overwrite=True,
    )
    stage = open_stage(run.stage, mode="r+")
    stage[1, 1] = 5  # what an earlier attempt (with other results) left before it died
    records = run_stage(run, "segment")
    assert not stage[:].any()
    assert not any_chunk_stored(stage, ((0, 1), (0, 1), (0, 6), (0, 8)))  # never written
    assert {r["n_labels"] for r in records.done_records().values()} == {0}


def _prepared(tmp_path: Path, fn, image: np.ndarray, tile, overlap, chunks):
    src = write_zarr(tmp_path / "img.zarr", image, chunks=chunks)
    run, spec, _ = prepare_run(
        src,
        fn,
        tile,
        overlap,
        write_to=tmp_path / "out.zarr",
        sequential_labels=False,
        merge_threshold=0.5,
        overwrite=True,
    )
    return run, spec


def test_a_block_of_tiles_decodes_each_input_chunk_once(tmp_path: Path, monkeypatch) -> None:
    """Chunks = tiles with a halo: every tile reads its 8 neighbours' chunks, yet a segment
    block decodes each chunk its region meets once, the next block of the same worker
    decodes only the chunks it did not share with the last one, and the stage is exactly
    what tile-by-tile reads stage."""
    import blockbuster.pipeline.segment as segment_module
    import blockbuster.pipeline.stage as stage_module
    from blockbuster.io.chunks import ChunkCache, chunks_touching

    # tiles as large tiles are run (a file per tile, read through the chunk cache); small
    # ones are read a block at a time (test_small_tiles_batched_per_block_...)
    monkeypatch.setattr(stage_module, "SHARD_STAGE_VOXELS", 0)
    image = blobs((64, 64), seed=3)
    run, spec = _prepared(tmp_path, cc_label, image, (8, 8), 2, (8, 8))
    plan = spec.plan
    group = plan.segment_group_shape()
    assert np.prod(group) > 1
    caches: list[ChunkCache] = []
    real_init = ChunkCache.__init__

    def kept_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        caches.append(self)

    monkeypatch.setattr(ChunkCache, "__init__", kept_init)
    records = run_stage(run, "segment")
    stage = open_stage(run.stage)[:]
    # the blocks run in turn in this one process: each decodes the chunks its region meets
    # that the block before it had not decoded
    expected, kept = 0, set()
    for g in plan.groups(group):
        reads = [plan.read(i) for i in plan.tiles_in(g)]
        union = tuple((min(r[a][0] for r in reads), max(r[a][1] for r in reads)) for a in range(2))
        keys = set(product(*(range(a // 8, (b - 1) // 8 + 1) for a, b in union)))
        expected += len(keys - kept)
        kept = keys
    assert len(caches) == 1  # one cache for the worker, its capacity set block by block
    assert caches[0].decoded == expected
    per_block = sum(
        chunks_touching(
            (8, 8),
            (64, 64),
            tuple(
                (
                    min(plan.read(i)[a][0] for i in plan.tiles_in(g)),
                    max(plan.read(i)[a][1] for i in plan.tiles_in(g)),
                )
                for a in range(2)
            ),
        )
        for g in plan.groups(group)
    )
    assert expected < per_block
    assert per_block < sum(chunks_touching((8, 8), (64, 64), plan.read(i)) for i in plan.tiles())
    assert set(records.call_counts().values()) == {1}
    # without the cache (every tile read on its own) the stage is the same, bit for bit
    monkeypatch.setattr(segment_module.Segmenter, "_cache_for", lambda self, todo: None)
    run2, _ = _prepared(tmp_path / "b", cc_label, image, (8, 8), 2, (8, 8))
    run_stage(run2, "segment")
    np.testing.assert_array_equal(open_stage(run2.stage)[:], stage)


def test_a_failing_tile_costs_only_itself(tmp_path: Path) -> None:
    """One tile of a block fails: the block's other tiles are done and recorded, and the
    retried block calls fn on the failed tile alone."""
    import functools

    from blockbuster.pipeline.driver import stage_tasks
    from blockbuster.pipeline.segment import TilesFailed
    from blockbuster.run.blocks import process_block

    image = blobs((32, 64), seed=5)
    image[12, 20] = 1.5  # one tile holds the trigger value
    flag = tmp_path / "flag"
    flag.touch()
    calls = tmp_path / "calls"
    calls.mkdir()
    fn = functools.partial(fns.fail_while_flag, flag=str(flag), bad_value=1.5, calls_dir=str(calls))
    run, spec = _prepared(tmp_path, fn, image, (8, 8), 2, None)
    plan = spec.plan
    segment = {t.name: t for t in stage_tasks(run, plan)}["segment"]
    run.write_tasks([segment])
    records = run.task_records(segment)
    bad = plan.tile_id((1, 2))
    block = next(b for b in segment.blocks() if plan.tile_id((1, 2)) in segment.units(b))
    assert len(segment.units(block)) > 1
    with segment.opened() as f:
        with pytest.raises(TilesFailed) as caught:
            process_block(segment, f, records, block)
        assert caught.value.tiles == [bad]
        assert set(records.done_records()) == set(segment.units(block)) - {bad}
        assert set(records.failed_tiles()) == {bad}
        flag.unlink()
        process_block(segment, f, records, block)
    assert set(records.done_records()) == set(segment.units(block))
    counts = records.call_counts()
    assert counts.pop(bad) == 2 and set(counts.values()) == {1}


def test_fn_runs_in_the_calling_thread(tmp_path: Path) -> None:
    """fn runs where the worker's CUDA context lives: the thread that runs the block."""
    import functools

    log = tmp_path / "threads"
    log.mkdir()
    fn = functools.partial(fns.log_thread, log_dir=str(log))
    run, _ = _prepared(tmp_path, fn, blobs((32, 32), seed=1), (8, 8), 2, None)
    run_stage(run, "segment")
    names = {p.read_text() for p in log.iterdir()}
    assert names == {threading.current_thread().name}
    assert len(list(log.iterdir())) == 16


@pytest.mark.parametrize("time_axis", [False, True], ids=["3d", "time series"])
def test_small_tiles_batched_per_block_equal_one_tile_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, time_axis: bool
) -> None:
    """Small tiles: a block's input is read in one call and its stage shard written in one;
    the stage, the records' counts and digests, the faces and the output equal those of the
    same run staged one tile at a time (one chunk file each), and the whole image's labels."""
    from conftest import assert_one_to_one
    from scipy import ndimage as ndi
    from serial import run_in_process

    import blockbuster.pipeline.stage as stage_module
    from blockbuster.pipeline.faces import FacesRef, read_faces
    from blockbuster.pipeline.spec import read_spec
    from blockbuster.run.records import TaskRecords

    if time_axis:  # t, c, y, x: the time axis is never grouped, fn sees both channels
        from ngff import space, write_ngff

        frames = np.stack([blobs((40, 48), seed=s) for s in (4, 5, 6)])
        src = write_ngff(
            tmp_path / "movie.ome.zarr",
            "0.5",
            [np.stack([frames, 2 * frames], axis=1)],
            [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, *space("y", "x")],
            [[{"type": "scale", "scale": [1.0, 1.0, 1.0, 1.0]}]],
        )
        fn, tile = fns.first_channel_cc, (8, 8)
    else:
        frames = blobs((24, 40, 48), seed=4)
        src = write_zarr(tmp_path / "img.zarr", frames, chunks=(4, 8, 8))
        fn, tile = cc_label, (4, 8, 8)
    results = {}
    for batched in (True, False):
        if not batched:
            monkeypatch.setattr(stage_module, "SHARD_STAGE_VOXELS", 0)
        run, spec, _ = prepare_run(
            src,
            fn,
            tile,
            2,
            write_to=tmp_path / f"out{batched}.zarr",
            sequential_labels=True,
            merge_threshold=0.0,
            overwrite=True,
        )
        plan = read_spec(run).plan
        assert (stage_module.stage_shard_tiles(plan) is not None) == batched
        if batched and not time_axis:  # small tiles: larger blocks
            assert np.prod(plan.segment_group_shape()) > 8
        out, num = run_in_process(run)
        stage = open_stage(run.stage)[:]
        records = TaskRecords(run.records("segment"), "segment").done_records()
        faces = {
            t: read_faces(run.faces, FacesRef.of(r)) for t, r in records.items() if r["n_labels"]
        }
        keep = {t: (r["n_core"], r["n_labels"], r["input"]) for t, r in records.items()}
        results[batched] = (out, num, stage, keep, faces)
    (out, num, stage, keep, faces), (out1, num1, stage1, keep1, faces1) = (
        results[True],
        results[False],
    )
    np.testing.assert_array_equal(stage, stage1)
    assert keep == keep1 and faces.keys() == faces1.keys()
    for t, f in faces.items():
        assert f is not None and faces1[t] is not None
        for k, v in f.items():
            np.testing.assert_array_equal(v, faces1[t][k])
    np.testing.assert_array_equal(out, out1)
    assert num == num1
    if time_axis:
        for t, frame in enumerate(frames):
            assert_one_to_one(ndi.label(frame > 0.5)[0], out[t])
    else:
        assert_one_to_one(ndi.label(frames > 0.5)[0], out)


def test_a_stage_not_sharded_as_planned_is_refused(tmp_path: Path) -> None:
    """A stage whose layout is not the plan's (made by another release) would have its
    chunk sizes read wrong: the worker refuses it before writing anything."""
    import zarr

    from blockbuster.pipeline.plan import TilePlan
    from blockbuster.pipeline.segment import Segmenter
    from blockbuster.pipeline.stage import stage_shard_tiles
    from blockbuster.run.records import TaskRecords

    plan = TilePlan((64, 64), (8, 8), (2, 2), (1, 1), (0, 0))
    assert stage_shard_tiles(plan) is not None
    stage = zarr.create_array(
        str(tmp_path / "stage.zarr"),
        shape=plan.grid + plan.stage_tile_shape,
        chunks=(1, 1) + plan.stage_tile_shape,
        dtype=plan.stage_dtype,
        fill_value=0,
    )
    image = zarr.create_array(str(tmp_path / "img.zarr"), shape=(64, 64), dtype="f4")
    records = TaskRecords(tmp_path / "records", "segment")
    with pytest.raises(RuntimeError, match="is not sharded, unlike the one this release plans"):
        Segmenter(plan, image, 0, stage, records, cc_label)
    assert list((tmp_path / "stage.zarr").iterdir()) == [tmp_path / "stage.zarr" / "zarr.json"]


def test_a_shard_whose_chunks_do_not_decode_is_rebuilt_not_failed_forever(
    tmp_path: Path,
) -> None:
    """A shard whose index is whole but whose chunk bytes are damaged passes the size check;
    the block that rewrites it (to redo one tile) removes it and forgets its tiles' records,
    so the next pass segments them again, and the stage ends as it was."""
    from blockbuster.pipeline.stage import StageFiles
    from blockbuster.run.records import TaskRecords

    image = blobs((64, 64), seed=3)
    run, spec = _prepared(tmp_path, cc_label, image, (8, 8), 2, (8, 8))
    plan = spec.plan
    records = run_stage(run, "segment")
    clean = open_stage(run.stage)[:]
    files = StageFiles(run.stage, plan)
    assert files.shard is not None
    group = next(iter(plan.groups(plan.segment_group_shape())))
    tiles = [plan.tile_id(i) for i in plan.tiles_in(group)]
    labelled = [t for t in tiles if records.record(t)["n_labels"]]
    assert len(labelled) > 1
    path = files.file(plan.tile_index(tiles[0]))
    data = bytearray(path.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)  # the chunks' bytes, not the index
    path.write_bytes(bytes(data))
    assert StageFiles(run.stage, plan).chunk_bytes(plan.tile_index(labelled[0])) is not None
    redo = labelled[0]
    records.discard(redo)
    run_stage(run, "segment")  # only the first block has a tile to redo
    after = TaskRecords(run.records("segment"), "segment")
    assert after.record(redo) is not None  # the tile redone is staged in the new shard
    assert all(after.record(t) is None for t in labelled if t != redo)
    run_stage(run, "segment")  # the next pass
    np.testing.assert_array_equal(open_stage(run.stage)[:], clean)
