"""Segmentation functions the tests hand to worker processes (importable by reference)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

THRESHOLD = 0.5


def cc_label(block: np.ndarray) -> np.ndarray:
    """Deterministic per-voxel threshold + connected components."""
    labels, _ = ndi.label(block > THRESHOLD)
    return labels


def counting_cc_label(block: np.ndarray, calls_dir: str) -> np.ndarray:
    """``cc_label`` that leaves one file per call in ``calls_dir`` (counts across processes)."""
    Path(calls_dir, f"{os.getpid()}-{uuid.uuid4().hex}").write_text(str(block.shape))
    return cc_label(block)


def zeros(block: np.ndarray) -> np.ndarray:
    return np.zeros(block.shape, dtype=np.uint8)


def check_position_encoding(block: np.ndarray, log_dir: str) -> np.ndarray:
    """For images whose voxel value is its flat index + 1: check the block is one real box.

    Writes the block's voxel box (start, stop per axis) to ``log_dir``; raises if the block holds
    anything that is not an image voxel (padding, mirroring) or is not a contiguous box.
    """
    shape = tuple(int(v) for v in Path(log_dir, "shape.txt").read_text().split(","))
    flat = block.astype(np.int64) - 1
    if (flat < 0).any():
        raise AssertionError("fn was given voxels that are not in the image (zero padding)")
    coords = np.unravel_index(flat, shape)
    start = [int(c.min()) for c in coords]
    expected = np.ravel_multi_index(
        np.meshgrid(*[np.arange(s, s + n) for s, n in zip(start, block.shape)], indexing="ij"),
        shape,
    )
    if not np.array_equal(expected, flat):
        raise AssertionError("fn was given a block that is not a contiguous box of the image")
    stop = [s + n for s, n in zip(start, block.shape)]
    Path(log_dir, uuid.uuid4().hex).write_text(f"{start};{stop}")
    return np.ones(block.shape, dtype=np.uint8)


def fail_on_value(block: np.ndarray, bad_value: float) -> np.ndarray:
    """Raise for any block containing ``bad_value``; label like ``cc_label`` otherwise."""
    if (block == bad_value).any():
        raise RuntimeError(f"deliberate failure: block holds {bad_value}")
    return cc_label(block)


def first_channel_cc(block: np.ndarray) -> np.ndarray:
    """Segment channel 0 of a (C, ...) block; requires channel 1 == 2 * channel 0."""
    if block.ndim < 3 or not np.allclose(block[1], 2 * block[0]):
        raise AssertionError("fn did not receive the channel axis intact")
    return cc_label(block[0])


def _first_time(marker_dir: str, name: str) -> bool:
    """True exactly once per (marker_dir, name), across processes."""
    try:
        fd = os.open(Path(marker_dir, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def sigkill_once(block: np.ndarray, marker_dir: str, trigger: float) -> np.ndarray:
    """SIGKILL this worker the first time a block holding ``trigger`` arrives."""
    import signal

    if (block == np.float32(trigger)).any() and _first_time(marker_dir, "killed"):
        os.kill(os.getpid(), signal.SIGKILL)
    return cc_label(block)


def hang_once(block: np.ndarray, marker_dir: str, trigger: float) -> np.ndarray:
    """Hang (far past any timeout) the first time a block holding ``trigger`` arrives."""
    import time

    if (block == np.float32(trigger)).any() and _first_time(marker_dir, "hung"):
        time.sleep(3600)
    return cc_label(block)


def slow_logged(block: np.ndarray, calls_dir: str, delay: float) -> np.ndarray:
    """Log each call under the block's content hash, then label after ``delay`` seconds."""
    import hashlib
    import time

    key = hashlib.sha1(np.ascontiguousarray(block).tobytes()).hexdigest()
    Path(calls_dir, f"{key}.{uuid.uuid4().hex}").touch()
    time.sleep(delay)
    return cc_label(block)


def fail_while_flag(block: np.ndarray, flag: str, bad_value: float, calls_dir: str) -> np.ndarray:
    """Fail for blocks holding ``bad_value`` while the file ``flag`` exists; log every call."""
    Path(calls_dir, uuid.uuid4().hex).write_text(str(float(block.max())))
    if Path(flag).exists() and (block == np.float32(bad_value)).any():
        raise RuntimeError("deliberate failure until the flag is removed")
    return cc_label(block)


def logged_loads(block: np.ndarray, fn, log_dir: str) -> np.ndarray:
    """Run a Cellpose fn and log this process's model-load count after the call."""
    import blockbuster.plugins.cellpose as plugin

    labels = fn(block)
    Path(log_dir, uuid.uuid4().hex).write_text(f"{os.getpid()} {plugin.LOADS}")
    return labels


class GpuEnvLogger:
    """A fn that declares its GPU working set and logs the worker's GPU environment."""

    bytes_per_voxel = 1000

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def __call__(self, block: np.ndarray) -> np.ndarray:
        env = [os.environ.get(v, "-") for v in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")]
        Path(self.log_dir, uuid.uuid4().hex).write_text(" ".join([*env, str(block.shape)]))
        return cc_label(block)


def bad_result(block: np.ndarray, kind: str, bad_value: float) -> np.ndarray:
    """Threshold + label, except on the tile holding ``bad_value``: a wrong result of ``kind``."""
    labels = cc_label(block)
    if not np.any(block == bad_value):
        return labels
    if kind == "shape":
        return labels[..., :-1]
    if kind == "float":
        return labels.astype(np.float32)
    if kind == "negative":
        return labels.astype(np.int64) - 1
    raise ValueError(kind)


def huge_ids(block: np.ndarray) -> np.ndarray:
    """Threshold + label with IDs near the top of uint64 (sparse, far beyond uint32)."""
    labels = cc_label(block).astype(np.uint64)
    return np.where(labels > 0, np.uint64(2**64 - 2**20) + labels * np.uint64(977), 0)


def fill_disk_once(block: np.ndarray, armed: str, filler: str, trigger: float) -> np.ndarray:
    """Threshold + label; while ``armed`` exists, the block holding ``trigger`` fills the disk
    of ``filler`` (once)."""
    if os.path.exists(armed) and not os.path.exists(filler) and np.any(block == trigger):
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
    return cc_label(block)


def cc_label_ndim(block: np.ndarray, ndim: int) -> np.ndarray:
    """``cc_label``, after checking that ``block`` has ``ndim`` axes (fn never sees time)."""
    if block.ndim != ndim:
        raise ValueError(f"fn got a {block.ndim}-D block, expected {ndim}-D")
    return cc_label(block)


def sigstop_once(block: np.ndarray, marker_dir: str, trigger: float) -> np.ndarray:
    """Freeze this worker (SIGSTOP) the first time a block holding ``trigger`` arrives."""
    import signal

    if (block == np.float32(trigger)).any() and _first_time(marker_dir, "stopped"):
        os.kill(os.getpid(), signal.SIGSTOP)
    return cc_label(block)


def exit_once(block: np.ndarray, marker_dir: str, trigger: float, how: str) -> np.ndarray:
    """End this worker without a Python exception (``os._exit(0)`` or a SIGSEGV) the first
    time a block holding ``trigger`` arrives."""
    import signal

    if (block == np.float32(trigger)).any() and _first_time(marker_dir, how):
        if how == "exit0":
            os._exit(0)
        os.kill(os.getpid(), signal.SIGSEGV)
    return cc_label(block)


def always_sigkill(block: np.ndarray, trigger: float) -> np.ndarray:
    """SIGKILL this worker for every block holding ``trigger`` (a tile that always OOMs)."""
    import signal

    if (block == np.float32(trigger)).any():
        os.kill(os.getpid(), signal.SIGKILL)
    return cc_label(block)


# -- user tasks (blockbuster.Task): opened once per worker, then called per block ---------------


def smooth_blocks(
    src: str, dst: str, sigma: float, calls_dir: str, flag: str | None = None, pause: float = 0.0
) -> Callable[[Any], dict[str, Any]]:
    """A Gaussian smoothing task's block function: reads the block's read ROI (clipped to the
    image), writes its write ROI. Logs every call; fails blocks while ``flag`` exists (those
    whose key is odd); sleeps ``pause`` seconds first."""
    import zarr
    from funlib.geometry import Roi

    source = zarr.open_array(src, mode="r")
    target = zarr.open_array(dst, mode="r+")
    image = Roi((0,) * source.ndim, source.shape)

    def block(b: Any) -> dict[str, Any]:
        Path(calls_dir, f"{b.task}.{b.key}.{uuid.uuid4().hex}").touch()
        time.sleep(pause)
        if flag is not None and Path(flag).exists() and b.key % 2:
            raise RuntimeError("deliberate failure until the flag is removed")
        read = b.read_roi.intersect(image)
        data = np.asarray(source[read.to_slices()], dtype=np.float64)
        out = ndi.gaussian_filter(data, sigma, truncate=4.0)
        write = b.write_roi.intersect(image)
        inner = (write - read.begin).to_slices()
        target[write.to_slices()] = out[inner]
        return {"mean": float(out[inner].mean())}

    return block


def threshold_blocks(src: str, dst: str, level: float, calls_dir: str) -> Callable[[Any], None]:
    """A task reading another task's output: 1 where it exceeds ``level``."""
    import zarr

    source = zarr.open_array(src, mode="r")
    target = zarr.open_array(dst, mode="r+")

    def block(b: Any) -> None:
        Path(calls_dir, f"{b.task}.{b.key}.{uuid.uuid4().hex}").touch()
        sl = b.write_roi.to_slices()
        target[sl] = (np.asarray(source[sl]) > level).astype(np.uint8)

    return block


def log_thread(block: np.ndarray, log_dir: str) -> np.ndarray:
    """``cc_label`` that records the name of the thread it runs in."""
    import threading

    Path(log_dir, uuid.uuid4().hex).write_text(threading.current_thread().name)
    return cc_label(block)


def log_process(block: np.ndarray, log_dir: str) -> np.ndarray:
    """``cc_label`` that logs its worker process: pid, session, parent's command line, the
    legacy numpy generator's next draw (which must differ between workers) and whether
    SIGPIPE and SIGINT are set as a fresh interpreter sets them."""
    import signal

    parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    fresh = signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    draw = str(np.random.randint(2**31))  # noqa: NPY002
    info = [str(os.getpid()), str(os.getsid(0)), draw, parent, str(fresh)]
    Path(log_dir, f"{os.getpid()}-{uuid.uuid4().hex}").write_text("\t".join(info))
    return cc_label(block)
