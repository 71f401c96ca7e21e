"""Relabel blocks: background-only tiles read nothing yet always leave zeros behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import CountingReads, write_zarr
from fns import cc_label
from serial import run_in_process

from blockbuster.io.sources import open_array
from blockbuster.pipeline.driver import prepare_run
from blockbuster.pipeline.relabel import Relabeler
from blockbuster.pipeline.stage import any_chunk_stored, open_stage
from blockbuster.pipeline.table import EquivalenceTable
from blockbuster.run.records import TaskRecords


def test_background_blocks_skip_the_stage_and_clear_stale_output(tmp_path: Path) -> None:
    img = np.zeros((16, 64), np.float32)
    img[2:6, 3:9] = 1.0  # one object, in the first tile only
    src = write_zarr(tmp_path / "img.zarr", img)
    run, spec, _ = prepare_run(
        src,
        cc_label,
        (8, 8),
        1,
        write_to=tmp_path / "out.zarr",
        sequential_labels=True,
        merge_threshold=0.0,
        overwrite=True,
    )
    out, num = run_in_process(run)
    assert num == 1 and (out == 1).sum() == img.sum()
    # relabel again, as a resumed run would, over an output an earlier attempt left dirty
    output = open_array(spec.output_store, spec.output_path, mode="r+")
    output[12:16, 56:64] = 9
    assert not any_chunk_stored(output, ((8, 16), (0, 56)))  # background never written
    for record in run.records("relabel").glob("log.*.jsonl"):
        record.unlink()  # the driver forgets relabel's records before it relabels again
    plan = spec.plan
    records = TaskRecords(run.records("relabel"), "relabel")
    table = EquivalenceTable(run.table, readonly=True)
    handler = Relabeler(plan, open_stage(run.stage), table, output, spec.sequential_labels, records)
    counting = CountingReads(handler.stage)
    handler.stage = counting  # type: ignore[assignment]
    groups = list(plan.groups())
    for group in groups:
        handler(group)
    np.testing.assert_array_equal(output[:], out)
    assert 0 < counting.reads < len(groups)  # only blocks holding labels read the stage


def test_relabel_into_a_fresh_output_writes_no_background_chunks(tmp_path: Path) -> None:
    img = np.zeros((8, 40), np.float32)
    img[:, 30:] = 1.0
    src = write_zarr(tmp_path / "img.zarr", img)
    run, spec, _ = prepare_run(
        src,
        cc_label,
        (8, 8),
        0,
        write_to=tmp_path / "out.zarr",
        sequential_labels=True,
        merge_threshold=0.0,
        overwrite=True,
    )
    out, num = run_in_process(run)
    assert num == 1
    output = open_array(spec.output_store, spec.output_path)
    assert not any_chunk_stored(output, ((0, 8), (0, 24)))
    assert any_chunk_stored(output, ((0, 8), (24, 40)))
