"""GPU tile sizing from free VRAM (``nvidia-ml-py``, extra ``blockbuster-seg[gpu]``).

With ``tile_process(use_gpu=True)`` the tile shape is the largest one, no bigger than the one
asked for, whose working set (tile plus halo, times the fn's bytes per voxel) fits in half the
free memory of the smallest visible GPU. Without ``nvidia-ml-py`` (or without a driver), 8 GiB
free is assumed and a warning is given once.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: assumed free VRAM when it cannot be read
DEFAULT_FREE_BYTES = 8 * 1024**3
#: working-set estimate per voxel for fns that do not declare ``bytes_per_voxel``
DEFAULT_BYTES_PER_VOXEL = 400

_warned = False


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        warnings.warn(
            f"cannot read free GPU memory ({reason}); assuming 8 GiB. Install it with "
            'pip install "blockbuster-seg[gpu]" for sizing to your card',
            RuntimeWarning,
            stacklevel=3,
        )
        _warned = True


def visible_devices() -> list[str] | None:
    """The devices ``CUDA_VISIBLE_DEVICES`` leaves visible, as written there; None if unset.

    CUDA stops at the first entry it cannot use, so does this: ``"-1"`` or ``""`` hides every
    device. Schedulers (SLURM, LSF) set the variable to a job's GPUs; workers must then be
    given those entries, not NVML's indices of every GPU in the machine.
    """
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    devices: list[str] = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        devices.append(entry)
    return devices


@dataclass(frozen=True)
class GPUs:
    """The GPUs a run may use."""

    devices: tuple[str, ...]
    """One ``CUDA_VISIBLE_DEVICES`` value per GPU, to pin one worker to it."""
    free: tuple[int, ...]
    """Free bytes per GPU (``DEFAULT_FREE_BYTES`` where unmeasured); never empty."""
    measured: bool
    """Whether ``free`` was read from NVML."""


def gpu_worker_env(devices: Sequence[str], number: int) -> dict[str, str]:
    """Environment of GPU worker ``number``: one thread for OpenMP/MKL/BLAS, and
    ``CUDA_VISIBLE_DEVICES`` set to ``devices[number % len(devices)]`` when there are any."""
    env = {var: "1" for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = devices[number % len(devices)]
    return env


def _handle(pynvml: Any, device: str) -> Any:
    if device.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(device))
    return pynvml.nvmlDeviceGetHandleByUUID(device)


def find_gpus() -> GPUs:
    """The visible GPUs and their free memory.

    Devices are those of ``CUDA_VISIBLE_DEVICES`` where it is set, else every GPU NVML counts.
    Without ``nvidia-ml-py`` or a driver, 8 GiB free is assumed (warned once) and the devices
    are those of ``CUDA_VISIBLE_DEVICES`` (none when it is unset: workers are left unpinned).
    """
    visible = visible_devices()
    assumed = GPUs(tuple(visible or ()), (DEFAULT_FREE_BYTES,), False)
    try:
        import pynvml
    except ImportError:
        _warn_once("nvidia-ml-py is not installed")
        return assumed
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        _warn_once(f"NVML: {e}")
        return assumed
    try:
        devices = (
            visible if visible is not None else [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        )
        free = [int(pynvml.nvmlDeviceGetMemoryInfo(_handle(pynvml, d)).free) for d in devices]
    except pynvml.NVMLError as e:
        _warn_once(f"NVML: {e}")
        return assumed
    finally:
        pynvml.nvmlShutdown()
    if not free:
        _warn_once("no GPU is visible")
        return assumed
    return GPUs(tuple(devices), tuple(free), True)


def bytes_per_voxel(fn: Any) -> int:
    """The fn's declared working set per voxel (``fn.bytes_per_voxel``) or the default."""
    value = getattr(fn, "bytes_per_voxel", None)
    return int(value) if value else DEFAULT_BYTES_PER_VOXEL


def size_tile(
    tile_shape: Sequence[int], overlap: Sequence[int], per_voxel: int, free_bytes: int
) -> tuple[int, ...]:
    """Shrink ``tile_shape`` until ``(tile + 2*overlap) * per_voxel <= free_bytes / 2``.

    The longest axis is shrunk by 10% at a time, so tiles stay as cubic (or square in-plane)
    as the request allows and end within 10% of the largest that fits.

    Raises
    ------
    ValueError
        If even a one-voxel tile with its halo does not fit.
    """
    budget = free_bytes // 2
    tile = [int(t) for t in tile_shape]

    def need(t: list[int]) -> int:
        return math.prod(a + 2 * o for a, o in zip(t, overlap, strict=True)) * per_voxel

    while need(tile) > budget:
        axis = max(range(len(tile)), key=lambda i: tile[i])
        if tile[axis] == 1:
            raise ValueError(
                f"overlap={tuple(overlap)} alone needs {need(tile) / 2**30:.1f} GiB at "
                f"{per_voxel} bytes/voxel, more than half the free GPU memory "
                f"({free_bytes / 2**30:.1f} GiB); reduce overlap"
            )
        tile[axis] = max(1, min(int(tile[axis] * 0.9), tile[axis] - 1))
    return tuple(tile)
