"""Cellpose as a blockbuster ``fn`` (optional extra: ``pip install "blockbuster-seg[cellpose]"``).

:func:`cellpose_fn` checks the model before any block runs and returns a picklable callable
that loads the model once per worker process, on first use, and segments each block with it.

Weights are never downloaded here. Cellpose itself, given a built-in model name whose file is
missing, downloads it (``urlopen`` without a timeout, which can hang a worker forever on a
cluster node without internet), and given an unknown name or a missing path, only warns and
falls back to its default model. So a name must already be in Cellpose's model folder and a
path must exist; anything else is a clear error naming where the file belongs.

Supports cellpose 3.x (``"cyto3"``, ``"nuclei"``, ...) and 4.x (``"cpsam_v2"``, ``"cpsam"``).

Normalisation. Cellpose scales each image it is given to its own 1st..99th percentile. Given
one tile, that is the tile's percentiles: a tile of background noise is stretched to full
contrast and grows objects, and a dim region is brightened relative to the rest. By default
(``normalize="image"``) every tile is scaled instead with the whole image's percentiles,
measured once by ``tile_process`` before any tile runs (:meth:`CellposeFn.prepare`), so a
tile's result no longer depends on what else the tile holds.

Halo. A tile's labels near the face must be what the whole image gives, which takes context
around them: :data:`HALO_DIAMETERS` object diameters (:meth:`CellposeFn.suggest_overlap`,
used when ``tile_process`` gets no ``overlap``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from blockbuster.pipeline.stats import ImageStats

#: Rough GPU memory per voxel of one tile (input plus halo) during a Cellpose evaluation:
#: the float32 network input, 3 flow/probability channels, the U-net's widest feature maps
#: at full resolution (32 channels) and test-time augmentation tiles. Used by
#: ``tile_process(use_gpu=True)`` to size tiles; measured peaks of cyto3 on 2D tiles stayed
#: below it.
BYTES_PER_VOXEL = 400

#: halo per side, in object diameters, that makes tiled labels equal the whole image's (see
#: scripts/bench_cellpose_halo.py and tests/plugins/test_cellpose_trained.py)
HALO_DIAMETERS = 1.0
#: the object diameter assumed where neither the call nor the weights file gives one
DEFAULT_DIAMETER = 30.0
NORMALIZE = ("image", "tile")

_MODELS: dict[tuple[str, bool], Any] = {}
#: how many models this process has built (tests read it to check one load per process)
LOADS = 0


def _cellpose_models() -> Any:
    try:
        from cellpose import models
    except ImportError:
        raise ImportError(
            'cellpose_fn needs Cellpose: pip install "blockbuster-seg[cellpose]" (install torch '
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
    #: "image" (scale every block by the image's percentiles), "tile" (Cellpose's own, per
    #: block), or explicit (low, high) intensities
    normalize: str | tuple[float, float] = "image"
    percentiles: tuple[float, float] = (1.0, 99.0)
    #: per channel (low, high), set by :meth:`prepare` for normalize="image"
    lowhigh: tuple[tuple[float, float], ...] | None = None
    #: the object diameter the model expects (``diam_mean`` of its weights), for the halo
    model_diameter: float = DEFAULT_DIAMETER

    def prepare(self, stats: ImageStats) -> CellposeFn:
        """This fn for one image: with ``normalize="image"``, the image's percentiles per
        channel (called by ``tile_process`` before any tile runs)."""
        if self.normalize != "image":
            return self
        lo, hi = self.percentiles
        bounds = tuple(
            (stats.percentile(lo, c), stats.percentile(hi, c)) for c in range(len(stats.channels))
        )
        return replace(self, lowhigh=bounds)

    def suggest_overlap(self) -> int:
        """The halo per side (voxels) for tiles of this fn: ``HALO_DIAMETERS`` object
        diameters (``diameter``, else the model's own)."""
        diameter = self.diameter or self.model_diameter
        return max(1, math.ceil(HALO_DIAMETERS * diameter))

    def _normalized(self, block: NDArray[Any], has_channels: bool) -> NDArray[Any] | None:
        """The block scaled to [0, 1] at the low..high intensities, or None for Cellpose's
        own per-block normalisation."""
        if self.normalize == "tile":
            return None
        if isinstance(self.normalize, str):
            if self.lowhigh is None:  # not prepared (called outside tile_process)
                return None
            bounds = np.asarray(self.lowhigh, dtype=np.float32)
        else:
            bounds = np.asarray([self.normalize], dtype=np.float32)
        if has_channels and len(bounds) > 1:
            shape = (len(bounds),) + (1,) * (block.ndim - 1)
            lo, hi = bounds[:, 0].reshape(shape), bounds[:, 1].reshape(shape)
        else:
            lo, hi = bounds[0, 0], bounds[0, 1]
        span = np.maximum(hi - lo, np.float32(1e-12))
        out: NDArray[Any] = (block.astype(np.float32) - lo) / span
        return out

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
        scaled = self._normalized(block, has_channels)
        if scaled is not None:
            block = scaled
            kwargs["normalize"] = False
        spatial = block.shape[int(has_channels) :]
        masks = np.asarray(self.model().eval(block, **kwargs)[0])
        if masks.shape != spatial and masks.size == math.prod(spatial):
            # a one-plane 3D block (tile_shape (1, Y, X)) comes back as a 2D mask
            masks = masks.reshape(spatial)
        return masks.astype(np.uint32, copy=False)


def cellpose_fn(
    model: str | os.PathLike[str] | None = None,
    gpu: bool = False,
    diameter: float | None = None,
    channels: tuple[int, int] | list[int] | None = None,
    do_3D: bool = False,
    multichannel: bool = False,
    normalize: str | tuple[float, float] | list[float] = "image",
    percentiles: tuple[float, float] | list[float] = (1.0, 99.0),
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
    normalize
        How blocks are scaled for the network: ``"image"`` (default) by the whole image's
        ``percentiles`` per channel, measured once by ``tile_process``, so every tile is
        scaled alike; ``"tile"``: Cellpose's own per-block percentiles (an empty tile's noise
        is stretched to full contrast); or explicit ``(low, high)`` intensities.
    percentiles
        The low and high percentiles for ``normalize="image"`` (Cellpose's default 1, 99).
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
    if "normalize" in eval_kwargs:
        raise ValueError("pass normalize= to cellpose_fn, not through eval_kwargs")
    norm: str | tuple[float, float]
    if isinstance(normalize, str):
        if normalize not in NORMALIZE:
            raise ValueError(
                f"cellpose_fn(normalize={normalize!r}) must be 'image', 'tile' or (low, high)"
            )
        norm = normalize
    else:
        values = tuple(float(v) for v in normalize)
        if len(values) != 2 or not values[0] < values[1]:
            raise ValueError(
                f"cellpose_fn(normalize={normalize!r}): give (low, high) intensities, low < high"
            )
        norm = (values[0], values[1])
    pct = tuple(float(v) for v in percentiles)
    if len(pct) != 2 or not 0 <= pct[0] < pct[1] <= 100:
        raise ValueError(
            f"cellpose_fn(percentiles={percentiles!r}) must be (low, high) with "
            "0 <= low < high <= 100"
        )
    if diameter is not None and not float(diameter) > 0:
        raise ValueError(f"cellpose_fn(diameter={diameter!r}) must be a positive number or None")
    weights = resolve_model(default_model() if model is None else model)
    return CellposeFn(
        weights=str(weights),
        gpu=bool(gpu),
        diameter=None if diameter is None else float(diameter),
        channels=None if channels is None else (int(channels[0]), int(channels[1])),
        multichannel=bool(multichannel or channels is not None),
        do_3D=bool(do_3D),
        eval_kwargs=dict(eval_kwargs),
        normalize=norm,
        percentiles=(pct[0], pct[1]),
        model_diameter=_weights_diameter(weights),
    )


def _weights_diameter(weights: Path) -> float:
    """The object diameter a weights file was trained for (cellpose 3 keeps ``diam_mean`` in
    it), else :data:`DEFAULT_DIAMETER`."""
    try:
        import torch

        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        value = state.get("diam_mean") if isinstance(state, dict) else None
        return (
            float(value.item() if hasattr(value, "item") else value)
            if value
            else (DEFAULT_DIAMETER)
        )
    except Exception:  # a format this reader does not know: the default is safe
        return DEFAULT_DIAMETER
