from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from blockbuster.pipeline.spec import read_spec


def blobs(shape: tuple[int, ...], sigma: float = 2.0, seed: int = 0) -> np.ndarray:
    """Smooth random field in [0, 1]: thresholding at 0.5 gives irregular blobs."""
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.random(shape), sigma)
    lo, hi = img.min(), img.max()
    return ((img - lo) / (hi - lo + 1e-12)).astype(np.float32)


def write_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> str:
    arr = zarr.create_array(
        str(path), shape=data.shape, chunks=chunks or data.shape, dtype=data.dtype, overwrite=True
    )
    arr[:] = data
    return str(path)


def assert_one_to_one(expected: np.ndarray, actual: np.ndarray) -> None:
    """Labels agree up to renaming: same background, and a bijection between label sets."""
    assert expected.shape == actual.shape
    np.testing.assert_array_equal(expected == 0, actual == 0)
    fg = expected != 0
    pairs = np.unique(np.stack([expected[fg], actual[fg]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "a whole-image label was split"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "two whole-image labels were merged"


class CountingReads:
    """Wraps an array (the stage) and counts the reads made through it."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.reads = 0

    def __getitem__(self, key: Any) -> Any:
        self.reads += 1
        return self.array[key]


@pytest.fixture
def blob_volume(tmp_path: Path) -> tuple[str, np.ndarray]:
    img = blobs((30, 47, 53))
    return write_zarr(tmp_path / "img.zarr", img, chunks=(16, 16, 16)), img


def fake_nvml(monkeypatch: pytest.MonkeyPatch, free: list[int] | dict[str, int]) -> None:
    """Make nvidia-ml-py answer as a machine with these GPUs (free bytes by index or UUID).

    A list gives GPUs 0..n-1; a dict maps index strings or UUIDs to free bytes, and NVML counts
    its integer keys. CUDA_VISIBLE_DEVICES is removed unless the test sets it afterwards.
    """
    import pynvml

    table = {str(i): f for i, f in enumerate(free)} if isinstance(free, list) else dict(free)

    def by_key(key: str) -> str:
        if key not in table:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return key

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: sum(k.isdigit() for k in table))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: by_key(str(i)))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", by_key)
    monkeypatch.setattr(
        pynvml,
        "nvmlDeviceGetMemoryInfo",
        lambda h: SimpleNamespace(free=table[h], total=2**40),
    )


def run_stage(run: Any, name: str, indices: list[tuple[int, ...]] | None = None) -> Any:
    """Run the blocks of one pipeline stage of a prepared run here (all, or those at the
    given block-grid ``indices``); return the stage's records."""
    from blockbuster.pipeline.driver import stage_tasks
    from blockbuster.run.blocks import process_block

    tasks = {t.name: t for t in stage_tasks(run, read_spec(run).plan)}
    task = tasks[name]
    run.write_tasks([task])
    records = run.task_records(task)
    with task.opened() as fn:
        blocks = task.blocks() if indices is None else [task.block_at(i) for i in indices]
        for block in blocks:
            process_block(task, fn, records, block)
    return records
