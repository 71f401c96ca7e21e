"""The Cellpose plugin with a real model file (random weights, built here: no download)."""

from __future__ import annotations

import functools
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import write_zarr
from fns import logged_loads

from blockbuster import tile_process
from blockbuster.plugins.cellpose import cellpose_fn, resolve_model

# random weights label nothing at the default thresholds; these give some masks
LOOSE = {"cellprob_threshold": -0.065, "flow_threshold": 0.0}


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from cellpose.resnet_torch import CPnet

    torch.manual_seed(0)  # these random weights do find masks with LOOSE thresholds
    path = tmp_path_factory.mktemp("cellpose") / "random_model"
    net = CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=30.0)
    net.save_model(str(path))
    return path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("cellpose_fn tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def models_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import cellpose.models

    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setattr(cellpose.models, "MODEL_DIR", folder)
    return folder


def test_missing_builtin_model_is_a_clear_error_without_download(
    models_folder: Path, no_network: None
) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads") as err:
        cellpose_fn("cyto3")
    assert str(models_folder / "cyto3") in str(err.value)
    assert "CELLPOSE_LOCAL_MODELS_PATH" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nucleitorch_0"):
        cellpose_fn("nuclei")


def test_missing_path_and_unknown_name(models_folder: Path, no_network: None) -> None:
    with pytest.raises(FileNotFoundError, match="no weights file there"):
        cellpose_fn("/no/such/weights")
    with pytest.raises(ValueError, match="not a Cellpose model name"):
        cellpose_fn("definitely_not_a_model")


def test_builtin_name_found_in_the_models_folder(models_folder: Path, model_file: Path) -> None:
    shutil.copy(model_file, models_folder / "cyto3")
    assert resolve_model("cyto3") == models_folder / "cyto3"
    assert cellpose_fn("cyto3", diameter=30).weights == str(models_folder / "cyto3")


def test_tiles_2d_load_the_model_once_per_worker(tmp_path: Path, model_file: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.random((128, 128)).astype(np.float32)
    src = write_zarr(tmp_path / "img.zarr", img)
    log = tmp_path / "log"
    log.mkdir()
    fn = cellpose_fn(model_file, diameter=30, **LOOSE)
    wrapped = functools.partial(logged_loads, fn=fn, log_dir=str(log))
    result = tile_process(src, wrapped, (64, 64), 16, write_to=tmp_path / "out.zarr", num_workers=2)
    assert result.fn_calls == result.tiles_total == 4
    entries = [p.read_text().split() for p in log.iterdir()]
    assert len(entries) == 4
    assert all(loads == "1" for _, loads in entries)  # never reloaded within a process
    out = zarr.open_array(str(tmp_path / "out.zarr"))[:]
    assert out.shape == img.shape
    assert result.num_labels == len(np.unique(out)) - 1 > 0


def test_tiles_3d_and_channels(tmp_path: Path, model_file: Path) -> None:
    rng = np.random.default_rng(1)
    vol = rng.random((8, 48, 64)).astype(np.float32)
    src = write_zarr(tmp_path / "vol.zarr", vol)
    fn3 = cellpose_fn(model_file, diameter=30, do_3D=True, **LOOSE)
    r3 = tile_process(src, fn3, (8, 48, 32), 4, write_to=tmp_path / "o3.zarr")
    assert r3.fn_calls == 2
    assert zarr.open_array(str(tmp_path / "o3.zarr")).shape == vol.shape

    two = rng.random((2, 64, 96)).astype(np.float32)
    src2 = write_zarr(tmp_path / "two.zarr", two)
    fnc = cellpose_fn(model_file, diameter=30, channels=(1, 2), **LOOSE)
    rc = tile_process(src2, fnc, (64, 48), 8, write_to=tmp_path / "oc.zarr", channels=True)
    assert rc.fn_calls == 2
    assert zarr.open_array(str(tmp_path / "oc.zarr")).shape == (64, 96)
