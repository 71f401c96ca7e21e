"""Which planes the block map draws: one per tile layer, never on a tile boundary."""

from __future__ import annotations

import numpy as np
import pytest

from blockbuster.pipeline.plan import TilePlan
from blockbuster.pipeline.thumbnail import GAP, MAX_PIXELS, MapPlane


def plan(shape: tuple[int, ...], tile: tuple[int, ...], time_axis: bool = False) -> TilePlan:
    n = len(shape)
    return TilePlan(shape, tile, (0,) * n, (1,) * n, (0,) * n, time_axis)


def test_a_plane_per_tile_layer_in_the_middle_of_its_cores() -> None:
    mp = MapPlane.of(plan((21, 32, 48), (5, 16, 16)))  # 5 layers, the last one 1 deep
    assert mp.layers == ((0, 5), (5, 10), (10, 15), (15, 20), (20, 21))
    assert mp.zs == (2, 7, 12, 17, 20)
    for (a, b), z in zip(mp.layers, mp.zs, strict=True):
        assert a <= z < b and (z != a or b - a == 1)  # on a boundary only for a 1-deep layer
    assert [mp.panel_name(k) for k in (0, 4)] == ["z 0-4 (plane 2)", "z 20-20 (plane 20)"]
    assert mp.num_panels == 5 and mp.rows * mp.columns >= 5


def test_the_mosaic_holds_every_tile_in_its_layer_panel() -> None:
    p = plan((8, 6, 10), (4, 3, 5))  # 2 layers of 2 x 2 tiles
    mp = MapPlane.of(p)
    pieces = {}
    for index in p.tiles():
        tile = p.tile_id(index)
        plane = np.full((6, 10), float(tile))
        pieces[tile] = mp.piece(p, index, plane, (0, 0))
    mosaic = mp.assemble(p, pieces, fill=np.nan)
    assert mosaic.shape == mp.mosaic_shape
    for index in p.tiles():
        (y0, y1), (x0, x1) = p.core(index)[-2:]
        panel = mp.panel(mosaic, mp.layer_of(p, index))
        assert (panel[y0:y1, x0:x1] == p.tile_id(index)).all()
    r, c = mp.panel_origin(1)
    gap = mosaic[:, c - GAP : c] if c else mosaic[r - GAP : r, :]
    assert np.isnan(gap).all()  # blank between panels


def test_many_layers_stay_within_the_pixel_budget() -> None:
    mp = MapPlane.of(plan((400, 4096, 4096), (4, 512, 512)))  # 100 layers
    assert mp.num_panels == 100
    assert max(mp.mosaic_shape) <= MAX_PIXELS + 20 * GAP
    assert mp.step >= 40


def test_2d_and_time_series() -> None:
    mp = MapPlane.of(plan((30, 40), (10, 20)))
    assert mp.layers == () and mp.zs == () and mp.num_panels == 1 and mp.panel_name(0) == ""
    p = plan((3, 8, 30, 40), (1, 4, 10, 20), time_axis=True)
    mp = MapPlane.of(p)
    assert mp.t == 0 and mp.zs == (1, 5)
    assert mp.crosses(p, (0, 1, 0, 0)) and not mp.crosses(p, (1, 0, 0, 0))
    assert mp.head(p, (0, 1, 2, 1)) == (0, 5)
    with pytest.raises(ValueError):
        MapPlane.of(plan((2, 2, 2, 2), (1, 1, 1, 1)))
