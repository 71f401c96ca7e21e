"""Drawing the block map's picture with Pillow.

The map is three RGB mosaics side by side (tiles by state, final labels, seconds per tile)
with the tile grid, panel names, titles, a colour bar and a legend. Pillow draws it in tens
of milliseconds; matplotlib's import alone took longer than that, and every run ends by
drawing a map. :class:`Canvas` lays the panels out and maps mosaic coordinates to pixels, so
tests can look up the colour drawn at a voxel.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

__all__ = ["Canvas", "hsv_to_rgb", "inner_boundaries", "nice_ticks", "tick_labels", "viridis"]

RGB = tuple[float, float, float]

# every third colour of matplotlib's 256-colour viridis table (entry i is the value i / 255);
# interpolated linearly, it stays within 0.003 of the table
_VIRIDIS = np.array(
    [
        [0.267, 0.0049, 0.3294], [0.2713, 0.0199, 0.3473], [0.275, 0.0378, 0.3645],
        [0.2779, 0.0563, 0.3812], [0.2803, 0.0734, 0.3972], [0.2819, 0.0897, 0.4124],
        [0.2829, 0.1054, 0.4269], [0.2832, 0.1208, 0.4406], [0.2829, 0.1359, 0.4534],
        [0.2819, 0.1509, 0.4654], [0.2803, 0.1657, 0.4765], [0.278, 0.1804, 0.4867],
        [0.2752, 0.1949, 0.496], [0.2718, 0.2093, 0.5044], [0.268, 0.2235, 0.512],
        [0.2637, 0.2376, 0.5188], [0.259, 0.2515, 0.5247], [0.2539, 0.2653, 0.53],
        [0.2486, 0.2788, 0.5346], [0.2431, 0.2921, 0.5385], [0.2374, 0.3052, 0.5419],
        [0.2317, 0.3181, 0.5448], [0.2259, 0.3308, 0.5473], [0.2201, 0.3433, 0.5494],
        [0.2143, 0.3556, 0.5512], [0.2086, 0.3678, 0.5527], [0.2031, 0.3797, 0.5539],
        [0.1976, 0.3915, 0.555], [0.1924, 0.4032, 0.5558], [0.1872, 0.4147, 0.5565],
        [0.1823, 0.4262, 0.5571], [0.1774, 0.4375, 0.5576], [0.1727, 0.4488, 0.5579],
        [0.1681, 0.46, 0.5581], [0.1636, 0.4711, 0.5581], [0.1592, 0.4822, 0.5581],
        [0.1548, 0.4933, 0.5578], [0.1505, 0.5044, 0.5574], [0.1462, 0.5154, 0.5568],
        [0.1419, 0.5265, 0.556], [0.1378, 0.5375, 0.5549], [0.1337, 0.5485, 0.5535],
        [0.1299, 0.5596, 0.5519], [0.1265, 0.5706, 0.5498], [0.1235, 0.5817, 0.5474],
        [0.1211, 0.5927, 0.5446], [0.1197, 0.6038, 0.5414], [0.1195, 0.6148, 0.5377],
        [0.1206, 0.6258, 0.5335], [0.1234, 0.6368, 0.5288], [0.1281, 0.6477, 0.5235],
        [0.1347, 0.6586, 0.5176], [0.1433, 0.6695, 0.5112], [0.1539, 0.6802, 0.5042],
        [0.1664, 0.6909, 0.4965], [0.1807, 0.7014, 0.4882], [0.1966, 0.7118, 0.4792],
        [0.214, 0.7221, 0.4696], [0.2328, 0.7322, 0.4593], [0.2529, 0.7422, 0.4483],
        [0.2741, 0.752, 0.4366], [0.2965, 0.7616, 0.4242], [0.3198, 0.7709, 0.4112],
        [0.3441, 0.78, 0.3974], [0.3692, 0.7889, 0.3829], [0.3952, 0.7975, 0.3678],
        [0.4219, 0.8058, 0.3519], [0.4494, 0.8138, 0.3354], [0.4775, 0.8214, 0.3182],
        [0.5063, 0.8288, 0.3004], [0.5356, 0.8358, 0.2819], [0.5655, 0.8424, 0.2629],
        [0.5958, 0.8487, 0.2433], [0.6266, 0.8546, 0.2234], [0.6576, 0.8602, 0.2031],
        [0.6889, 0.8654, 0.1827], [0.7204, 0.8704, 0.1626], [0.7519, 0.875, 0.1432],
        [0.7833, 0.8793, 0.1254], [0.8146, 0.8834, 0.1103], [0.8456, 0.8873, 0.0997],
        [0.8762, 0.8911, 0.0952], [0.9063, 0.8949, 0.0981], [0.9359, 0.8986, 0.1081],
        [0.9649, 0.9023, 0.1239], [0.9932, 0.9062, 0.1439],
    ]
)  # fmt: skip

DPI = 100  # pixels per inch: font sizes are given in points, as a figure's are


def viridis(values: NDArray[Any]) -> NDArray[Any]:
    """RGB (float, ``values.shape + (3,)``) of ``values`` in [0, 1] (clipped) on viridis."""
    v = np.clip(np.asarray(values, dtype=float), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    i = np.minimum(v.astype(int), len(_VIRIDIS) - 2)
    f = (v - i)[..., None]
    out: NDArray[Any] = _VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f
    return out


def hsv_to_rgb(hsv: NDArray[Any]) -> NDArray[Any]:
    """RGB of HSV colours (floats in [0, 1], last axis ``h, s, v``)."""
    h, s, v = (hsv[..., i, None] for i in range(3))
    # each channel falls off from v as the hue moves away from it (red at 0, green at 1/3,
    # blue at 2/3)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    out: NDArray[Any] = v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return out


def inner_boundaries(labels: NDArray[Any]) -> NDArray[Any]:
    """Pixels of a 2D label image whose 4-neighbours (inside the image) include another
    value: scikit-image's ``find_boundaries(labels, mode="inner")`` before masking out the
    background, without its import."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def _nice_step(span: float, most: int) -> tuple[float, int]:
    """``(m, k)``: the step ``m * 10**k`` (m in 1, 2, 2.5, 5) that puts at most ``most``
    ticks on ``span``."""
    raw = span / most
    k = math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0):
        if m * 10.0**k >= raw:
            return m, k
    return 1.0, k + 1


def nice_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round tick values inside ``[lo, hi]``: steps of 1, 2, 2.5 or 5 times a power of ten,
    at most ``most`` of them.

    >>> nice_ticks(0.98, 1.22)
    [1.0, 1.05, 1.1, 1.15, 1.2]
    """
    span = hi - lo
    if not span > 0:
        return [lo]
    m, k = _nice_step(span, most)
    step = m * 10.0**k
    first = math.ceil(lo / step - 1e-9)
    ticks = [round((first + i) * step, 12) for i in range(most + 2)]
    return [t for t in ticks if lo - 1e-9 * span <= t <= hi + 1e-9 * span]


def tick_labels(lo: float, hi: float, most: int = 6) -> list[str]:
    """The texts of :func:`nice_ticks`, with as many decimals as the step has.

    >>> tick_labels(0, 13)
    ['0.0', '2.5', '5.0', '7.5', '10.0', '12.5']
    >>> tick_labels(0.45, 1.0)
    ['0.5', '0.6', '0.7', '0.8', '0.9', '1.0']
    >>> tick_labels(0, 130)
    ['0', '25', '50', '75', '100', '125']
    """
    ticks = nice_ticks(lo, hi, most)
    if not hi - lo > 0:
        return [f"{t:g}" for t in ticks]
    m, k = _nice_step(hi - lo, most)
    decimals = max(0, -k + (1 if m == 2.5 else 0))
    return [f"{t:.{decimals}f}" for t in ticks]


@cache
def _font(points: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, round(points * DPI / 72)))


def _rgb255(color: Sequence[float] | NDArray[Any]) -> tuple[int, ...]:
    return tuple(int(round(255 * float(c))) for c in color)


@dataclass
class Panel:
    """Where one panel's mosaic is drawn: its top left pixel and pixels per mosaic unit."""

    left: int
    top: int
    scale: float
    width: int  # pixels
    height: int

    def pixel(self, x: float, y: float) -> tuple[float, float]:
        """The picture's pixel (column, row) of mosaic point ``(x, y)``."""
        return self.left + x * self.scale, self.top + y * self.scale


@dataclass
class Canvas:
    """Three mosaics side by side, and what is drawn around them.

    Parameters
    ----------
    mosaic_shape
        ``(height, width)`` of each mosaic, in mosaic units (one per map pixel).
    legend
        Leave room under the panels for a legend.
    """

    mosaic_shape: tuple[int, int]
    legend: bool = True
    panels: list[Panel] = field(init=False)
    image: Image.Image = field(init=False)
    texts: list[tuple[int, str]] = field(init=False, default_factory=list)
    """``(panel, text)`` of the names written inside panels (-1: outside any)."""
    legend_texts: list[str] = field(init=False, default_factory=list)
    colorbar: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        mh, mw = self.mosaic_shape
        box_w = 460
        box_h = int(np.clip(box_w * mh / mw, 200, 900))
        scale = min(box_w / mw, box_h / mh)
        w, h = max(1, round(mw * scale)), max(1, round(mh * scale))
        left, top, gap = 20, 40, 50
        bottom = 55 if self.legend else 20
        self.panels = []
        for k in range(3):
            x0 = left + k * (box_w + gap) + (box_w - w) // 2
            y0 = top + (box_h - h) // 2
            self.panels.append(Panel(x0, y0, scale, w, h))
        width = left + 3 * box_w + 2 * gap + 100  # the colour bar and its label
        self.image = Image.new("RGB", (width, top + box_h + bottom), (255, 255, 255))
        self._top = top
        # translucent lines and boxes go on one layer, blended once; the texts on those
        # boxes are written after it
        self._overlay = Image.new("RGBA", self.image.size, (0, 0, 0, 0))
        self._on_top: list[tuple[tuple[float, float], str, float, str]] = []
        self._finished = False

    # -- pieces ---------------------------------------------------------------------------------

    def mosaic(self, k: int, rgb: NDArray[Any]) -> None:
        """Draw panel ``k``'s mosaic (float RGB, ``mosaic_shape + (3,)``), nearest pixel."""
        p = self.panels[k]
        mh, mw = self.mosaic_shape
        rows = np.minimum(((np.arange(p.height) + 0.5) / p.scale).astype(int), mh - 1)
        cols = np.minimum(((np.arange(p.width) + 0.5) / p.scale).astype(int), mw - 1)
        pixels = np.clip(np.round(rgb[rows[:, None], cols[None, :]] * 255), 0, 255)
        self.image.paste(Image.fromarray(pixels.astype(np.uint8), "RGB"), (p.left, p.top))

    def lines(
        self,
        k: int,
        segments: Sequence[Sequence[tuple[float, float]]],
        color: Sequence[float],
        width: int = 1,
    ) -> None:
        """Draw polylines given in mosaic units over panel ``k`` (RGBA colours blend)."""
        p = self.panels[k]
        draw = ImageDraw.Draw(self._overlay)
        fill = _rgb255(color if len(color) == 4 else (*color, 1.0))
        for seg in segments:
            points = [p.pixel(x, y) for x, y in seg]
            # a line on the far edge would fall one pixel outside the mosaic
            points = [
                (min(px, p.left + p.width - 1), min(py, p.top + p.height - 1)) for px, py in points
            ]
            draw.line(points, fill=fill, width=width)

    def label(self, k: int, x: float, y: float, text: str, points: float) -> None:
        """Write ``text`` at mosaic point ``(x, y)`` of panel ``k`` (top left), on a
        translucent white box."""
        px, py = self.panels[k].pixel(x, y)
        self._boxed_text((px, py), text, points, anchor="la", alpha=0.75)
        self.texts.append((k, text))

    def title(self, k: int, text: str, points: float = 10) -> None:
        """Write a panel's title, centred above its box."""
        p = self.panels[k]
        draw = ImageDraw.Draw(self.image)
        centre = p.left + p.width / 2
        draw.text((centre, self._top - 8), text, fill=(0, 0, 0), font=_font(points), anchor="md")

    def message(self, k: int, text: str, points: float = 10) -> None:
        """Write ``text`` in the middle of panel ``k`` on a white box."""
        p = self.panels[k]
        centre = (p.left + p.width / 2, p.top + p.height / 2)
        self._boxed_text(centre, text, points, anchor="mm", alpha=0.8)

    def frame(self, k: int) -> None:
        """Draw a thin black frame around panel ``k``."""
        p = self.panels[k]
        ImageDraw.Draw(self.image).rectangle(
            (p.left - 1, p.top - 1, p.left + p.width, p.top + p.height), outline=(0, 0, 0)
        )

    def colour_bar(
        self, k: int, limits: tuple[float, float], extend_low: bool, extend_high: bool, text: str
    ) -> None:
        """A vertical viridis bar beside panel ``k`` with round ticks; triangles at an end
        whose values go past the limits."""
        p = self.panels[k]
        height = max(20, int(0.8 * p.height))
        x0, y0 = p.left + p.width + 14, p.top + (p.height - height) // 2
        bar_w = 14
        ramp = viridis(np.linspace(1.0, 0.0, height))[:, None, :]
        pixels = np.round(np.repeat(ramp, bar_w, axis=1) * 255).astype(np.uint8)
        self.image.paste(Image.fromarray(pixels, "RGB"), (x0, y0))
        draw = ImageDraw.Draw(self.image)
        draw.rectangle((x0 - 1, y0 - 1, x0 + bar_w, y0 + height), outline=(0, 0, 0))
        tip = bar_w
        if extend_high:
            top = _rgb255(viridis(np.array(1.0)))
            draw.polygon([(x0, y0 - 1), (x0 + bar_w - 1, y0 - 1), (x0 + bar_w / 2, y0 - tip)], top)
        if extend_low:
            low = _rgb255(viridis(np.array(0.0)))
            y1 = y0 + height
            draw.polygon([(x0, y1), (x0 + bar_w - 1, y1), (x0 + bar_w / 2, y1 + tip - 1)], low)
        lo, hi = limits
        font = _font(7)
        for t, label in zip(nice_ticks(lo, hi), tick_labels(lo, hi), strict=True):
            y = y0 + (hi - t) / (hi - lo) * (height - 1) if hi > lo else y0 + height / 2
            draw.line([(x0 + bar_w, y), (x0 + bar_w + 3, y)], fill=(0, 0, 0))
            draw.text((x0 + bar_w + 5, y), label, fill=(0, 0, 0), font=font, anchor="lm")
        font = _font(8)
        side = Image.new("RGB", (height, 16), (255, 255, 255))
        ImageDraw.Draw(side).text((height / 2, 8), text, fill=(0, 0, 0), font=font, anchor="mm")
        self.image.paste(side.rotate(90, expand=True), (x0 + bar_w + 40, y0))
        self.colorbar = True

    def legend_row(self, entries: Sequence[tuple[str, RGB | None, RGB, int]]) -> None:
        """Legend entries ``(text, face colour or None, edge colour, edge width)`` in one
        row under the panels, from the first panel's left edge."""
        draw = ImageDraw.Draw(self.image)
        font = _font(8)
        x = float(self.panels[0].left)
        y = self.image.size[1] - 22
        for text, face, edge, width in entries:
            draw.rectangle(
                (x, y - 5, x + 22, y + 5),
                fill=_rgb255(face) if face is not None else None,
                outline=_rgb255(edge),
                width=width,
            )
            draw.text((x + 28, y), text, fill=(0, 0, 0), font=font, anchor="lm")
            x += 28 + draw.textlength(text, font=font) + 22
            self.legend_texts.append(text)

    def finish(self) -> Image.Image:
        """Blend the translucent layer in and write the texts on it; the finished picture."""
        if not self._finished:
            base = Image.alpha_composite(self.image.convert("RGBA"), self._overlay)
            self.image = base.convert("RGB")
            draw = ImageDraw.Draw(self.image)
            for at, text, points, anchor in self._on_top:
                draw.text(at, text, fill=(0, 0, 0), font=_font(points), anchor=anchor)
            self._finished = True
        return self.image

    def png(self) -> bytes:
        """The finished picture as PNG bytes."""
        self.finish()
        buf = io.BytesIO()
        self.image.save(buf, format="PNG", compress_level=3)
        return buf.getvalue()

    # -- helpers --------------------------------------------------------------------------------

    def _boxed_text(
        self, at: tuple[float, float], text: str, points: float, anchor: str, alpha: float
    ) -> None:
        draw = ImageDraw.Draw(self._overlay)
        pad = 2
        x0, y0, x1, y1 = draw.textbbox(at, text, font=_font(points), anchor=anchor)
        white = (255, 255, 255, round(255 * alpha))
        draw.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), fill=white)
        self._on_top.append((at, text, points, anchor))
