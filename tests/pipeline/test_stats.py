"""The image statistics pass: exact histograms, percentiles as numpy computes them, Otsu, the
coarse copy (from a coarse OME level or pooled), and their persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from ngff import space, write_ngff

from blockbuster.io.sources import describe_source
from blockbuster.pipeline import stats as stats_mod
from blockbuster.pipeline.stats import (
    Histogram,
    ImageStats,
    compute_stats,
    load_stats,
    prepare_fn,
    save_stats,
)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(0, 300), min_size=1, max_size=200),
    q=st.floats(0, 100),
)
def test_percentile_equals_numpy_on_exact_bins(values: list[int], q: float) -> None:
    counts = np.bincount(np.asarray(values), minlength=301).astype(np.int64)
    hist = Histogram(0.0, 1.0, counts, True)
    assert hist.percentile(q) == pytest.approx(np.percentile(values, q), abs=1e-9)


def _otsu_brute_force(img: np.ndarray) -> float:
    """The split between two consecutive values that maximises the between-class variance."""
    values = np.unique(img).astype(np.float64)
    flat = img.ravel().astype(np.float64)
    best, where = -1.0, 0.0
    for lo, hi in zip(values[:-1], values[1:]):
        low, high = flat[flat <= lo], flat[flat > lo]
        var = low.size * high.size * (low.mean() - high.mean()) ** 2
        if var > best:
            best, where = var, (lo + hi) / 2
    return where


def test_otsu_equals_the_brute_force_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = np.where(rng.random((48, 40)) < 0.3, 1500, 200).astype(np.uint16)
    img += rng.integers(0, 120, img.shape).astype(np.uint16)
    path = write_zarr(tmp_path / "img.zarr", img, chunks=(32, 32))
    stats = compute_stats(describe_source(path, 2))
    assert stats.origin == "every voxel"
    assert stats.channels[0].total == img.size
    assert stats.otsu() == _otsu_brute_force(img)
    assert 320 < stats.otsu() < 1500
    for q in (0, 1, 50, 99, 100):
        assert stats.percentile(q) == pytest.approx(np.percentile(img, q))
    # the coarse copy is the image itself (it fits the budget)
    np.testing.assert_array_equal(stats.coarse[0, 0], img.astype(np.float32))


def test_channels_and_pooled_coarse_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_mod, "COARSE_VOXELS", 2 * 25 * 20)  # forces pooling by 4
    rng = np.random.default_rng(1)
    img = rng.integers(0, 1000, (2, 100, 78)).astype(np.uint16)
    img[1] += 5000
    path = write_zarr(tmp_path / "img.zarr", img, chunks=(1, 24, 32))
    source = describe_source(path, 2, channels=True)
    stats = compute_stats(source, threads=3)
    assert len(stats.channels) == 2
    assert stats.factors == (4, 4)
    for c in range(2):
        assert stats.percentile(50, c) == pytest.approx(np.percentile(img[c], 50))
    # mean of each 4x4 window, the last ones narrower
    y = np.add.reduceat(img.astype(np.float64), np.arange(0, 100, 4), axis=1)
    y = np.add.reduceat(y, np.arange(0, 78, 4), axis=2)
    wy = np.minimum(np.arange(0, 100, 4) + 4, 100) - np.arange(0, 100, 4)
    wx = np.minimum(np.arange(0, 78, 4) + 4, 78) - np.arange(0, 78, 4)
    expected = y / wy[:, None] / wx[None, :]
    np.testing.assert_allclose(stats.coarse[0], expected, rtol=1e-6)


def test_float_image_histogram(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    img = rng.normal(10.0, 2.0, (64, 64)).astype(np.float32)
    stats = compute_stats(describe_source(write_zarr(tmp_path / "f.zarr", img), 2))
    assert not stats.channels[0].exact
    width = stats.channels[0].width
    assert stats.percentile(50) == pytest.approx(np.percentile(img, 50), abs=2 * width)


def test_reads_a_coarse_ome_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_mod, "MIN_VOXELS", 16 * 16)
    rng = np.random.default_rng(3)
    full = rng.integers(0, 4000, (64, 64)).astype(np.uint16)
    levels = [full, full[::2, ::2].copy(), full[::4, ::4].copy(), full[::8, ::8].copy()]
    transforms = [[{"type": "scale", "scale": [2.0**i, 2.0**i]}] for i in range(4)]
    path = write_ngff(tmp_path / "img.ome.zarr", "0.5", levels, space("y", "x"), transforms)
    stats = compute_stats(describe_source(path, 2))
    # 16x16 = MIN_VOXELS: level 2 is the coarsest that keeps enough voxels
    assert stats.origin == "1 full-resolution chunks; coarse copy level 2 (4x4)"
    assert stats.factors == (4, 4)
    np.testing.assert_array_equal(stats.coarse[0, 0], levels[2])
    # the histogram is the full resolution's, not the level's
    assert stats.channels[0].total == 64 * 64
    assert stats.percentile(99) == pytest.approx(np.percentile(full, 99))
    # from level 1 (tile_process(level=1)), factors count from that level
    stats1 = compute_stats(describe_source(path, 2, level=1))
    assert stats1.origin.endswith("coarse copy level 2 (2x2)")


def test_saved_stats_round_trip_and_damage_is_detected(tmp_path: Path) -> None:
    img = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
    stats = compute_stats(describe_source(write_zarr(tmp_path / "i.zarr", img), 2))
    path = tmp_path / "stats.npz"
    save_stats(path, stats)
    again = load_stats(path, stats.digest())
    assert isinstance(again, ImageStats)
    assert again.digest() == stats.digest()
    assert again.percentile(37) == stats.percentile(37)
    assert load_stats(path, "another digest") is None
    path.write_bytes(path.read_bytes()[:50])
    assert load_stats(path) is None
    assert load_stats(tmp_path / "missing.npz") is None


def test_prepare_fn_calls_prepare_and_checks_its_result(tmp_path: Path) -> None:
    img = np.zeros((8, 8), np.uint8)
    stats = compute_stats(describe_source(write_zarr(tmp_path / "i.zarr", img), 2))

    class Prepares:
        def __init__(self, value: object = None) -> None:
            self.value = value

        def __call__(self, block: np.ndarray) -> np.ndarray:
            return block

        def prepare(self, s: ImageStats) -> object:
            return Prepares(s) if self.value is None else self.value

    prepared = prepare_fn(Prepares(), stats)
    assert isinstance(prepared, Prepares) and prepared.value is stats
    assert prepare_fn(np.asarray, stats) is np.asarray
    with pytest.raises(TypeError, match=r"fn.prepare\(stats\) returned int"):
        prepare_fn(Prepares(3), stats)


def test_a_run_measures_once_and_a_resume_reuses_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blockbuster import tile_process
    from blockbuster.config import RunConfig
    from blockbuster.pipeline import driver
    from blockbuster.plugins import watershed_fn

    rng = np.random.default_rng(4)
    img = rng.random((40, 50)).astype(np.float32)
    src = write_zarr(tmp_path / "img.zarr", img, chunks=(20, 25))
    config = RunConfig(tile_shape=(20, 25), overlap=2).validate()
    fn = watershed_fn()  # its prepare() takes the image's Otsu threshold
    run, spec, _, lease = driver.prepare(src, fn, config, tmp_path / "o.zarr")
    lease.release()  # the driver stopped before any tile ran
    kept = load_stats(run.stats_file, spec.stats_digest)
    assert kept is not None and kept.digest() == spec.stats_digest

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(driver, "compute_stats", refuse)
    _, again, resume, lease = driver.prepare(src, fn, config, tmp_path / "o.zarr")
    lease.release()
    assert resume and again.stats_digest == spec.stats_digest
    monkeypatch.undo()
    # damaged: measured again, the same statistics, so the run still resumes
    run.stats_file.write_bytes(b"garbage")
    _, third, resume, lease = driver.prepare(src, fn, config, tmp_path / "o.zarr")
    lease.release()
    assert resume and third.stats_digest == spec.stats_digest
    # and the finished run shows them
    result = tile_process(
        src,
        fn,
        (20, 25),
        2,
        write_to=tmp_path / "o.zarr",
        backend="serial",
        status_page=None,
    )
    assert result.stats is not None and result.stats.digest() == spec.stats_digest
    assert "intensity       p1 " in result.summary()


def test_a_changed_input_is_refused_by_its_statistics(tmp_path: Path) -> None:
    from blockbuster.config import RunConfig
    from blockbuster.pipeline import driver
    from blockbuster.plugins import watershed_fn

    img = np.zeros((40, 50), np.float32)
    src = write_zarr(tmp_path / "img.zarr", img, chunks=(40, 50))
    config = RunConfig(tile_shape=(20, 25)).validate()
    _, _, _, lease = driver.prepare(src, watershed_fn(), config, tmp_path / "o.zarr")
    lease.release()
    run = driver.RunDir.for_output(tmp_path / "o.zarr")
    run.stats_file.unlink()  # so the statistics are measured again, from the new input
    img[10, 10] = 5.0
    write_zarr(tmp_path / "img.zarr", img, chunks=(40, 50))
    with pytest.raises(ValueError, match="input image changed"):
        driver.prepare(src, watershed_fn(), config, tmp_path / "o.zarr")


def test_no_statistics_pass_for_a_fn_that_does_not_use_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fn without ``prepare`` and no ``mask="auto"``: the image is not read for statistics,
    and the run directory and the summary have none."""
    from fns import cc_label

    from blockbuster import tile_process
    from blockbuster.config import RunConfig
    from blockbuster.pipeline import driver

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("statistics measured")

    monkeypatch.setattr(driver, "compute_stats", refuse)
    img = np.random.default_rng(5).random((40, 50)).astype(np.float32)
    src = write_zarr(tmp_path / "img.zarr", img, chunks=(20, 25))
    config = RunConfig(tile_shape=(20, 25)).validate()
    run, spec, _, lease = driver.prepare(src, cc_label, config, tmp_path / "o.zarr")
    lease.release()
    assert spec.stats_digest == "" and not run.stats_file.exists()
    result = tile_process(
        src, cc_label, (20, 25), write_to=tmp_path / "o.zarr", backend="serial", status_page=None
    )
    assert result.stats is None and "intensity" not in result.summary()
