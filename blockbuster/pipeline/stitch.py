"""Stage 2, stitch: find which labels of neighbouring tiles are the same object.

Each tile is compared with its upper neighbour along every axis, so every face is compared
exactly once; cost is O(face area) per face. A stitch block handles a group of tiles (see
:meth:`TilePlan.group_shape`) and reads their staged labels, with the upper neighbours, in one
zarr call.

The merge rule
--------------
*With a halo* along an axis (``overlap > 0``), both tiles segmented the slab where their read
regions overlap (``2 * overlap`` thick). They are compared over its middle: the band of
``overlap // 4`` planes (at least one) on each side of the face, across the tiles' cores
(:func:`~blockbuster.pipeline.faces.face_views`), where both tiles saw three quarters of a
halo of context or more beyond every voxel; the outer parts of the slab lie near the edge of
one tile's block, where a fn that needs context (a distance transform, a network) may join or
split objects that it separates in the whole image. For every pair of labels ``(a, b)`` that
share voxels in the band, let ``n`` be the shared voxel count and ``|a|``, ``|b|`` each
label's voxel count inside it. The pair is merged when ``n / min(|a|, |b|) > merge_threshold``.

*Without a halo* (``overlap == 0``), the last plane of the lower tile is compared with the first
plane of the upper one, voxel against touching voxel, with the same rule.

So an object cut by a face ends as one label: both tiles see it in the band and the pair covers
nearly all of the smaller view. Two distinct objects that merely touch across the face stay two
labels, as long as ``fn`` separates them in both tiles' views of the band: stray boundary
voxels of one in the other cover only a small fraction. ``merge_threshold=0`` merges any shared
voxel, which reproduces connected-component labelling exactly for deterministic per-voxel
foreground (e.g. threshold + ``scipy.ndimage.label``); without a halo, touching objects can only
be told apart by that rule, so they merge.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from blockbuster.io.boxes import Box
from blockbuster.pipeline.faces import FacesRef, read_faces
from blockbuster.pipeline.plan import TilePlan, TileTask
from blockbuster.pipeline.spec import read_spec
from blockbuster.run.records import TaskRecords
from blockbuster.run.task import Block, Task, UpstreamNotDone

__all__ = ["StitchTask", "Stitcher", "match_labels"]


def match_labels(a: NDArray[Any], b: NDArray[Any], threshold: float) -> NDArray[Any]:
    """Label pairs of two views of the same voxels that the merge rule joins.

    Parameters
    ----------
    a, b
        Labels of the same voxels from two tiles (0 = background), equal shapes.
    threshold
        ``merge_threshold``: a pair is merged when its shared voxels exceed this fraction of
        the smaller label's voxels in the compared region.

    Returns
    -------
    NDArray[Any]
        ``(n, 2)`` uint64 array of merged ``(label_a, label_b)`` pairs.
    """
    a = a.ravel()
    b = b.ravel()
    both = (a != 0) & (b != 0)
    if not both.any():
        return np.empty((0, 2), dtype=np.uint64)
    pa, pb = a[both].astype(np.uint64), b[both].astype(np.uint64)
    width = np.uint64(int(pb.max()) + 1)
    pairs, n = np.unique(pa * width + pb, return_counts=True)
    la, lb = pairs // width, pairs % width
    if threshold > 0:
        ua, ca = np.unique(a[a != 0], return_counts=True)
        ub, cb = np.unique(b[b != 0], return_counts=True)
        size_a = ca[np.searchsorted(ua, la)]
        size_b = cb[np.searchsorted(ub, lb)]
        keep = n > threshold * np.minimum(size_a, size_b)
        la, lb = la[keep], lb[keep]
    return np.stack([la, lb], axis=1)


class Stitcher:
    """Stitches groups of tiles inside one worker process."""

    def __init__(
        self,
        plan: TilePlan,
        records: TaskRecords,
        threshold: float,
        segments: TaskRecords,
        faces: Path,
    ) -> None:
        self.plan = plan
        self.records = records
        self.threshold = threshold
        self.segments = segments
        self.faces = faces

    def _has_labels(self, tile: int) -> bool:
        """Whether the segment task staged any label for ``tile``.

        Raises
        ------
        UpstreamNotDone
            If ``tile`` has no segment record: the engine counted its block done (a client
            reported it without doing it), so nothing it staged can be trusted; the next pass
            segments it and stitches this block again.
        """
        record = self.segments.record(tile, refresh=False)
        if record is None:
            raise UpstreamNotDone(f"segment tile {tile} has no done record")
        return int(record.get("n_labels", 1)) > 0

    def edges(self, group: Box) -> list[tuple[int, int, int, int]]:
        """Equivalences between each tile of ``group`` and its upper neighbours (table rows)."""
        plan = self.plan
        labelled: dict[int, bool] = {}
        # every segment block this one reads reported done before it was handed out
        self.segments.index.refresh()

        def has_labels(tile: int) -> bool:
            if tile not in labelled:
                labelled[tile] = self._has_labels(tile)
            return labelled[tile]

        # a face can only join labels when both of its tiles have some (large empty
        # backgrounds are common in light-sheet volumes: their faces cost no read)
        todo = [
            (index, axis, nb)
            for index in plan.tiles_in(group)
            if has_labels(plan.tile_id(index))
            for axis, nb in plan.upper_neighbors(index)
            if has_labels(plan.tile_id(nb))
        ]
        rows: list[tuple[int, int, int, int]] = []
        if not todo:
            return rows
        views, lost = self._views_from_faces(todo)
        if lost:
            # the driver checked the faces logs' sizes before stitch ran: these were removed
            # or damaged since. Their tiles are segmented again in the next pass
            for tile in lost:
                self.segments.discard(tile)
            raise UpstreamNotDone(
                f"the faces of tile(s) {', '.join(map(str, lost))} are missing or damaged in "
                f"{self.faces}"
            )
        for (index, _, nb), (a, b) in zip(todo, views, strict=True):
            pairs = match_labels(a, b, self.threshold)
            tile, other = plan.tile_id(index), plan.tile_id(nb)
            rows.extend((tile, int(la), other, int(lb)) for la, lb in pairs.tolist())
        return rows

    def _views_from_faces(
        self, todo: list[tuple[tuple[int, ...], int, tuple[int, ...]]]
    ) -> tuple[list[tuple[NDArray[Any], NDArray[Any]]], list[int]]:
        """Both sides of each face from the segment workers' faces logs, and the tiles whose
        faces could not be read whole."""
        loaded: dict[int, dict[str, NDArray[Any]] | None] = {}

        def side(index: tuple[int, ...], key: str) -> NDArray[Any] | None:
            tile = self.plan.tile_id(index)
            if tile not in loaded:
                record = self.segments.record(tile, refresh=False)
                ref = FacesRef.of(record) if record is not None else None
                loaded[tile] = read_faces(self.faces, ref) if ref is not None else None
            faces = loaded[tile]
            return None if faces is None else faces.get(key)

        views = []
        lost: set[int] = set()
        for index, axis, nb in todo:
            a, b = side(index, f"up{axis}"), side(nb, f"down{axis}")
            if a is None:
                lost.add(self.plan.tile_id(index))
            if b is None:
                lost.add(self.plan.tile_id(nb))
            if a is not None and b is not None:
                views.append((a, b))
        return views, sorted(lost)

    def __call__(self, key: int, group: Box) -> dict[str, Any]:
        """Stitch the tiles of ``group`` (the block ``key``) to their upper neighbours: write
        the edges file and return the facts the block's record keeps."""
        edges = self.edges(group)
        path = self.records.write_edges(key, np.array(edges, dtype=np.int64).reshape(-1, 4))
        # the size lets the driver check the edges with one stat instead of loading them twice
        return {"edges": len(edges), "edges_bytes": os.stat(path).st_size}


class StitchTask(TileTask):
    """stitch: compares each tile's faces with its upper neighbours' and records the label
    pairs that touch; a block reads one tile of context on each side, so it waits for the
    segment blocks of its tiles and their neighbours."""

    record_fields = {"tiles": list, "edges_bytes": int}

    def __init__(self, run_root: str, plan: TilePlan, upstream: Sequence[Task]) -> None:
        # daisy v2 needs the context symmetric to compute the dependencies right; time is
        # never stitched
        context = ((0,) + plan.tile[1:]) if plan.time_axis else plan.tile
        super().__init__("stitch", run_root, plan, plan.group_shape(), context, upstream=upstream)

    def process_block_func(self) -> Callable[[Block], dict[str, Any]]:
        from blockbuster.run.rundir import RunDir

        run = RunDir(self.run_root)
        spec = read_spec(run)
        stitcher = Stitcher(
            self.plan,
            run.task_records(self),
            spec.merge_threshold,
            TaskRecords(run.records("segment"), "segment"),
            run.faces,
        )
        return lambda block: stitcher(block.key, self.tile_group(block))

    def damaged(self, records: Mapping[int, Mapping[str, Any]]) -> dict[int, str]:
        from blockbuster.run.rundir import RunDir

        edges = RunDir(self.run_root).task_records(self)
        out = {}
        for key, record in records.items():
            try:
                size: int | None = os.stat(edges.edges_file(key)).st_size
            except FileNotFoundError:
                size = None
            if size != record.get("edges_bytes"):
                out[key] = "its edges file is missing" if size is None else "its edges are damaged"
        return out
