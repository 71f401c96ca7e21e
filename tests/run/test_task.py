"""The Task API's geometry against daisy's own block graph, and its argument checks."""

from __future__ import annotations

import daisy
import pytest
from funlib.geometry import Roi
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.run.engines import in_order
from blockbuster.run.task import Block, Task


def _noop() -> object:
    return lambda block: None


@st.composite
def tasks(draw: st.DrawFn) -> Task:
    ndim = draw(st.integers(1, 3))
    offset = tuple(draw(st.integers(-20, 20)) for _ in range(ndim))
    shape = tuple(draw(st.integers(1, 40)) for _ in range(ndim))
    block = tuple(draw(st.integers(1, 15)) for _ in range(ndim))
    context = tuple(draw(st.integers(0, 4)) for _ in range(ndim))
    fit = draw(st.sampled_from(["valid", "overhang", "shrink"]))
    return Task("t", Roi(offset, shape), block, _noop, context=context, fit=fit)


@settings(max_examples=200, deadline=None)
@given(tasks())
def test_blocks_are_the_blocks_daisy_hands_out(task: Task) -> None:
    """Every fit mode: the same read and write ROIs as daisy's block graph, and each block
    found again from the ROIs daisy gives a worker."""
    write = Roi(task.roi.begin, task.block_shape)
    graph = daisy.BlockwiseDependencyGraph(
        "t",
        write.grow(task.context, task.context),
        write,
        False,
        task.fit,
        total_read_roi=task.total_roi,
    )

    def rois(read: Roi, write: Roi) -> tuple[tuple[int, ...], ...]:
        return (tuple(read.begin), tuple(read.shape), tuple(write.begin), tuple(write.shape))

    theirs = {rois(b.read_roi, b.write_roi) for b, _ in graph.enumerate_all_dependencies()}
    ours = task.blocks()
    assert {rois(b.read_roi, b.write_roi) for b in ours} == theirs
    assert len({b.key for b in ours}) == len(ours)  # keys name blocks one to one
    for block in ours:
        assert task.block_of(block.read_roi, block.write_roi) == block


def test_keys_are_c_order_over_the_block_grid() -> None:
    task = Task("t", Roi((10, 0), (20, 30)), (10, 10), _noop)
    assert task.grid == (2, 3)
    assert [b.index for b in task.blocks()] == [(i, j) for i in range(2) for j in range(3)]
    assert [b.key for b in task.blocks()] == list(range(6))
    assert task.blocks()[4] == Block(
        "t", 4, (1, 1), Roi((20, 10), (10, 10)), Roi((20, 10), (10, 10))
    )


def test_a_shape_means_the_region_from_the_origin() -> None:
    assert Task("t", (8, 8), 4, _noop).roi == Roi((0, 0), (8, 8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "a b"}, "name='a b' must be"),
        ({"name": ""}, "name='' must be"),
        ({"block_shape": (4,)}, r"block_shape=\(4,\) must be an int or 2 ints"),
        ({"block_shape": 0}, "block_shape=.* must be positive"),
        ({"context": -1}, "context=.* must be >= 0"),
        ({"fit": "grow"}, "fit='grow' must be 'valid', 'overhang' or 'shrink'"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict, match: str) -> None:
    args = {"name": "t", "roi": (8, 8), "block_shape": 4, "process_block_func": _noop}
    with pytest.raises(ValueError, match=match):
        Task(**{**args, **kwargs})


def test_a_task_without_a_block_function_says_how_to_give_one() -> None:
    with (
        pytest.raises(NotImplementedError, match="pass one, or subclass Task"),
        Task("t", (4,), 2).opened(),
    ):
        pass


def test_order_puts_upstream_first_and_refuses_strangers_and_cycles() -> None:
    a = Task("a", (8,), 4, _noop)
    b = Task("b", (8,), 4, _noop, upstream=[a])
    c = Task("c", (8,), 4, _noop, upstream=[b, a])
    assert [t.name for t in in_order([c, b, a])] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="reads from 'a': it is not among the tasks run"):
        in_order([b])
    with pytest.raises(ValueError, match="distinct names"):
        in_order([a, Task("a", (8,), 4, _noop)])
    x = Task("x", (8,), 4, _noop)
    y = Task("y", (8,), 4, _noop, upstream=[x])
    x.upstream = (y,)
    with pytest.raises(ValueError, match="cycle"):
        in_order([x, y])


def test_a_context_manager_block_function_is_closed_after_the_blocks() -> None:
    from contextlib import contextmanager

    log: list[str] = []

    @contextmanager
    def opened():  # type: ignore[no-untyped-def]
        log.append("open")
        yield lambda block: log.append(f"block {block.key}")
        log.append("close")

    task = Task("t", (8,), 4, opened)
    with task.opened() as fn:
        for block in task.blocks():
            fn(block)
    assert log == ["open", "block 0", "block 1", "close"]
