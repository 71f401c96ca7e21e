"""A classical nuclei segmenter: smooth, threshold, distance-transform watershed.

It needs no model download, so it is the default ``fn`` of the CLI and the demo.

Tiled, it gives what it gives on the whole image (given a halo wider than a nucleus): every
step depends only on the voxels near the one it decides. The threshold is one number for the
whole image (Otsu's threshold of the image's histogram, see :meth:`WatershedFn.prepare`),
never one per block; and the distance transform's many equal values (it takes the square roots
of integers) are told apart by the smoothed intensity, scaled by a constant of the image, so
neither the seeds nor the watershed lines depend on the order a block is scanned in, which
differs with the block's position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

if TYPE_CHECKING:
    from blockbuster.pipeline.stats import ImageStats


@dataclass(frozen=True)
class WatershedFn:
    """Picklable segmentation function; build it with :func:`watershed_fn`."""

    sigma: float = 1.0
    threshold: float | None = None
    h: float = 1.0
    sampling: tuple[float, ...] | None = None
    channel: int | None = None
    #: intensity span (above the threshold) over which ties of the distance transform are
    #: ordered; set from the image by :meth:`prepare`
    tie_scale: float | None = None

    def prepare(self, stats: ImageStats) -> WatershedFn:
        """This fn for one image: its Otsu threshold where ``threshold`` is None, and the span
        of its intensities for telling distance ties apart (called by ``tile_process``)."""
        channel = self.channel or 0
        thr = stats.otsu(channel) if self.threshold is None else self.threshold
        span = stats.percentile(99.9, channel) - thr
        return replace(self, threshold=float(thr), tie_scale=float(max(span, 1e-6)))

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
        # brighter voxels rank higher among equal distances; the tie-breaker stays below the
        # distance transform's smallest step between neighbouring values (>= 1 / (2 r)) for
        # nuclei up to thousands of voxels wide, so it orders ties and nothing else
        scale = self.tie_scale or max(abs(thr), 1.0)
        step = min(self.sampling) if self.sampling else 1.0
        height = dist + (1e-4 * step) * np.tanh((img - thr) / scale)
        # one seed per maximum that rises at least h above the saddle to its neighbours
        markers, _ = ndi.label(h_maxima(height, self.h))
        labels = watershed(-height, markers, mask=mask)
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
        Foreground intensity threshold after smoothing. ``None``: Otsu's threshold of the
        whole image's histogram, measured once by ``tile_process`` (called on its own, the
        fn falls back to Otsu's threshold of each block, which differs between blocks).
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
