"""Segmentation functions used by the benchmarks (importable by worker processes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage as ndi


def noop(block: np.ndarray) -> np.ndarray:
    """Returns background everywhere: measures everything but segmentation."""
    return np.zeros(block.shape[-3:] if block.ndim > 3 else block.shape, dtype=np.uint8)


def cc_label(block: np.ndarray) -> np.ndarray:
    """Threshold at 0.5 and label connected components."""
    return ndi.label(block > 0.5)[0]


def first_channel_label(block: np.ndarray) -> np.ndarray:
    """``cc_label`` of a ``c, y, x`` block's first channel (a SpatialData image's tiles)."""
    return ndi.label(block[0] > 0.5)[0]


def mask(block: np.ndarray) -> np.ndarray:
    """Foreground above the block's mean as label 1: labels in every tile, almost no compute."""
    return (block > block.mean()).astype(np.uint8)


def accelerator(block: np.ndarray, seconds: float) -> np.ndarray:
    """An accelerator-bound fn: ``seconds`` of a GIL-free wait (as a CUDA call releases the
    GIL), then a cheap threshold and labelling, as a network's post-processing."""
    import time

    time.sleep(seconds)
    return ndi.label(block > np.float32(block.mean() + block.std()))[0]


def nothing() -> Callable[[Any], None]:
    """A task's ``process_block_func`` whose blocks do nothing: measures bookkeeping."""
    return _skip


def _skip(block: Any) -> None:
    return None
