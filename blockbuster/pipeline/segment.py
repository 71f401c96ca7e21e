"""Stage 1, segment: run ``fn`` once on a tile plus its halo and stage the labels.

The staged labels are renumbered per tile so that labels present in the core are ``1..n_core``
and labels seen only in the halo follow them. Final IDs are assigned after every tile is
counted (see :mod:`.resolve`), so they are unique across tiles with no cap on tiles
or labels per tile.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastremap
import numpy as np
import zarr
from numpy.typing import NDArray

from blockbuster.io.boxes import Box, box_slices
from blockbuster.io.chunks import ChunkCache
from blockbuster.pipeline.faces import FacesLog, tile_faces
from blockbuster.pipeline.plan import TilePlan, TileTask
from blockbuster.pipeline.spec import load_fn, read_spec
from blockbuster.pipeline.stage import StageFiles, open_stage
from blockbuster.pipeline.thumbnail import MapPlane
from blockbuster.run.fingerprint import input_digest
from blockbuster.run.launch import write_worker_state
from blockbuster.run.records import TaskRecords
from blockbuster.run.task import Block

logger = logging.getLogger("blockbuster")

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


class TilesFailed(Exception):
    """Some tiles of a segment block failed; each failure is already in the records.

    Raised after the block's other tiles were done, so that the engine retries the block
    (its done tiles are not run again) or counts it failed.
    """

    #: the failures are in the records already (see :func:`blockbuster.run.blocks.process_block`)
    recorded = True

    def __init__(self, tiles: list[int], last: str) -> None:
        super().__init__(f"tiles {tiles} failed; the last error: {last}")
        self.tiles = tiles


class Segmenter:
    """Segments tiles inside one worker process; holds ``fn`` for the process's lifetime.

    A segment block is a few neighbouring tiles, run as a pipeline of three steps: while
    ``fn`` runs on one tile in the calling thread (where a CUDA context lives; one ``fn``
    call at a time), a reader thread reads the next tile and a writer thread stages the one
    before (renumber, stage chunk, faces, record). At most one tile is being read, one is in
    ``fn`` and one is being written, besides the decoded chunks the block's tiles share.
    """

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
        # zarr compares every chunk it writes with the fill value to skip empty ones, a pass
        # costing several times the encoding; a chunk holding labels is never empty
        self.stage_nonempty = stage.with_config({"write_empty_chunks": True})
        self.records = records
        self.fn = fn
        self.faces = FacesLog(faces) if faces is not None else None
        self.foreground = foreground
        self.map_plane = MapPlane.of(plan)
        self.stage_files = StageFiles(Path(stage.store.root), plan)  # type: ignore[attr-defined]
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="blockbuster-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="blockbuster-write")
        self.cache: ChunkCache | None = None
        # small tiles (a stage shard per block): zarr's cost per call, not the voxels, is what
        # a tile costs, so a block's input is read in one call and its shard written in one
        self.batched = self.stage_files.shard is not None
        if (stage.shards is not None) != self.batched:
            raise RuntimeError(
                f"the stage {stage.store} is {'' if stage.shards else 'not '}sharded, unlike "
                "the one this release plans for the run: finish the run with the release that "
                "started it, or start it again with overwrite=True"
            )
        self._region_tiles: list[tuple[int, ...]] = []
        self._region: tuple[Box, NDArray[Any]] | None = None
        self._pending: list[_Staged] = []

    def close(self) -> None:
        self._reader.shutdown()
        self._writer.shutdown()
        if self.faces is not None:
            self.faces.close()

    # -- one block: a pipeline over its tiles ------------------------------------------------

    def segment_block(self, block: Block, group: Box) -> None:
        """Segment every tile of ``group`` (a box of grid indices) not done yet, recording
        each; raise :class:`TilesFailed` at the end if any failed."""
        plan, records = self.plan, self.records
        first = tuple(a for a, _ in group)
        if self.stage_files.remove_damaged_shard(first):  # the block's tiles share it
            logger.warning("segment block %d: its damaged stage shard was removed", block.key)
            self._discard_shard(group)  # its tiles' records promised what it held
        todo: list[tuple[int, ...]] = []
        records.index.refresh()  # one look at the logs for the whole block
        for index in plan.tiles_in(group):
            tile = plan.tile_id(index)
            if records.is_done(tile, refresh=False):
                continue  # done by an earlier attempt at this block
            if self.foreground is not None and not self.foreground[index]:
                # outside the mask: never read, never segmented; its labels are background
                records.done(tile, time.time(), 0.0, n_core=0, n_labels=0, skipped=True)
                continue
            todo.append(index)
        if not todo:
            return
        if self.batched:
            self._region_tiles, self._region, self._pending = todo, None, []
        else:
            self.cache = self._cache_for(todo)
        failed: list[int] = []
        last = ""
        writing: Future[None] | None = None
        reading = self._reader.submit(self._read, todo[0])
        try:
            for k, index in enumerate(todo):
                tile = plan.tile_id(index)
                started, start = time.time(), time.perf_counter()
                try:
                    data, digest = reading.result()
                except Exception:
                    last = self._fail(tile, failed)
                    data = None
                if k + 1 < len(todo):
                    reading = self._reader.submit(self._read, todo[k + 1])
                if data is None:
                    continue
                # the supervisor names the tile in fn if the worker dies, and times it alone
                write_worker_state({"key": block.key, "tiles": [tile]})
                try:
                    records.call_started(tile)
                    labels = check_labels(self.fn(data), data.shape[self._lead :])
                except Exception:
                    last = self._fail(tile, failed)
                    continue
                finally:
                    # the tiles not known written yet, for the supervisor
                    ahead = [plan.tile_id(i) for i in todo[max(k - 1, 0) :]]
                    write_worker_state({"key": block.key, "tiles": ahead})
                if writing is not None:
                    last = self._wait(writing, failed) or last
                writing = self._writer.submit(
                    self._write, index, data, labels, digest, started, start
                )
                del data, labels
            if writing is not None:
                last = self._wait(writing, failed) or last
                writing = None
            if self.batched:
                last = self._flush(group, failed) or last
        finally:
            if writing is not None:  # the worker is stopping: let the write finish or fail
                self._wait(writing, failed)
            # a read still queued must not fill the next block's region with this one's
            with contextlib.suppress(Exception):
                reading.result()
            self._region, self._pending = None, []
        if failed:
            raise TilesFailed(failed, last)

    def _wait(self, writing: Future[None], failed: list[int]) -> str:
        try:
            writing.result()
        except _WriteFailed as e:
            failed.append(e.tile)
            return e.message
        return ""

    def _fail(self, tile: int, failed: list[int]) -> str:
        text = traceback.format_exc()
        self.records.failed(tile, text)
        failed.append(tile)
        lines = text.strip().splitlines()
        return lines[-1] if lines else ""

    @property
    def _lead(self) -> int:
        return self.channel_axes - 1 if self.plan.time_axis else self.channel_axes

    def _selection(self, index: tuple[int, ...]) -> tuple[int | slice, ...]:
        """What the tile reads from the input array: its time point (dropped), every channel
        and its halo-grown box."""
        read = self.plan.read(index)
        if self.plan.time_axis:  # fn sees one time point: the time axis is dropped
            (t, _), *space = read
            return (t,) + (slice(None),) * self._lead + box_slices(tuple(space))
        return (slice(None),) * self._lead + box_slices(read)

    def _cache_for(self, todo: list[tuple[int, ...]]) -> ChunkCache | None:
        """The worker's chunk cache, made to hold every chunk the block's tiles meet (bounded
        by ``SEGMENT_GROUP_READ_VOXELS`` per channel) and keeping those it already has."""
        if not any(self.plan.overlap):
            return None  # tiles meet no chunk twice
        selections = [self._selection(i) for i in todo]
        if self.cache is None:
            return ChunkCache.for_selections(self.image, selections)
        self.cache.retain(selections)
        return self.cache

    def _read(self, index: tuple[int, ...]) -> tuple[NDArray[Any], str]:
        """The tile's input (its halo included) and the digest its record keeps."""
        if self.batched:
            data = self._from_region(index)
        elif self.cache is not None:
            data = self.cache.read(self._selection(index))
        else:
            data = np.asarray(self.image[self._selection(index)])
        return data, input_digest(data)

    def _space(self, box: Box) -> Box:
        return box[1:] if self.plan.time_axis else box

    def _from_region(self, index: tuple[int, ...]) -> NDArray[Any]:
        """The tile's input cut from its block's input region (read on the first tile)."""
        if self._region is None:
            reads = [self.plan.read(i) for i in self._region_tiles]
            union = tuple(
                (min(r[a][0] for r in reads), max(r[a][1] for r in reads))
                for a in range(self.plan.ndim)
            )
            lead: tuple[int | slice, ...] = (union[0][0],) if self.plan.time_axis else ()
            selection = lead + (slice(None),) * self._lead + box_slices(self._space(union))
            self._region = union, np.asarray(self.image[selection])
        union, region = self._region
        inner = box_slices(self._space(self.plan.read(index)), [a for a, _ in self._space(union)])
        # a copy: fn may write into its input, and the region holds its neighbours' halos
        return region[(slice(None),) * self._lead + inner].copy()

    def _write(
        self,
        index: tuple[int, ...],
        data: NDArray[Any],
        labels: NDArray[Any],
        digest: str,
        started: float,
        start: float,
    ) -> None:
        tile = self.plan.tile_id(index)
        try:
            chunk, info = self._renumbered(index, data, labels)
            info["input"] = digest
            if self.batched:  # stored and recorded with the block's other tiles
                seconds = time.perf_counter() - start
                self._pending.append(_Staged(tile, index, chunk, info, started, seconds))
                return
            info.update(self._store(index, chunk, info["n_labels"]))
            self._sync_faces(info)
            self.records.done(tile, started, time.perf_counter() - start, **info)
        except Exception:
            text = traceback.format_exc()
            self.records.failed(tile, text)
            lines = text.strip().splitlines()
            raise _WriteFailed(tile, lines[-1] if lines else "") from None

    def _renumbered(
        self, index: tuple[int, ...], data: NDArray[Any], labels: NDArray[Any]
    ) -> tuple[NDArray[Any], dict[str, Any]]:
        """The tile's stage chunk (its labels renumbered core first), with its faces saved;
        and the facts its record keeps."""
        plan = self.plan
        read = plan.read(index)
        if self.map_plane.crosses(plan, index):
            self._save_plane(index, data, self._lead, read[1:] if plan.time_axis else read)
        if plan.time_axis:
            labels = labels[np.newaxis]
        core = box_slices(plan.core(index), origin=[a for a, _ in read])
        labels, n_core, n_labels = renumber_core_first(labels, core, plan.stage_dtype)
        if labels.shape == plan.stage_tile_shape:
            chunk = labels  # an interior tile fills its whole stage chunk
        else:
            chunk = np.zeros(plan.stage_tile_shape, dtype=labels.dtype)
            chunk[box_slices(read, origin=plan.stage_origin(index))] = labels
        info: dict[str, Any] = {"n_core": n_core, "n_labels": n_labels}
        if n_labels and self.faces is not None:  # stitch never reads an empty tile's faces
            info.update(self.faces.append(tile_faces(plan, index, chunk)).as_record())
        return chunk, info

    def _store(self, index: tuple[int, ...], chunk: NDArray[Any], n_labels: int) -> dict[str, Any]:
        """Write one tile's stage chunk; return the size its record keeps."""
        files = self.stage_files
        if n_labels:
            self.stage_nonempty[index] = chunk
        elif files.chunk_bytes(index) is not None:
            self.stage[index] = chunk
        # else: a background-only tile whose stage chunk was never written reads as zeros
        files.forget(index)
        return self._stored_size(index) if n_labels else {}

    def _sync_faces(self, *infos: Mapping[str, Any]) -> None:
        if self.faces is not None and any("faces_log" in i for i in infos):
            self.faces.sync()

    def _stored_size(self, index: tuple[int, ...]) -> dict[str, Any]:
        # the size lets the driver see, with one stat or shard index read, that what a done
        # record promises is still whole on disk (missing or resized: redo)
        stored = self.stage_files.chunk_bytes(index)
        if stored is None:
            raise RuntimeError(f"tile {self.plan.tile_id(index)}'s stage chunk was not stored")
        return {"stage_bytes": stored}

    def _flush(self, group: Box, failed: list[int]) -> str:
        """Write the block's shard in one call, then record its staged tiles; return the
        last error line ("" if none)."""
        pending, self._pending = self._pending, []
        if not pending:
            return ""
        files = self.stage_files
        where = box_slices(group)
        try:
            shard = self._earlier_shard(group, {p.tile for p in pending})
            for p in pending:
                shard[tuple(i - a for i, (a, _) in zip(p.index, group, strict=True))] = p.chunk
            self.stage[where] = shard  # background-only chunks are left out of the shard
            files.forget(pending[0].index)
            for p in pending:
                if p.info["n_labels"]:
                    p.info.update(self._stored_size(p.index))
            self._sync_faces(*(p.info for p in pending))
            self.records.done_many([(p.tile, p.started, p.seconds, p.info) for p in pending])
        except Exception:
            text = traceback.format_exc()
            for p in pending:
                self.records.failed(p.tile, text)
                failed.append(p.tile)
            lines = text.strip().splitlines()
            return lines[-1] if lines else ""
        return ""

    def _earlier_shard(self, group: Box, pending: set[int]) -> NDArray[Any]:
        """The block's shard as earlier attempts left it (their tiles are kept), or zeros.

        A shard whose index reads but whose chunks do not decode is removed, with the done
        records of its tiles, so that the next pass segments them again.
        """
        plan, first = self.plan, tuple(a for a, _ in group)
        shape = tuple(b - a for a, b in group) + plan.stage_tile_shape
        if not self.stage_files.file(first).exists():
            return np.zeros(shape, dtype=self.stage.dtype)
        try:
            return np.asarray(self.stage[box_slices(group)])
        except Exception as e:
            logger.warning("the stage shard of tiles %s does not decode (%s); removed", group, e)
            self._discard_shard(group, pending)
            return np.zeros(shape, dtype=self.stage.dtype)

    def _discard_shard(self, group: Box, keep: Collection[int] = ()) -> None:
        """Remove the block's shard and forget the done records of the tiles it held."""
        first = tuple(a for a, _ in group)
        self.stage_files.file(first).unlink(missing_ok=True)
        self.stage_files.forget(first)
        self.records.index.refresh()
        for index in self.plan.tiles_in(group):
            tile = self.plan.tile_id(index)
            record = self.records.record(tile, refresh=False)
            if tile not in keep and record is not None and record.get("n_labels"):
                self.records.discard(tile)

    def _save_plane(
        self, index: tuple[int, ...], data: NDArray[Any], lead: int, space: Box
    ) -> None:
        """Save this tile's piece of the block map (its layer's plane; channels averaged)."""
        mp = self.map_plane
        z = (mp.zs[index[-3]] - space[-3][0],) if mp.layers else ()
        plane = np.asarray(data[(slice(None),) * lead + z], dtype=np.float32)
        while plane.ndim > 2:
            plane = plane.mean(axis=0)
        piece = mp.piece(self.plan, index, plane, (space[-2][0], space[-1][0]))
        self.records.write_plane(self.plan.tile_id(index), piece)


@dataclass
class _Staged:
    """A tile of a batched block, renumbered, waiting for its block's shard to be written."""

    tile: int
    index: tuple[int, ...]
    chunk: NDArray[Any]
    info: dict[str, Any]
    started: float
    seconds: float


class _WriteFailed(Exception):
    def __init__(self, tile: int, message: str) -> None:
        super().__init__(message)
        self.tile, self.message = tile, message


class SegmentTask(TileTask):
    """segment: blocks of a few neighbouring tiles (:meth:`TilePlan.segment_group_shape`);
    ``fn`` runs once on each tile plus its halo (read context), and each tile is recorded on
    its own (``<tile>.json``), so a failed or killed block redoes only its unfinished tiles."""

    record_fields = {"n_core": int, "n_labels": int}
    uses_gpu = True  # fn is what a GPU serves
    unit_records = True

    def __init__(self, run_root: str, plan: TilePlan) -> None:
        super().__init__("segment", run_root, plan, plan.segment_group_shape(), plan.overlap)

    def block_timeout(self, timeout: float) -> float:
        # the supervisor times each tile; the engine's watchdog sees the whole block
        return timeout * math.prod(self.group_tiles)

    def process_block_func(self) -> AbstractContextManager[Callable[[Block], None]]:
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
        task = self

        @contextmanager
        def opened() -> Iterator[Callable[[Block], None]]:
            try:
                yield lambda block: segmenter.segment_block(block, task.tile_group(block))
            finally:
                segmenter.close()

        return opened()

    def damaged(self, records: Mapping[int, Mapping[str, Any]]) -> dict[int, str]:
        from blockbuster.pipeline.verify import damaged_records
        from blockbuster.run.rundir import RunDir

        return damaged_records(RunDir(self.run_root), self.plan, records)
