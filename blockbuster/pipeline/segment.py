"""Stage 1, segment: run ``fn`` once on a tile plus its halo and stage the labels.

The staged labels are renumbered per tile so that labels present in the core are ``1..n_core``
and labels seen only in the halo follow them. Final IDs are assigned after every tile is
counted (see :mod:`.resolve`), so they are unique across tiles with no cap on tiles
or labels per tile.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fastremap
import numpy as np
import zarr
from numpy.typing import NDArray

from blockbuster.io.boxes import Box, box_slices
from blockbuster.io.sources import read_box
from blockbuster.pipeline.faces import tile_faces, write_faces
from blockbuster.pipeline.plan import TilePlan, TileTask
from blockbuster.pipeline.spec import load_fn, read_spec
from blockbuster.pipeline.stage import any_chunk_stored, open_stage, stage_chunk_file
from blockbuster.pipeline.thumbnail import MapPlane
from blockbuster.run.fingerprint import input_digest
from blockbuster.run.records import TaskRecords
from blockbuster.run.task import Block

SegmentFn = Callable[[NDArray[Any]], Any]


def check_labels(labels: Any, expected_shape: tuple[int, ...]) -> NDArray[Any]:
    """Check what ``fn`` returned and return it as an unsigned integer array.

    Raises
    ------
    ValueError
        If the result is not an integer array of the block's spatial shape with labels >= 0.
    """
    arr = np.asarray(labels)
    if arr.shape != expected_shape:
        raise ValueError(
            f"fn returned shape {arr.shape} for a block of spatial shape {expected_shape}; "
            "fn must return one label per voxel of the block it was given"
        )
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"fn returned dtype {arr.dtype}; labels must be integers (0 = background)")
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() < 0:
        raise ValueError("fn returned negative labels; labels must be >= 0 (0 = background)")
    return arr


def renumber_core_first(
    labels: NDArray[Any], core: tuple[slice, ...], dtype: str = "uint64"
) -> tuple[NDArray[Any], int, int]:
    """Renumber labels so those present in ``core`` are ``1..n_core`` and the rest follow.

    Returns
    -------
    labels : NDArray[Any]
        Renumbered labels of ``dtype``.
    n_core, n_labels : int
        Number of labels present in the core, and in all.
    """
    if not labels.any():  # an empty tile (background only): nothing to renumber
        return np.zeros(labels.shape, dtype=dtype), 0, 0
    whole_core = all(
        (s.start or 0) == 0 and (s.stop is None or s.stop >= n)
        for s, n in zip(core, labels.shape, strict=True)
    )
    if whole_core:  # no halo: every label is in the core; one pass renumbers them 1..n
        out, remap = fastremap.renumber(labels, preserve_zero=True, in_place=False)
        n = len(remap) - (1 if 0 in remap else 0)
        return out.astype(dtype, copy=False), n, n
    in_core = fastremap.unique(labels[core])
    in_core = in_core[in_core != 0]
    everywhere = fastremap.unique(labels)
    everywhere = everywhere[everywhere != 0]
    halo_only = np.setdiff1d(everywhere, in_core, assume_unique=True)
    order = np.concatenate([in_core, halo_only])
    mapping = {int(old): new for new, old in enumerate(order.tolist(), start=1)}
    mapping[0] = 0
    out = fastremap.remap(labels, mapping, preserve_missing_labels=False)
    return out.astype(dtype, copy=False), len(in_core), len(order)


class Segmenter:
    """Segments tiles inside one worker process; holds ``fn`` for the process's lifetime."""

    def __init__(
        self,
        plan: TilePlan,
        image: zarr.Array[Any],
        channel_axes: int,
        stage: zarr.Array[Any],
        records: TaskRecords,
        fn: SegmentFn,
        faces: Path | None = None,
        foreground: NDArray[np.bool_] | None = None,
    ) -> None:
        self.plan = plan
        self.image = image
        self.channel_axes = channel_axes
        self.stage = stage
        self.records = records
        self.fn = fn
        self.faces = faces
        self.foreground = foreground
        self.map_plane = MapPlane.of(plan)
        self.stage_root = Path(stage.store.root)  # type: ignore[attr-defined]

    def __call__(self, index: tuple[int, ...]) -> dict[str, Any]:
        """Segment tile ``index`` and stage its labels; return the facts its record keeps."""
        plan = self.plan
        if self.foreground is not None and not self.foreground[tuple(index)]:
            # outside the mask: never read, never segmented; its labels are background
            return {"n_core": 0, "n_labels": 0, "skipped": True}
        tile = plan.tile_id(index)
        read = plan.read(index)
        if plan.time_axis:  # fn sees one time point: the time axis is dropped
            (t, _), *space = read
            data = read_box(self.image, tuple(space), self.channel_axes - 1, lead=(t,))
            lead = self.channel_axes - 1
        else:
            data = read_box(self.image, read, self.channel_axes)
            lead = self.channel_axes
        digest = input_digest(data)
        self.records.call_started(tile)
        labels = self.fn(data)
        labels = check_labels(labels, data.shape[lead:])
        if self.map_plane.crosses(plan, index):
            self._save_plane(index, data, lead, read[1:] if plan.time_axis else read)
        if plan.time_axis:
            labels = labels[np.newaxis]
        core = box_slices(plan.core(index), origin=[a for a, _ in read])
        labels, n_core, n_labels = renumber_core_first(labels, core, plan.stage_dtype)
        if labels.shape == plan.stage_tile_shape:
            chunk = labels  # an interior tile fills its whole stage chunk
        else:
            chunk = np.zeros(plan.stage_tile_shape, dtype=labels.dtype)
            chunk[box_slices(read, origin=plan.stage_origin(index))] = labels
        if n_labels or self._stored(index):
            self.stage[index] = chunk
        # else: a background-only tile whose stage chunk was never written reads as zeros
        sizes: dict[str, int] = {}
        if n_labels:
            # the sizes let the driver see, with one stat each, that what a done record
            # promises is still whole on disk (a truncated or deleted file means: redo)
            staged = stage_chunk_file(self.stage_root, plan.ndim, index)
            sizes["stage_bytes"] = os.stat(staged).st_size
            if self.faces is not None:  # stitch never reads an empty tile's faces
                path = write_faces(self.faces, tile, tile_faces(plan, index, chunk))
                sizes["faces_bytes"] = os.stat(path).st_size
        return {"n_core": n_core, "n_labels": n_labels, "input": digest, **sizes}

    def _stored(self, index: tuple[int, ...]) -> bool:
        """Whether this tile's stage chunk is on disk (an earlier attempt wrote it)."""
        box = tuple((i, i + 1) for i in index) + tuple((0, s) for s in self.plan.stage_tile_shape)
        return any_chunk_stored(self.stage, box)

    def _save_plane(
        self, index: tuple[int, ...], data: NDArray[Any], lead: int, space: Box
    ) -> None:
        """Save this tile's piece of the block map's plane (channels averaged)."""
        mp = self.map_plane
        z = (mp.z - space[-3][0],) if mp.z is not None else ()
        plane = np.asarray(data[(slice(None),) * lead + z], dtype=np.float32)
        while plane.ndim > 2:
            plane = plane.mean(axis=0)
        piece = mp.piece(self.plan, index, plane, (space[-2][0], space[-1][0]))
        self.records.write_plane(self.plan.tile_id(index), piece)


class SegmentTask(TileTask):
    """segment: one block per tile; ``fn`` runs on the tile plus its halo (read context)."""

    record_fields = {"n_core": int, "n_labels": int}
    uses_gpu = True  # fn is what a GPU serves

    def __init__(self, run_root: str, plan: TilePlan) -> None:
        super().__init__("segment", run_root, plan, (1,) * plan.ndim, plan.overlap)

    def process_block_func(self) -> Callable[[Block], dict[str, Any]]:
        from blockbuster.pipeline.mask import load_tiles
        from blockbuster.run.rundir import RunDir

        run = RunDir(self.run_root)
        spec = read_spec(run)
        foreground = load_tiles(run.foreground_file, spec.mask_digest) if spec.mask else None
        for path in reversed(spec.sys_path):  # where the driver that started the run imports
            if path not in sys.path:
                sys.path.insert(0, path)
        segmenter = Segmenter(
            self.plan,
            spec.source.open(),
            spec.source.channel_axes,
            open_stage(run.stage, mode="r+"),
            run.task_records(self),
            load_fn(run),
            faces=run.faces,
            foreground=foreground,
        )
        return lambda block: segmenter(block.index)

    def damaged(self, records: Mapping[int, Mapping[str, Any]]) -> dict[int, str]:
        from blockbuster.pipeline.verify import damage
        from blockbuster.run.rundir import RunDir

        run = RunDir(self.run_root)
        out = {}
        for tile, record in records.items():
            why = damage(run, self.plan, tile, record)
            if why is not None:
                out[tile] = why
        return out
