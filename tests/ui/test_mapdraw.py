"""The block map's drawing helpers against the libraries they stand in for."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from blockbuster.ui.mapdraw import (
    Canvas,
    hsv_to_rgb,
    inner_boundaries,
    nice_ticks,
    tick_labels,
    viridis,
)


def test_viridis_matches_matplotlib() -> None:
    from matplotlib import colormaps

    # matplotlib's table: 256 colours, entry i for the value i / 255
    table = colormaps["viridis"]((np.arange(256) + 0.5) / 256)[:, :3]
    np.testing.assert_allclose(viridis(np.arange(256) / 255), table, atol=0.003)
    np.testing.assert_array_equal(viridis(np.array([-1.0, 2.0])), viridis(np.array([0.0, 1.0])))


def test_hsv_to_rgb_matches_matplotlib() -> None:
    from matplotlib.colors import hsv_to_rgb as mpl_hsv_to_rgb

    hsv = np.random.default_rng(0).random((500, 3))
    hsv[:10, 0] = np.linspace(0, 1, 10)  # every sextant's edge
    np.testing.assert_allclose(hsv_to_rgb(hsv), mpl_hsv_to_rgb(hsv), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 3))
)
def test_inner_boundaries_match_scikit_image(labels: np.ndarray) -> None:
    from skimage.segmentation import find_boundaries

    expected = find_boundaries(labels, mode="inner") & (labels != 0)
    np.testing.assert_array_equal(inner_boundaries(labels) & (labels != 0), expected)


@given(st.floats(-1e4, 1e4), st.floats(1e-3, 1e4))
def test_nice_ticks_are_round_evenly_spaced_and_inside(lo: float, span: float) -> None:
    hi = lo + span
    ticks = nice_ticks(lo, hi)
    assert 2 <= len(ticks) <= 7
    assert all(lo - 1e-9 * span <= t <= hi + 1e-9 * span for t in ticks)
    steps = np.diff(ticks)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-6)
    mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]) + 1e-6)
    assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5))


def test_canvas_puts_mosaic_pixels_where_its_panels_say() -> None:
    canvas = Canvas((30, 50))
    rgb = np.zeros((30, 50, 3))
    rgb[10:20, 25:50] = (1.0, 0.0, 0.0)
    for k in range(3):
        canvas.mosaic(k, rgb * (k + 1) / 3)
    png = np.asarray(canvas.finish())
    for k in range(3):
        x, y = canvas.panels[k].pixel(40.5, 15.5)
        np.testing.assert_array_equal(png[int(y), int(x)], [round(255 * (k + 1) / 3), 0, 0])
        x, y = canvas.panels[k].pixel(5.5, 5.5)
        np.testing.assert_array_equal(png[int(y), int(x)], [0, 0, 0])
    # equal aspect: a mosaic unit is as many pixels across as down
    p = canvas.panels[0]
    assert abs(p.width / 50 - p.height / 30) < 0.05


@given(st.floats(-1e4, 1e4), st.floats(1e-3, 1e4))
def test_tick_labels_read_back_as_their_ticks(lo: float, span: float) -> None:
    ticks = nice_ticks(lo, lo + span)
    labels = tick_labels(lo, lo + span)
    assert len(labels) == len(set(labels)) == len(ticks)
    for tick, label in zip(ticks, labels, strict=True):
        assert abs(float(label) - tick) <= 1e-9 * max(1.0, abs(tick))
