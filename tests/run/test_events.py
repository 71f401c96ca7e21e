"""The driver's events: what observers see, in order, and that none can fail a run."""

from __future__ import annotations

import logging
from pathlib import Path

from conftest import blobs, write_zarr
from fns import cc_label

from blockbuster import Task, run_tasks
from blockbuster.config import RunConfig
from blockbuster.pipeline.driver import execute_run, prepare_run
from blockbuster.run.events import (
    Event,
    Progress,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
)


def _blocks() -> object:
    return lambda block: None


def test_a_pipeline_run_tells_its_stages_in_order(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "img.zarr", blobs((30, 40), seed=3))
    run, _, _ = prepare_run(src, cc_label, (10, 10), 1, write_to=tmp_path / "o.zarr")
    seen: list[Event] = []
    config = RunConfig(backend="serial", status_page=None)
    result = execute_run(run, config, observers=[seen.append])
    kinds = [type(e).__name__ for e in seen if not isinstance(e, Progress)]
    assert kinds == [
        "RunStarted",
        "StageStarted",  # segment + stitch
        "StageFinished",
        "StageStarted",  # relabel
        "StageFinished",
        "RunFinished",
    ]
    started = [e for e in seen if isinstance(e, StageStarted)]
    assert [[t.name for t in e.tasks] for e in started] == [["segment", "stitch"], ["relabel"]]
    assert all(t.total == 12 and t.unit_name == "tiles" for e in started for t in e.tasks)
    assert isinstance(seen[0], RunStarted) and seen[0].run_dir == run.root
    # the last word on each task: every tile done
    last = {e.task: e.counts for e in seen if isinstance(e, Progress)}
    assert {name: c.num_done for name, c in last.items()} == {
        "segment": 12,
        "stitch": 12,
        "relabel": 12,
    }
    finished = [e for e in seen if isinstance(e, StageFinished)]
    assert all(r.ok for e in finished for r in e.reports.values())
    assert isinstance(seen[-1], RunFinished) and seen[-1].result is result


def test_an_observer_that_fails_costs_a_warning_not_the_run(tmp_path: Path, caplog) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("display gone")

    task = Task("t", (8, 8), 4, _blocks)
    with caplog.at_level(logging.WARNING, logger="blockbuster"):
        result = run_tasks([task], tmp_path / "run", backend="serial", observers=[broken])
    assert result.ok
    assert "display gone" in caplog.text
