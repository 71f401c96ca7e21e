"""Run a prepared run directory's handlers in this process, tile by tile, without daisy.

Tests use it to check the stage/stitch/resolve/relabel logic on many random cases quickly; the
daisy path is covered by test_driver.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blockbuster.io.outputs import create_output
from blockbuster.io.sources import open_array
from blockbuster.pipeline.resolve import resolve
from blockbuster.pipeline.table import EquivalenceTable
from blockbuster.pipeline.verify import block_keys
from blockbuster.run.ownership import mark_output
from blockbuster.run.records import TaskRecords
from blockbuster.run.rundir import RunDir
from blockbuster.worker import make_handler


def run_in_process(run: RunDir) -> tuple[np.ndarray, int]:
    for task in ("segment", "stitch"):
        plan, _, handle = make_handler(run, task)
        for group in plan.groups(task):
            handle(group)
    spec = run.read_spec()
    seg = TaskRecords(run.records("segment"), "segment").done_records()
    with EquivalenceTable(run.table) as table:
        table.replace_tiles((t, r["n_core"], r["n_labels"]) for t, r in sorted(seg.items()))
        stitch = TaskRecords(run.records("stitch"), "stitch")
        table.replace_edges(stitch.edges(sorted(block_keys(spec.plan, "stitch"))))
        resolution = resolve(table, spec.plan.num_tiles, spec.sequential_labels)
    create_output(Path(spec.output_store), spec.source, spec.plan, "uint32")
    mark_output(Path(spec.output_store), run_id=spec.run_id, complete=True)
    plan, _, handle = make_handler(run, "relabel")
    for group in plan.groups("relabel"):
        handle(group)
    return open_array(spec.output_store, spec.output_path)[:], resolution.num_labels
