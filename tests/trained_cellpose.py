"""A small Cellpose 3 model trained here, from scratch, on synthetic nuclei (no download).

:func:`train_model` renders nuclei with :mod:`blockbuster.synthetic`, derives their labels
from the same centres and radii, and trains a Cellpose U-net on them in a few minutes of CPU.
:func:`synthetic_image` renders held-out 2D or 3D test images with their true labels (with an
empty and a dim region if asked) and :func:`f1` scores a segmentation against them.

The network has Cellpose's standard layout (``nbase = [2, 32, 64, 128, 256]``, two input
channels), the only one ``cellpose.models.CellposeModel(pretrained_model=path)`` can load; its
``diam_mean`` is :data:`DIAMETER`, the mean nucleus diameter of the training images, so pass
``diameter=DIAMETER`` to ``eval`` (or ``cellpose_fn``) for images of such nuclei: the network
then sees them at the scale it was trained at.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastremap
import numpy as np
from numpy.typing import NDArray

from blockbuster.synthetic import nuclei_centres, render_box

#: nucleus radius (pixels, per axis in 2D) of the training images; radii vary by +-25%
RADIUS = 12.0
#: mean nucleus diameter of the training images, the trained model's ``diam_mean``: pass it
#: as ``diameter`` to ``CellposeModel.eval`` / ``cellpose_fn`` for nuclei of radius ``RADIUS``
DIAMETER = 24.0
#: intensity of the background and of a nucleus above it, as :func:`render_box` draws them
BACKGROUND = 200.0
BRIGHTNESS = 1500.0
NOISE = 60.0


def _place(
    shape: Sequence[int],
    count: int,
    radius: Sequence[float],
    seed: int,
    extent: int,
    gap: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Up to ``count`` nuclei, none of them reaching past ``extent`` on the last axis.

    Candidates come from :func:`nuclei_centres`; each is kept when its soft edge (1.3 radii)
    stays inside ``[0, extent)`` on the last axis and its centre is at least ``gap`` times the
    summed radii away from every nucleus kept before it.
    """
    region = [*shape[:-1], extent]
    centres, radii = nuclei_centres(region, 4 * count, radius, seed)
    kept: list[int] = []
    for i in range(len(centres)):
        if len(kept) == count:
            break
        c, r = centres[i], radii[i]
        if c[-1] + 1.3 * r[-1] >= extent and extent < shape[-1]:
            continue
        if kept:
            dist = np.linalg.norm(centres[kept] - c, axis=1)
            reach = (radii[kept].max(axis=1) + r.max()) * gap
            if np.any(dist < reach):
                continue
        kept.append(i)
    return centres[kept].astype(np.float64), radii[kept].astype(np.float64)


def _labels(
    shape: Sequence[int], centres: NDArray[np.float64], radii: NDArray[np.float64]
) -> NDArray[np.uint32]:
    """True labels: a voxel belongs to the nucleus nearest it in normalised distance, where
    that distance is below 1 (the middle of :func:`render_box`'s soft edge)."""
    labels = np.zeros(tuple(shape), dtype=np.uint32)
    best = np.full(tuple(shape), np.inf, dtype=np.float32)
    top = np.asarray(shape)
    for n, (c, r) in enumerate(zip(centres, radii, strict=True), start=1):
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, top)
        if np.any(hi <= lo):
            continue
        grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        d2 = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, c, r, strict=True))
        dist = np.sqrt(np.asarray(d2, dtype=np.float32))
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        win = (dist < 1.0) & (dist < best[box])
        labels[box][win] = n
        best[box][win] = dist[win]
    return labels


def synthetic_image(
    shape: Sequence[int],
    count: int,
    radius: float | Sequence[float] = RADIUS,
    seed: int = 0,
    empty_fraction: float = 0.0,
    dim: float = 0.0,
    dim_factor: float = 0.35,
    gap: float = 1.1,
) -> tuple[NDArray[np.uint16], NDArray[np.uint32]]:
    """A synthetic nuclei image (2D or 3D) and its true labels.

    Parameters
    ----------
    shape
        Image shape, 2D ``(Y, X)`` or 3D ``(Z, Y, X)``.
    count
        Nuclei to place (fewer when they do not fit: see ``gap``).
    radius
        Mean nucleus radius in pixels, one number or one per axis; each nucleus varies by
        +-25%.
    seed
        Random seed of positions, sizes and noise; the same arguments give the same image.
    empty_fraction
        Fraction of the last axis (the right-hand side of the image) with no nucleus at all,
        not even a soft edge: only background and noise there.
    dim
        Fraction of the second-to-last axis (the top rows) where the intensity above the
        background is multiplied by ``dim_factor`` (noise is unchanged).
    dim_factor
        Brightness of the dim rows relative to the others.
    gap
        Closest centre distance of two nuclei, in summed radii: 1.1 (default) keeps them
        apart; near 1 their soft edges touch; below about 0.85 their flat tops merge into one
        bright blob that only its shape splits (labels still split it, voxel by voxel, by the
        nearest nucleus).

    Returns
    -------
    image : numpy.ndarray
        uint16 image: nuclei of about 1500 above a background of 200, noise 60 (std).
    labels : numpy.ndarray
        uint32 true labels, 1..N, 0 = background.
    """
    shape = tuple(int(s) for s in shape)
    if isinstance(radius, int | float):
        radii_in = [float(radius)] * len(shape)
    else:
        radii_in = [float(r) for r in radius]
    extent = shape[-1] - int(round(empty_fraction * shape[-1]))
    centres, radii = _place(shape, count, radii_in, seed, extent, gap)
    clean = render_box(
        [0] * len(shape),
        shape,
        centres,
        radii,
        seed,
        background=BACKGROUND,
        brightness=BRIGHTNESS,
        noise=0.0,
    ).astype(np.float32)
    if dim > 0:
        rows = int(round(dim * shape[-2]))
        top = (Ellipsis, slice(0, rows), slice(None))
        clean[top] = BACKGROUND + (clean[top] - BACKGROUND) * dim_factor
    rng = np.random.default_rng([seed, 1])
    clean += rng.normal(0.0, NOISE, size=shape).astype(np.float32)
    image = np.clip(clean, 0, 65535).astype(np.uint16)
    return image, _labels(shape, centres, radii)


def _matches(pred: NDArray[Any], truth: NDArray[Any], iou: float) -> tuple[int, int, int]:
    """(matched pairs, predicted objects, true objects) under a one-to-one matching."""
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} differ in shape")
    for name, arr in (("pred", pred), ("truth", truth)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must hold integer labels, not {arr.dtype}")
    # labels 1..n in one hash pass each (fastremap), 0 stays background
    p_lab = np.ascontiguousarray(fastremap.renumber(np.ascontiguousarray(pred).ravel())[0])
    t_lab = np.ascontiguousarray(fastremap.renumber(np.ascontiguousarray(truth).ravel())[0])
    p_area = np.bincount(p_lab)[1:]
    t_area = np.bincount(t_lab)[1:]
    n_p, n_t = len(p_area), len(t_area)
    if n_p == 0 or n_t == 0:
        return 0, n_p, n_t
    both = (p_lab != 0) & (t_lab != 0)
    pair = (p_lab[both].astype(np.int64) - 1) * n_t + (t_lab[both].astype(np.int64) - 1)
    if n_p * n_t <= 1 << 24:
        counts = np.bincount(pair, minlength=n_p * n_t)
        codes = np.flatnonzero(counts)
        inter = counts[codes]
    else:
        codes, inter = np.unique(pair, return_counts=True)
    pi, ti = codes // n_t, codes % n_t
    scores = inter / (p_area[pi] + t_area[ti] - inter)
    good = scores > iou
    if iou >= 0.5:
        # above 0.5 an object overlaps at most one other that much: the matching is unique
        return int(good.sum()), n_p, n_t
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import csr_matrix

    rows, cols = np.unique(pi[good]), np.unique(ti[good])
    dense = csr_matrix(
        (scores[good], (np.searchsorted(rows, pi[good]), np.searchsorted(cols, ti[good]))),
        shape=(len(rows), len(cols)),
    ).toarray()
    r, c = linear_sum_assignment(dense, maximize=True)
    return int((dense[r, c] > iou).sum()), n_p, n_t


def f1(pred: NDArray[Any], truth: NDArray[Any], iou: float = 0.5) -> float:
    """Object-level F1 of ``pred`` against ``truth`` at an IoU threshold.

    Objects are matched one to one: a predicted and a true object match when their IoU exceeds
    ``iou`` (above 0.5 each object has at most one such partner; below it, the matching
    maximises the summed IoU). ``F1 = 2 TP / (predicted + true objects)``.

    Parameters
    ----------
    pred, truth
        Integer label images of the same shape (2D or 3D), 0 = background; label values need
        not be consecutive.
    iou
        IoU an object pair must exceed to count as a match.

    Returns
    -------
    float
        F1 in [0, 1]; 1.0 when both images have no object.
    """
    tp, n_p, n_t = _matches(pred, truth, iou)
    return 1.0 if n_p + n_t == 0 else 2.0 * tp / (n_p + n_t)


def training_images(
    n: int = 12, size: int = 192, seed: int = 0
) -> tuple[list[NDArray[np.float32]], list[NDArray[np.uint32]]]:
    """The training set: ``n`` 2D crops of synthetic nuclei with their labels.

    Every other crop packs its nuclei touching (``gap=0.85``, 40% of the area), so that the
    model learns to split touching nuclei by shape; every third crop has a dim top half, every
    fourth an empty right quarter. Images are
    ``(2, size, size)`` float32: the nuclei channel and a zero channel, as Cellpose 3 feeds a
    single-channel image to its two-channel network.
    """
    images: list[NDArray[np.float32]] = []
    labels: list[NDArray[np.uint32]] = []
    area = np.pi * RADIUS**2
    for i in range(n):
        touching = i % 2 == 1
        img, lab = synthetic_image(
            (size, size),
            int((0.4 if touching else 0.3) * size * size / area),
            RADIUS,
            seed=1000 * seed + i,
            empty_fraction=0.25 if i % 4 == 3 else 0.0,
            dim=0.5 if i % 3 == 2 else 0.0,
            gap=0.85 if touching else 1.1,
        )
        images.append(np.stack([img.astype(np.float32), np.zeros_like(img, np.float32)]))
        labels.append(lab)
    return images, labels


def train_model(
    folder: Path,
    seed: int = 0,
    n_epochs: int = 40,
    n_images: int = 12,
    size: int = 192,
    bsize: int = 128,
    learning_rate: float = 0.01,
    threads: int = 2,
) -> Path:
    """Train a Cellpose 3 model from scratch on synthetic nuclei; return its weights file.

    Parameters
    ----------
    folder
        Where the weights go (``folder/models/synthetic_nuclei``); created if missing.
    seed
        Seeds the training images, numpy and torch: the same seed gives the same weights (on
        the same machine and torch build).
    n_epochs, n_images, size, bsize, learning_rate
        Training length, number and size of the training crops, the network's patch size
        and AdamW's learning rate; the defaults train in about 2-3 minutes on 2 CPU cores.
    threads
        torch CPU threads while training (restored afterwards).

    Returns
    -------
    pathlib.Path
        The weights file; load it with ``CellposeModel(pretrained_model=str(path))`` and
        evaluate with ``diameter=DIAMETER``.
    """
    import torch
    from cellpose import models, train

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = training_images(n_images, size, seed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    np.random.seed(seed)  # noqa: NPY002 (cellpose draws from the legacy global state)
    torch.manual_seed(seed)
    try:
        model = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=DIAMETER, nchan=2)
        path, _, _ = train.train_seg(
            model.net,
            train_data=images,
            train_labels=labels,
            channel_axis=0,
            normalize=True,
            n_epochs=n_epochs,
            learning_rate=learning_rate,
            weight_decay=1e-5,
            batch_size=8,
            bsize=bsize,
            min_train_masks=1,
            rescale=True,
            save_path=str(folder),
            save_every=10**6,
            model_name="synthetic_nuclei",
        )
    finally:
        torch.set_num_threads(before)
    return Path(path)
