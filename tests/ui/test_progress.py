"""Progress from record files: the tile counter, and the monitor's bars and lines (an
observer of the record watcher's events, as in a run)."""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path

from blockbuster.run.events import Events, RecordWatcher, StageFinished, StageStarted, TaskInfo
from blockbuster.run.records import RecordScanner, TaskRecords, encode_line, record_tiles
from blockbuster.run.rundir import RunDir
from blockbuster.ui.progress import ProgressMonitor


def tile_counts(run: RunDir, task: str):
    return RecordScanner(run.records(task)).scan()


class Watched:
    """A stage as the driver runs one: the monitor observes the record watcher's events."""

    def __init__(
        self,
        run: RunDir,
        tasks: list[str],
        total: int,
        poll: float = 3600.0,
        upstream: dict[str, tuple[str, ...]] | None = None,
        **kw,
    ):
        self.monitor = ProgressMonitor(**kw)
        self.events = Events([self.monitor])
        ups = upstream or {}
        self.infos = tuple(TaskInfo(t, total, "tiles", ups.get(t, ())) for t in tasks)
        self.watcher = RecordWatcher(self.events, [(t, run.records(t)) for t in tasks], poll)

    @property
    def seconds(self) -> dict[str, float]:
        return self.monitor.seconds

    def __enter__(self) -> Watched:
        self.events.emit(StageStarted(self.infos))
        self.watcher.__enter__()
        return self

    def update(self) -> None:
        self.watcher.look()

    def __exit__(self, *exc: object) -> None:
        self.watcher.__exit__()
        self.events.emit(StageFinished({}, 0.0))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_record_tiles_honours_a_tiles_list() -> None:
    assert record_tiles({"seconds": 1.0}, 7) == [7]
    assert record_tiles({"tiles": [7, 8, 9]}, 7) == [7, 8, 9]
    assert record_tiles({"tiles": []}, 7) == [7]


def test_scanner_counts_tiles_of_single_and_multi_tile_records(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert tile_counts(run, "stitch").num_done == 0  # no folder yet
    records = TaskRecords(run.records("stitch"), "stitch")
    other = TaskRecords(run.records("stitch"), "stitch")  # a second worker: a log of its own
    records.done(0, time.time(), 2.0)
    other.done(4, time.time(), 3.0, tiles=[4, 5, 6])  # one block, three tiles
    records.failed(9, "Traceback\nValueError: x")
    other.failed(2, "Traceback\nValueError: y", tiles=[2, 3])  # a failed block of two tiles
    records.failed(0, "Traceback\nValueError: retried, then done")
    records.write_edges(0, [[0, 1, 4, 1]])
    logs = sorted(records.root.glob("log.*.jsonl"))
    assert len(logs) == 2
    line = encode_line({"kind": "done", "tile": 8, "seconds": 4.0, "id": "x"})
    mine = records.log  # the log of ``records``: a line still being written is not counted
    with open(next(p for p in logs if p != _log_of(other)), "ab") as f:
        f.write(line[:10])

    scanner = RecordScanner(records.root)
    counts = scanner.scan()
    assert counts.done == {0: 2.0, 4: 1.0, 5: 1.0, 6: 1.0}
    assert counts.failed == {2, 3, 9}
    assert counts.pending(12) == 12 - 4 - 3
    assert scanner.scan().done == counts.done  # nothing new

    with open(next(p for p in logs if p != _log_of(other)), "ab") as f:
        f.write(line[10:])  # the line complete
    mine.close()
    _log_of(other).unlink()  # its records cleared: forgotten
    counts = scanner.scan()
    assert counts.done == {0: 2.0, 8: 4.0}
    assert counts.failed == {9}
    assert tile_counts(run, "stitch").done == counts.done
    records.discard(8)
    assert scanner.scan().done == {0: 2.0}


def _log_of(records: TaskRecords) -> Path:
    path = records.log.path
    assert path is not None
    return path


def test_scanner_sees_started_segment_calls(tmp_path: Path) -> None:
    records = TaskRecords(tmp_path / "segment", "segment")
    for tile in (1, 2, 3):
        records.call_started(tile)
    records.call_started(1)  # a retry
    records.done(1, time.time(), 1.0)
    records.failed(2, "Traceback\nRuntimeError: z")
    counts = RecordScanner(records.root).scan()
    assert counts.started == {1, 2, 3}
    assert counts.running == {3}


def _monitor(run: RunDir, stream: io.StringIO, clock: FakeClock, tasks: list[str]):
    # poll is huge: the test drives update() itself, the thread only waits to be stopped
    return Watched(run, tasks, 4, interactive=False, interval=10.0, stream=stream, clock=clock)


def test_plain_lines_are_throttled_and_final_lines_exact(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    seg = TaskRecords(run.records("segment"), "segment")
    stitch = TaskRecords(run.records("stitch"), "stitch")
    out, clock = io.StringIO(), FakeClock()
    with _monitor(run, out, clock, ["segment", "stitch"]) as monitor:
        assert out.getvalue() == ""  # nothing happened yet: nothing to say
        seg.done(0, 0.0, 1.0, n_core=0, n_labels=0)
        clock.now = 5.0
        monitor.update()
        seg.done(1, 0.0, 1.0, n_core=0, n_labels=0)
        seg.done(2, 0.0, 1.0, n_core=0, n_labels=0)
        clock.now = 8.0
        monitor.update()  # changed, but within 10 s of the last line: quiet
        stitch.done(1, 0.0, 2.0, tiles=[1, 2])
        stitch.failed(0, "Traceback\nValueError: bad")
        clock.now = 15.0
        monitor.update()
        seg.done(3, 0.0, 1.0, n_core=0, n_labels=0)
        clock.now = 20.0
        monitor.update()  # segment finished: its final line comes at once
        clock.now = 22.0
        monitor.update()
        clock.now = 30.0
    assert out.getvalue().splitlines() == [
        "segment: 1/4 tiles, 0 failed, 0.2 tiles/s, ETA 15 s",
        "segment: 3/4 tiles, 0 failed, 0.2 tiles/s, ETA 5 s",
        "stitch: 2/4 tiles, 1 failed, 0.1 tiles/s, ETA 15 s",
        "segment: 4/4 tiles, 0 failed, 20.0 s, 0.2 tiles/s",
        "stitch: 2/4 tiles, 1 failed, 30.0 s, 0.1 tiles/s",
    ]
    assert monitor.seconds == {"segment": 20.0, "stitch": 30.0}


def test_resumed_tiles_do_not_count_towards_the_rate(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    seg = TaskRecords(run.records("segment"), "segment")
    seg.done(0, 0.0, 1.0, n_core=0, n_labels=0)
    seg.done(1, 0.0, 1.0, n_core=0, n_labels=0)
    out, clock = io.StringIO(), FakeClock()
    with _monitor(run, out, clock, ["segment"]) as monitor:
        seg.done(2, 0.0, 1.0, n_core=0, n_labels=0)
        seg.done(3, 0.0, 1.0, n_core=0, n_labels=0)
        clock.now = 10.0
        monitor.update()
    assert out.getvalue().splitlines() == ["segment: 4/4 tiles, 0 failed, 10.0 s, 0.2 tiles/s"]


def test_monitor_thread_follows_records_written_over_time(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    seg = TaskRecords(run.records("segment"), "segment")
    relabel = TaskRecords(run.records("relabel"), "relabel")
    out = io.StringIO()

    def work() -> None:
        for tile in range(6):
            time.sleep(0.03)
            seg.done(tile, time.time(), 0.03, n_core=0, n_labels=0)
        relabel.done(0, time.time(), 0.1, tiles=[0, 1, 2])
        relabel.done(3, time.time(), 0.1, tiles=[3, 4, 5])

    monitor = Watched(
        run, ["segment", "relabel"], 6, 0.02, interactive=False, interval=0.0, stream=out
    )
    with monitor:
        writer = threading.Thread(target=work)
        writer.start()
        writer.join()
        deadline = time.monotonic() + 5
        while out.getvalue().count("6/6") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # both tasks' final lines come from the thread, unprompted
        assert out.getvalue().count("6/6") == 2
    final = {line.split(":")[0]: line for line in out.getvalue().splitlines() if "6/6" in line}
    assert set(final) == {"segment", "relabel"}
    for task, line in final.items():
        assert re.fullmatch(rf"{task}: 6/6 tiles, 0 failed, \d+\.\d s, \d+\.\d tiles/s", line)
    seen = [int(m.group(1)) for m in re.finditer(r"segment: (\d)/6", out.getvalue())]
    assert seen == sorted(seen) and seen[-1] == 6
    assert set(monitor.seconds) == {"segment", "relabel"}
    assert 0 < monitor.seconds["segment"] <= monitor.seconds["relabel"] < 5


def test_interactive_mode_draws_bars_then_final_lines(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    seg = TaskRecords(run.records("segment"), "segment")
    out, clock = io.StringIO(), FakeClock()
    with Watched(run, ["segment"], 2, interactive=True, stream=out, clock=clock) as monitor:
        seg.done(0, 0.0, 1.0, n_core=0, n_labels=0)
        seg.done(1, 0.0, 1.0, n_core=0, n_labels=0)
        clock.now = 4.0
        monitor.update()
    text = out.getvalue()
    assert "segment" in text and "2/2" in text and "failed=0" in text  # the tqdm bar
    assert text.splitlines()[-1] == "segment: 2/2 tiles, 0 failed, 4.0 s, 0.5 tiles/s"


def test_a_stage_waiting_for_its_upstream_says_so_instead_of_an_eta(tmp_path: Path) -> None:
    """Stitch reads segment's output: while segment runs, its line says what it waits for;
    once segment is done it gets an ETA of its own."""
    run = RunDir(tmp_path)
    seg = TaskRecords(run.records("segment"), "segment")
    stitch = TaskRecords(run.records("stitch"), "stitch")
    out, clock = io.StringIO(), FakeClock()
    ups = {"stitch": ("segment",)}
    kw = {"interactive": False, "interval": 10.0, "stream": out, "clock": clock}
    with Watched(run, ["segment", "stitch"], 4, upstream=ups, **kw) as monitor:
        seg.done(0, 0.0, 1.0, n_core=0, n_labels=0)
        clock.now = 5.0
        monitor.update()
        stitch.done(0, 0.0, 1.0, tiles=[0])
        clock.now = 15.0
        monitor.update()
        for t in (1, 2, 3):
            seg.done(t, 0.0, 1.0, n_core=0, n_labels=0)
        clock.now = 20.0
        monitor.update()
        stitch.done(1, 0.0, 1.0, tiles=[1])
        clock.now = 30.0
        monitor.update()
    assert out.getvalue().splitlines()[:4] == [
        "segment: 1/4 tiles, 0 failed, 0.2 tiles/s, ETA 15 s",
        "stitch: 1/4 tiles, 0 failed, 0.1 tiles/s, waiting for segment",
        "segment: 4/4 tiles, 0 failed, 20.0 s, 0.2 tiles/s",
        "stitch: 2/4 tiles, 0 failed, 0.1 tiles/s, ETA 30 s",
    ]


def test_interactive_bar_of_a_waiting_stage_has_no_eta(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    seg = TaskRecords(run.records("segment"), "segment")
    stitch = TaskRecords(run.records("stitch"), "stitch")
    out, clock = io.StringIO(), FakeClock()
    ups = {"stitch": ("segment",)}
    kw = {"interactive": True, "stream": out, "clock": clock}
    with Watched(run, ["segment", "stitch"], 4, upstream=ups, **kw) as monitor:
        seg.done(0, 0.0, 1.0, n_core=0, n_labels=0)
        stitch.done(0, 0.0, 1.0, tiles=[0])
        clock.now = 4.0
        monitor.update()
        assert "waiting for segment" in out.getvalue()
