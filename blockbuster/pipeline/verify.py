"""Verify a run from its run directory, never from what daisy counted.

daisy counts a block as done when a client says so; any process that can reach the task's
server can say so without doing the work. The driver therefore trusts only the run
directory: a block is done when it has a valid done record, and a segment record is honoured
only while the files it promises (the tile's stage chunk at the size it recorded, the byte
range of a faces log it names) are whole on disk. What fails the check is discarded, so the
next pass redoes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blockbuster.io.sources import read_box
from blockbuster.pipeline.faces import FacesRef, log_sizes
from blockbuster.pipeline.plan import TilePlan
from blockbuster.pipeline.spec import read_spec
from blockbuster.pipeline.stage import StageFiles
from blockbuster.run.records import TaskRecords
from blockbuster.run.rundir import RunDir

logger = logging.getLogger("blockbuster")


def damage(
    plan: TilePlan,
    tile: int,
    record: Mapping[str, Any],
    faces_logs: Mapping[str, int],
    stage: StageFiles,
) -> str | None:
    """What is wrong with the files a segment record promises, or None.

    ``faces_logs`` are the faces logs' sizes (:func:`~blockbuster.pipeline.faces.log_sizes`)
    and ``stage`` the stage's files, each read once for many records.
    """
    if record["n_labels"] == 0:
        return None  # nothing staged, no faces: nothing that can go missing
    size = stage.chunk_bytes(plan.tile_index(tile))
    if size is None or size == 0 or size != record.get("stage_bytes"):
        return f"its stage chunk is {'missing' if size is None else 'damaged'}"
    ref = FacesRef.of(record)
    if ref is None:
        return "its record names no faces"
    size = faces_logs.get(ref.log)
    if size is None or size < ref.offset + ref.nbytes:
        return "its faces log is missing" if size is None else "its faces log is cut short"
    return None


def damaged_tiles(run: RunDir, plan: TilePlan) -> dict[int, str]:
    """Tiles whose segment record promises files that are missing or not the recorded size.

    Returns
    -------
    dict
        Tile -> what is wrong, for every tile whose record must not be trusted.
    """
    records = TaskRecords(run.records("segment"), "segment")
    return damaged_records(run, plan, records.done_records())


def damaged_records(
    run: RunDir, plan: TilePlan, records: Mapping[int, Mapping[str, Any]]
) -> dict[int, str]:
    """Of the segment done ``records`` (by tile), those whose files are not whole, with why."""
    logs, stage = log_sizes(run.faces), StageFiles(run.stage, plan)
    bad = {}
    for tile, record in records.items():
        why = damage(plan, tile, record, logs, stage)
        if why is not None:
            bad[tile] = why
    return bad


@dataclass
class InputCheck:
    """What :func:`verify_inputs` found."""

    checked: int = 0
    changed: list[int] = field(default_factory=list)
    unrecorded: list[int] = field(default_factory=list)


def verify_inputs(run: RunDir) -> InputCheck:
    """Read every done tile's input again and compare it with the digest its record holds."""
    from blockbuster.run.fingerprint import input_digest

    spec = read_spec(run)
    plan = spec.plan
    image = spec.source.open()
    records = TaskRecords(run.records("segment"), "segment")
    out = InputCheck()
    for tile, record in sorted(records.done_records().items()):
        if record.get("skipped"):
            continue  # outside the mask: never read
        want = record.get("input")
        if not want:
            out.unrecorded.append(tile)
            continue
        read = plan.read(plan.tile_index(tile))
        if plan.time_axis:
            (t, _), *space = read
            data = read_box(image, tuple(space), spec.source.channel_axes - 1, lead=(t,))
        else:
            data = read_box(image, read, spec.source.channel_axes)
        out.checked += 1
        if input_digest(np.asarray(data)) != want:
            out.changed.append(tile)
    return out
