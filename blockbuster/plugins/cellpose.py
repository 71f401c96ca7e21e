"""Cellpose as a blockbuster ``fn`` (optional extra: ``pip install "blockbuster[cellpose]"``).

:func:`cellpose_fn` checks the model before any block runs and returns a picklable callable
that loads the model once per worker process, on first use, and segments each block with it.

Weights are never downloaded here. Cellpose itself, given a built-in model name whose file is
missing, downloads it (``urlopen`` without a timeout, which can hang a worker forever on a
cluster node without internet), and given an unknown name or a missing path, only warns and
falls back to its default model. So a name must already be in Cellpose's model folder and a
path must exist; anything else is a clear error naming where the file belongs.

Supports cellpose 3.x (``"cyto3"``, ``"nuclei"``, ...) and 4.x (``"cpsam_v2"``, ``"cpsam"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: Rough GPU memory per voxel of one tile (input plus halo) during a Cellpose evaluation:
#: the float32 network input, 3 flow/probability channels, the U-net's widest feature maps
#: at full resolution (32 channels) and test-time augmentation tiles. Used by
#: ``tile_process(use_gpu=True)`` to size tiles; measured peaks of cyto3 on 2D tiles stayed
#: below it.
BYTES_PER_VOXEL = 400

_MODELS: dict[tuple[str, bool], Any] = {}
#: how many models this process has built (tests read it to check one load per process)
LOADS = 0


def _cellpose_models() -> Any:
    try:
        from cellpose import models
    except ImportError:
        raise ImportError(
            'cellpose_fn needs Cellpose: pip install "blockbuster[cellpose]" (install torch '
            "for your GPU or CPU first)"
        ) from None
    return models


def cellpose_major() -> int:
    """The installed Cellpose's major version (3 or 4)."""
    from importlib.metadata import version

    _cellpose_models()  # a clear error when Cellpose is missing
    return int(version("cellpose").split(".")[0])


def default_model() -> str:
    """The default built-in model of the installed Cellpose (``cyto3``, or ``cpsam_v2``)."""
    if cellpose_major() < 4:
        return "cyto3"
    names = list(getattr(_cellpose_models(), "MODEL_NAMES", ["cpsam"]))
    return str(names[0])


def model_dir() -> Path:
    """The folder Cellpose reads built-in models from (``CELLPOSE_LOCAL_MODELS_PATH``)."""
    return Path(_cellpose_models().MODEL_DIR)


def _builtin_file(name: str) -> str:
    # cellpose names the files of its oldest models with a "torch_0" suffix
    return f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name


def resolve_model(model: str | os.PathLike[str]) -> Path:
    """The weights file for ``model`` (a built-in name or a path), checked to exist.

    Raises
    ------
    FileNotFoundError
        If the path does not exist, or the named model's file is not in Cellpose's folder.
    ValueError
        If ``model`` is neither an existing path nor a Cellpose model name.
    """
    text = os.fspath(model)
    path = Path(text).expanduser()
    looks_like_path = os.sep in text or "/" in text or path.suffix != ""
    if path.is_file():
        return path.absolute()
    if looks_like_path:
        raise FileNotFoundError(
            f"cellpose_fn(model={text!r}): no weights file there; pass the path of a Cellpose "
            "model file, or a built-in model name such as 'cyto3', 'nuclei' or 'cpsam'"
        )
    models = _cellpose_models()
    folder = Path(models.MODEL_DIR)
    candidate = folder / _builtin_file(text)
    if candidate.is_file():
        return candidate
    names = list(getattr(models, "MODEL_NAMES", []))
    if text not in names:
        raise ValueError(
            f"cellpose_fn(model={text!r}) is not a Cellpose model name ({', '.join(names[:6])}, "
            f"...) nor a file in {folder}; pass a built-in name or a weights file path"
        )
    raise FileNotFoundError(
        f"cellpose_fn(model={text!r}): {candidate} does not exist and blockbuster never "
        f"downloads weights. Download '{_builtin_file(text)}' on a machine with internet and "
        f"copy it to {folder} (set CELLPOSE_LOCAL_MODELS_PATH before Python starts to use "
        "another folder), or pass the absolute path of the weights file"
    )


@dataclass(frozen=True)
class CellposeFn:
    """Picklable Cellpose segmentation function; build it with :func:`cellpose_fn`."""

    weights: str
    gpu: bool = False
    diameter: float | None = None
    channels: tuple[int, int] | None = None
    multichannel: bool = False
    do_3D: bool = False
    eval_kwargs: dict[str, Any] = field(default_factory=dict)
    bytes_per_voxel: int = BYTES_PER_VOXEL

    def model(self) -> Any:
        """This process's model, built on first use."""
        global LOADS
        key = (self.weights, self.gpu)
        if key not in _MODELS:
            models = _cellpose_models()
            if self.gpu:
                import torch

                torch.set_num_threads(1)
            _MODELS[key] = models.CellposeModel(gpu=self.gpu, pretrained_model=self.weights)
            LOADS += 1
        return _MODELS[key]

    def __call__(self, block: NDArray[Any]) -> NDArray[Any]:
        kwargs: dict[str, Any] = {"do_3D": self.do_3D, **self.eval_kwargs}
        if self.diameter is not None:
            kwargs["diameter"] = self.diameter
        if self.channels is not None:
            kwargs["channels"] = list(self.channels)
        # with channels, blocks are (C, Y, X) or (C, Z, Y, X): blockbuster passes channels first
        has_channels = self.multichannel or self.channels is not None
        if has_channels:
            kwargs.setdefault("channel_axis", 0)
        if block.ndim - has_channels == 3:
            kwargs.setdefault("z_axis", int(has_channels))
        masks = self.model().eval(block, **kwargs)[0]
        return np.asarray(masks).astype(np.uint32, copy=False)


def cellpose_fn(
    model: str | os.PathLike[str] | None = None,
    gpu: bool = False,
    diameter: float | None = None,
    channels: tuple[int, int] | list[int] | None = None,
    do_3D: bool = False,
    multichannel: bool = False,
    **eval_kwargs: Any,
) -> CellposeFn:
    """Build a Cellpose ``fn`` for :func:`blockbuster.tile_process`.

    Parameters
    ----------
    model
        A built-in model name (cellpose 3: ``"cyto3"``, ``"nuclei"``, ...; cellpose 4:
        ``"cpsam_v2"``, ``"cpsam"``, ...) whose weights are in Cellpose's model folder, or the
        path of a weights file; default: the installed Cellpose's default model. Checked now;
        nothing is downloaded.
    gpu
        Evaluate on the GPU (one model per worker process; the worker pins torch to one
        thread).
    diameter
        Expected object diameter in pixels; ``None`` uses the model's own.
    channels
        Cellpose 3 only: ``[cytoplasm, nucleus]`` channels for blocks with a leading channel
        axis, e.g. ``(1, 2)``; ``None`` for single-channel images.
    do_3D
        Segment 3D blocks in 3D; otherwise 3D blocks are segmented plane by plane (pass
        ``stitch_threshold`` to link planes inside a block).
    multichannel
        Blocks carry a leading channel axis (``tile_process(channels=True)``) and Cellpose
        gets all of them (cellpose 4 takes up to three channels in any order; implied by
        ``channels``).
    **eval_kwargs
        Passed to ``CellposeModel.eval`` (``flow_threshold``, ``cellprob_threshold``,
        ``stitch_threshold``, ``batch_size``, ...).

    Returns
    -------
    CellposeFn
        A picklable callable returning uint32 labels; the model loads once per worker.
    """
    if channels is not None and cellpose_major() >= 4:
        raise ValueError(
            f"cellpose_fn(channels={channels!r}) is a cellpose 3 option; cellpose 4 uses every "
            "channel of the block: pass multichannel=True instead (with "
            "tile_process(channels=True))"
        )
    weights = resolve_model(default_model() if model is None else model)
    return CellposeFn(
        weights=str(weights),
        gpu=bool(gpu),
        diameter=None if diameter is None else float(diameter),
        channels=None if channels is None else (int(channels[0]), int(channels[1])),
        multichannel=bool(multichannel or channels is not None),
        do_3D=bool(do_3D),
        eval_kwargs=dict(eval_kwargs),
    )
