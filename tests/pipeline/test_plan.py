from __future__ import annotations

import daisy
import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.io.boxes import box_slices
from blockbuster.pipeline import plan as plan_module
from blockbuster.pipeline.plan import TilePlan, normalize_overlap, normalize_tile_shape


@st.composite
def plans(draw: st.DrawFn) -> TilePlan:
    ndim = draw(st.integers(2, 3))
    shape = tuple(draw(st.integers(1, 40)) for _ in range(ndim))
    tile = normalize_tile_shape([draw(st.integers(1, 25)) for _ in range(ndim)], shape)
    overlap = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
    voxel_size = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    offset = tuple(draw(st.integers(-20, 20)) * v for v in voxel_size)
    return TilePlan(shape, tile, overlap, voxel_size, offset)


def test_scalar_overlap_skips_axes_with_single_voxel_tiles() -> None:
    assert normalize_overlap(20, (1, 2048, 2048)) == (0, 20, 20)
    assert normalize_overlap(5, (8, 8)) == (5, 5)
    assert normalize_overlap((3, 0, 2), (1, 8, 8)) == (3, 0, 2)


@pytest.mark.parametrize(
    ("overlap", "message"),
    [
        (-1, "overlap=-1"),
        ((1, 2), "overlap=(1, 2)"),
        ((1, -1, 0), "overlap=(1, -1, 0)"),
        ("x", "overlap"),
    ],
)
def test_bad_overlap_names_the_parameter(overlap: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        normalize_overlap(overlap, (4, 4, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize("tile", [(0, 4), (4,), (4, 4, 4), (2.5, 4)])
def test_bad_tile_shape_names_the_parameter(tile: tuple) -> None:
    with pytest.raises(ValueError, match="tile_shape"):
        normalize_tile_shape(tile, (10, 10))


def test_tile_shape_clips_to_image() -> None:
    assert normalize_tile_shape((64, 256, 256), (10, 100, 300)) == (10, 100, 256)


@settings(max_examples=60, deadline=None)
@given(plans())
def test_cores_partition_the_image_and_reads_are_clipped_halos(plan: TilePlan) -> None:
    cover = np.zeros(plan.shape, dtype=np.int32)
    for index in plan.tiles():
        assert plan.tile_index(plan.tile_id(index)) == index
        core = plan.core(index)
        cover[box_slices(core)] += 1
        read = plan.read(index)
        for (c0, c1), (r0, r1), o, s in zip(core, read, plan.overlap, plan.shape):
            assert r0 == max(c0 - o, 0) and r1 == min(c1 + o, s)
        origin = plan.stage_origin(index)
        for (r0, r1), o0, n in zip(read, origin, plan.stage_tile_shape):
            assert r0 - o0 >= 0 and r1 - o0 <= n
    assert (cover == 1).all()


def _drain(pipeline: object, order: list[str]) -> dict[str, list[daisy.Block]]:
    scheduler = daisy.Scheduler(pipeline)
    seen: dict[str, list[daisy.Block]] = {name: [] for name in order}
    while True:
        progressed = False
        for name in order:
            block = scheduler.acquire_block(name)
            if block is None:
                continue
            progressed = True
            seen[name].append(block)
            block.status = daisy.BlockStatus.SUCCESS
            scheduler.release_block(block)
        if not progressed:
            return seen


@settings(max_examples=40, deadline=None)
@given(plans())
def test_daisy_blocks_are_exactly_the_tiles(plan: TilePlan) -> None:
    """The stages' blocks, as daisy hands them out for the segment + stitch pipeline,
    partition the tiles as ``plan.groups`` says (segment: blocks of
    ``segment_group_shape`` tiles, the read ROI the halo inside the image), in world units."""
    from blockbuster.config import RunConfig
    from blockbuster.pipeline.driver import stage_tasks
    from blockbuster.run.engines import daisy_pipeline
    from blockbuster.run.rundir import RunDir

    run = RunDir("/nonexistent/run")  # nothing runs: the tasks are only scheduled
    segment, stitch, relabel = stage_tasks(run, plan)
    pipeline = daisy_pipeline([segment, stitch], run, RunConfig())
    seen = _drain(pipeline, ["stitch", "segment"])
    vs = Coordinate(plan.voxel_size)
    for task, expected in (
        (segment, plan.groups(plan.segment_group_shape())),
        (stitch, plan.groups()),
    ):
        blocks = [task.block_of(b.read_roi, b.write_roi) for b in seen[task.name]]
        groups = [task.tile_group(b) for b in blocks]
        assert sorted(groups) == sorted(expected), task.name
        tiles = [i for g in groups for i in plan.tiles_in(g)]
        assert sorted(tiles) == sorted(plan.tiles()), task.name
        assert sorted(b.key for b in blocks) == sorted(b.key for b in task.blocks())
        for block, group in zip(blocks, groups):
            core = plan.group_core(group)
            begin = Coordinate(a for a, _ in core) * vs + Coordinate(plan.offset)
            shape = Coordinate(b - a for a, b in core) * vs
            assert block.write_roi == Roi(begin, shape)
            assert task.units(block) == [plan.tile_id(i) for i in plan.tiles_in(group)]
            if task is segment:
                # the read ROI covers the halo wherever it lies inside the image
                grown = Roi(begin, shape).grow(plan.world(plan.overlap), plan.world(plan.overlap))
                assert block.read_roi.intersect(plan.image_roi) == grown.intersect(plan.image_roi)
    assert [b.key for b in relabel.blocks()] == list(range(len(list(plan.groups()))))


@settings(max_examples=100, deadline=None)
@given(plans())
def test_groups_respect_their_limits(plan: TilePlan) -> None:
    """stitch/relabel groups stay within the voxel and tile budgets and keep enough blocks."""
    g = plan.group_shape()
    assert all(1 <= n <= m for n, m in zip(g, plan.grid))
    if g != (1,) * plan.ndim:
        reads = [min(n + 1, m) * s for n, m, s in zip(g, plan.grid, plan.stage_tile_shape)]
        assert np.prod(reads) <= plan_module.GROUP_STAGE_VOXELS
        assert np.prod(g) <= plan_module.GROUP_MAX_TILES
        assert len(list(plan.groups())) >= plan_module.GROUP_MIN_BLOCKS


@settings(max_examples=100, deadline=None)
@given(plans())
def test_segment_groups_respect_their_limits(plan: TilePlan) -> None:
    """segment blocks stay within their tile and read budgets, keep enough blocks, and never
    group time points."""
    g = plan.segment_group_shape()
    assert all(1 <= n <= m for n, m in zip(g, plan.grid))
    if plan.time_axis:
        assert g[0] == 1
    if g != (1,) * plan.ndim:
        span = np.prod([n * t + 2 * o for n, t, o in zip(g, plan.tile, plan.overlap)])
        assert span <= plan_module.SEGMENT_GROUP_READ_VOXELS
        assert np.prod(g) <= plan.segment_group_tiles()
        if plan.segment_group_tiles() > plan_module.SEGMENT_GROUP_TILES:
            assert np.prod(g) * np.prod(plan.stage_tile_shape) <= (
                plan_module.SEGMENT_SMALL_GROUP_VOXELS
            )
        assert len(list(plan.groups(g))) >= plan_module.SEGMENT_MIN_BLOCKS
