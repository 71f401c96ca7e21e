"""Record logs: one per writing process, read incrementally, and whole after any crash."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.run import records as records_module
from blockbuster.run.records import RecordIndex, TaskRecords, decode_line, encode_line


def logs(root: Path) -> list[Path]:
    return sorted(root.glob("log.*.jsonl"))


def test_a_line_round_trips_and_any_changed_byte_is_caught() -> None:
    record = {"kind": "done", "tile": 3, "seconds": 1.5, "id": "ab", "note": "tab\there"}
    line = encode_line(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_line(line[:-1]) == record
    for i in range(len(line) - 1):
        damaged = bytearray(line[:-1])
        damaged[i] ^= 0x04
        assert decode_line(bytes(damaged)) is None, i
    assert decode_line(line[:-5]) is None


def test_each_process_writes_one_log_and_every_reader_sees_all(tmp_path: Path) -> None:
    a, b = TaskRecords(tmp_path, "segment"), TaskRecords(tmp_path, "segment")
    for tile in range(100):
        (a if tile % 2 else b).done(tile, time.time(), 0.1, n=tile)
    assert len(logs(tmp_path)) == 2  # files grow with writers, not with blocks
    reader = TaskRecords(tmp_path, "segment")
    assert sorted(reader.done_records()) == list(range(100))
    assert reader.record(7) is not None and reader.record(7)["n"] == 7  # type: ignore[index]
    assert not reader.is_done(100)


def test_discard_makes_a_block_not_done_until_it_is_done_again(tmp_path: Path) -> None:
    worker, driver = TaskRecords(tmp_path, "stitch"), TaskRecords(tmp_path, "stitch")
    worker.done(4, time.time(), 1.0, tiles=[4, 5])
    worker.write_edges(4, [[4, 1, 5, 1]])
    driver.discard(4)
    assert not worker.is_done(4) and not worker.edges_file(4).exists()
    worker.done(4, time.time(), 2.0, tiles=[4, 5])
    assert driver.record(4)["seconds"] == 2.0  # type: ignore[index]


def test_required_fields_decide_validity(tmp_path: Path) -> None:
    records = TaskRecords(tmp_path, "segment", {"n_core": int})
    records.done(1, time.time(), 0.1)  # no n_core: not a valid segment record
    records.done(2, time.time(), 0.1, n_core=3)
    assert sorted(records.done_records()) == [2]


def test_a_line_being_written_is_read_once_complete(tmp_path: Path) -> None:
    index = RecordIndex(tmp_path)
    line = encode_line({"kind": "call", "tile": 5})
    log = tmp_path / "log.h.1.x.jsonl"
    log.write_bytes(line[:7])
    assert index.refresh() is False and index.calls == {}
    with open(log, "ab") as f:
        f.write(line[7:])
    assert index.refresh() is True and index.calls == {5: 1}
    assert index.refresh() is False  # nothing new: nothing read again


def test_a_removed_log_is_forgotten_and_its_writer_starts_a_new_one(tmp_path: Path) -> None:
    writer, reader = TaskRecords(tmp_path / "r", "relabel"), TaskRecords(tmp_path / "r", "relabel")
    writer.done(0, time.time(), 0.1)
    assert reader.is_done(0)
    for log in logs(tmp_path / "r"):
        log.unlink()  # the driver cleared the task's records
    (tmp_path / "r").rmdir()
    assert not reader.is_done(0)
    writer.done(1, time.time(), 0.1)
    assert sorted(reader.done_records()) == [1]


def test_a_forked_child_writes_a_log_of_its_own(tmp_path: Path) -> None:
    records = TaskRecords(tmp_path, "segment")
    records.done(0, time.time(), 0.1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            records.done(1, time.time(), 0.1)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    records.done(2, time.time(), 0.1)
    assert len(logs(tmp_path)) == 2
    assert sorted(TaskRecords(tmp_path, "segment").done_records()) == [0, 1, 2]


def test_a_failed_write_leaves_no_half_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = TaskRecords(tmp_path, "segment")
    records.done(0, time.time(), 0.1)
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])  # what fit before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records_module.os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        records.done(1, time.time(), 0.1)
    monkeypatch.setattr(records_module.os, "write", real_write)
    records.done(2, time.time(), 0.1)
    first = logs(tmp_path)
    assert all(p.read_bytes().endswith(b"\n") for p in first)
    assert sorted(TaskRecords(tmp_path, "segment").done_records()) == [0, 2]


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["done", "discard", "call", "error"]),
            st.integers(0, 5),
            st.integers(0, 2),
        ),
        max_size=40,
    ),  # fmt: skip
    cut=st.integers(0, 200),
)
def test_the_index_equals_a_model_of_the_writes_after_a_crash(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int]], cut: int
) -> None:
    """Writers append in any order; one is killed mid-line. Every reader, incremental or
    fresh, sees exactly the records whose lines are whole."""
    root = tmp_path_factory.mktemp("records")
    writers = [TaskRecords(root, "segment") for _ in range(3)]
    watcher = RecordIndex(root)
    model: dict[int, bool] = {}
    calls: dict[int, int] = {}
    for kind, tile, who in ops:
        w = writers[who]
        if kind == "done":
            w.done(tile, 0.0, 1.0)
            model[tile] = True
        elif kind == "discard":
            w.discard(tile)
            model.pop(tile, None)
        elif kind == "call":
            w.call_started(tile)
            calls[tile] = calls.get(tile, 0) + 1
        else:
            w.failed(tile, "Traceback\nValueError: x")
        if tile % 2:
            watcher.refresh()
    # the last writer is killed while appending one more done record
    crashed = writers[0]
    line = encode_line({"kind": "done", "tile": 99, "seconds": 1.0, "id": "z"})
    crashed.log.append({"kind": "call", "tile": 99}, durable=False)
    log = crashed.log.path
    assert log is not None and log in logs(root)
    with open(log, "ab") as f:
        f.write(line[: cut % len(line)])
    calls[99] = 1
    for index in (watcher, RecordIndex(root)):
        index.refresh()
        assert sorted(index.done()) == sorted(model)
        assert index.calls == calls
    expected_errors = sum(1 for kind, _, _ in ops if kind == "error")
    assert len(TaskRecords(root, "segment").errors()) == expected_errors


def test_plane_pieces_go_to_one_log_per_process_not_a_file_per_tile(tmp_path: Path) -> None:
    from blockbuster.run.records import PLANES, RecordIndex, plane_piece

    records = TaskRecords(tmp_path / "segment", "segment")
    rng = np.random.default_rng(0)
    pieces = {t: rng.random((3, 5)).astype(np.float32) for t in range(50)}
    for tile, piece in pieces.items():
        records.write_plane(tile, piece)
    records.write_plane(7, np.arange(6, dtype=np.uint32).reshape(2, 3))  # redrawn: newest wins
    assert [p.name for p in (tmp_path / "segment").iterdir()] == [PLANES]
    assert len(list((tmp_path / "segment" / PLANES).iterdir())) == 1
    index = RecordIndex(tmp_path / "segment" / PLANES)
    index.refresh()
    assert sorted(index.planes) == sorted(pieces)
    for tile, piece in pieces.items():
        if tile != 7:
            np.testing.assert_array_equal(plane_piece(index.planes[tile]), piece)
    seven = plane_piece(index.planes[7])
    assert seven.dtype == np.uint32 and seven.tolist() == [[0, 1, 2], [3, 4, 5]]
    # the task's own records never hold pieces
    assert records.done_records() == {} and records.errors() == []
    with pytest.raises(ValueError, match="a damaged plane record"):
        plane_piece({**index.planes[3], "data": "bm90IHpsaWI="})


def test_many_done_records_in_one_write_and_a_crash_inside_it(tmp_path: Path, monkeypatch) -> None:
    """done_many writes a block's records with one write and one fsync; a write cut inside
    it leaves the records before the cut line done and none after it."""
    syncs: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # not the folder's, when the log is created
            syncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    records = TaskRecords(tmp_path / "seg", "segment")
    records.done_many([(t, 1.0, 0.5, {"n_core": t, "n_labels": t + 1}) for t in range(5)])
    assert len(syncs) == 1
    reader = TaskRecords(tmp_path / "seg", "segment")
    assert {t: r["n_labels"] for t, r in reader.done_records().items()} == {
        t: t + 1 for t in range(5)
    }
    log = records.log.path
    assert log is not None
    data = log.read_bytes()
    cut = data.index(b'"tile": 3') + 2  # inside the fourth line
    log.write_bytes(data[:cut])
    assert set(TaskRecords(tmp_path / "seg", "segment").done_records()) == {0, 1, 2}
