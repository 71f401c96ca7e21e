"""Stage 3, relabel: write each tile's final labels into the output.

For each tile a worker loads only that tile's resolution (two integers and the tile's merged
labels), builds a lookup table of ``n_core + 1`` entries and applies it to the tile's core. A
block handles a group of tiles: one zarr read of their staged labels, one write of their cores
(whole output chunks, since the output is chunked by tile).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from blockbuster.io.boxes import Box, box_slices
from blockbuster.pipeline.plan import TilePlan, TileTask
from blockbuster.pipeline.spec import read_spec
from blockbuster.pipeline.stage import StageFiles, any_chunk_stored
from blockbuster.pipeline.table import EquivalenceTable
from blockbuster.pipeline.thumbnail import MapPlane
from blockbuster.run.records import TaskRecords
from blockbuster.run.task import Block


def tile_lookup(
    base: int, shift: int, n_core: int, rows: NDArray[Any], sequential: bool
) -> NDArray[Any]:
    """Lookup table from a tile's local core labels to final IDs.

    Parameters
    ----------
    base, shift, n_core
        The tile's row of the resolution (see :mod:`blockbuster.pipeline.resolve`).
    rows
        ``(label, final, absorbed)`` for the tile's merged labels.
    sequential
        Whether IDs are made gap-free.
    """
    local = np.arange(n_core + 1, dtype=np.uint64)
    lut = local + np.uint64(base)
    if sequential and n_core:
        absorbed = np.zeros(n_core + 1, dtype=np.uint64)
        absorbed[rows[rows[:, 2] == 1, 0]] = 1
        # absorbed IDs of this tile below each label, plus those of earlier tiles
        lut -= np.uint64(shift) + np.cumsum(absorbed) - absorbed
    if len(rows):
        lut[rows[:, 0]] = rows[:, 1].astype(np.uint64)
    lut[0] = 0
    return lut


class Relabeler:
    """Relabels tiles inside one worker process."""

    def __init__(
        self,
        plan: TilePlan,
        stage: zarr.Array[Any],
        table: EquivalenceTable,
        output: zarr.Array[Any],
        sequential: bool,
        records: TaskRecords,
    ) -> None:
        self.plan = plan
        self.stage = stage
        self.table = table
        self.output = output
        # zarr compares each chunk it writes with the fill value (a pass costing several
        # times the encoding); the cores of tiles with labels are never empty
        self.output_nonempty = output.with_config({"write_empty_chunks": True})
        self.sequential = sequential
        self.records = records
        self.map_plane = MapPlane.of(plan)
        self.stage_root = Path(stage.store.root)  # type: ignore[attr-defined]
        self.stage_files = StageFiles(self.stage_root, plan)

    def __call__(self, group: Box) -> None:
        """Write the final labels of the tiles of ``group`` (a box of grid indices)."""
        plan = self.plan
        indices = list(plan.tiles_in(group))
        tiles = [plan.tile_id(index) for index in indices]
        resolutions = [self.table.tile_resolution(tile) for tile in tiles]
        for index, tile, (_, _, n_core, _) in zip(indices, tiles, resolutions, strict=True):
            # a tile with labels reads as zeros where its stage chunk went missing: never
            # write those holes as if they were the tile's labels
            if n_core and self.stage_files.chunk_bytes(index) is None:
                raise RuntimeError(
                    f"the stage chunk of tile {tile} is missing from {self.stage_root}; "
                    "run the same call again to segment the tile anew"
                )
        out_box = plan.group_core(group)
        shape = tuple(b - a for a, b in out_box)
        if not any(n_core for _, _, n_core, _ in resolutions):
            # background only: no staged labels to read (zeros are still written, so the
            # output holds nothing from any earlier attempt)
            staged = None
            out = np.zeros(shape, dtype=self.output.dtype)
        else:
            staged = np.asarray(self.stage[box_slices(group)])
            out = np.empty(shape, dtype=self.output.dtype)
        first = tuple(a for a, _ in group)
        for index, tile, (base, shift, n_core, rows) in zip(
            indices, tiles, resolutions, strict=True
        ):
            core_box = plan.core(index)
            if staged is not None:
                rel = tuple(i - a for i, a in zip(index, first, strict=True))
                core = staged[rel][box_slices(core_box, plan.stage_origin(index))]
                lut = tile_lookup(base, shift, n_core, rows, self.sequential)
                # cast the small table, not the tile: indexing then moves half the bytes
                final = np.take(lut.astype(out.dtype, copy=False), core)
                out[box_slices(core_box, [a for a, _ in out_box])] = final
            else:
                final = out[box_slices(core_box, [a for a, _ in out_box])]
            mp = self.map_plane
            if mp.crosses(plan, index):
                head = mp.head(plan, index)
                plane = final[tuple(h - a for h, (a, _) in zip(head, core_box, strict=False))]
                origin = (core_box[-2][0], core_box[-1][0])
                self.records.write_plane(tile, mp.piece(plan, index, plane, origin))
        if all(n_core for _, _, n_core, _ in resolutions):
            self.output_nonempty[box_slices(out_box)] = out
        elif staged is not None or any_chunk_stored(self.output, out_box):
            self.output[box_slices(out_box)] = out
        # else: background only, and nothing stored there: the output already reads as zeros


class RelabelTask(TileTask):
    """relabel: writes each tile's core with its final labels, read from the resolved
    equivalence table."""

    record_fields = {"tiles": list}

    def __init__(self, run_root: str, plan: TilePlan) -> None:
        super().__init__("relabel", run_root, plan, plan.group_shape(), (0,) * plan.ndim)

    def process_block_func(self) -> Callable[[Block], None]:
        from blockbuster.io.sources import open_array
        from blockbuster.pipeline.stage import open_stage
        from blockbuster.run.rundir import RunDir

        run = RunDir(self.run_root)
        spec = read_spec(run)
        relabeler = Relabeler(
            self.plan,
            open_stage(run.stage),
            EquivalenceTable(run.table, readonly=True),
            open_array(spec.output_store, spec.output_path, mode="r+"),
            spec.sequential_labels,
            run.task_records(self),
        )
        return lambda block: relabeler(self.tile_group(block))
