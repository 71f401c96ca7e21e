"""A classical nuclei segmenter: smooth, threshold, distance-transform watershed.

It needs no model download, so it is the default ``fn`` of the CLI and the demo.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import h_maxima
from skimage.segmentation import watershed


@dataclass(frozen=True)
class WatershedFn:
    """Picklable segmentation function; build it with :func:`watershed_fn`."""

    sigma: float = 1.0
    threshold: float | None = None
    h: float = 1.0
    sampling: tuple[float, ...] | None = None
    channel: int | None = None

    def __call__(self, block: NDArray[Any]) -> NDArray[Any]:
        img = block
        if self.channel is not None:
            img = img[self.channel]
        img = np.asarray(img, dtype=np.float32)
        if self.sigma > 0:
            img = ndi.gaussian_filter(img, self.sigma)
        if self.threshold is None:
            if float(img.max()) == float(img.min()):
                return np.zeros(img.shape, dtype=np.uint32)
            thr = float(threshold_otsu(img))
        else:
            thr = self.threshold
        mask = img > thr
        if not mask.any():
            return np.zeros(img.shape, dtype=np.uint32)
        dist = ndi.distance_transform_edt(mask, sampling=self.sampling)
        # one seed per distance maximum that rises at least h above its surroundings; a plateau
        # (e.g. the ridge of an elongated nucleus) is one connected maximum, hence one seed
        markers, _ = ndi.label(h_maxima(dist, self.h))
        labels = watershed(-dist, markers, mask=mask)
        out: NDArray[Any] = labels.astype(np.uint32)
        return out


def watershed_fn(
    sigma: float = 1.0,
    threshold: float | None = None,
    h: float = 1.0,
    sampling: Sequence[float] | None = None,
    channel: int | None = None,
) -> WatershedFn:
    """Build a nuclei segmenter: Gaussian smoothing, threshold, distance-transform watershed.

    Parameters
    ----------
    sigma
        Gaussian smoothing in voxels (0 disables).
    threshold
        Foreground intensity threshold after smoothing. ``None`` picks Otsu's threshold per
        block, which varies between tiles; give a fixed value for reproducible stitching.
    h
        Seeds are maxima of the distance transform at least ``h`` (in ``sampling`` units) above
        the saddle that joins them to a neighbour: larger values merge touching nuclei more.
    sampling
        Voxel spacing per axis for the distance transform (anisotropic stacks).
    channel
        Channel to segment when blocks have a leading channel axis.

    Returns
    -------
    WatershedFn
        A picklable ``fn(block) -> uint32 labels``.
    """
    return WatershedFn(
        sigma=float(sigma),
        threshold=None if threshold is None else float(threshold),
        h=float(h),
        sampling=None if sampling is None else tuple(float(s) for s in sampling),
        channel=channel,
    )
