"""The Cellpose plugin with a real model file (random weights, built here: no download).

The model is built for the installed Cellpose: a cellpose 3 U-net in the default environment
(``./scripts/test``), a cellpose 4 ``CPSAM`` (ViT-L, 1.2 GB) in the one that
``scripts/test_cellpose4`` sets up.
"""

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
from blockbuster.plugins.cellpose import cellpose_fn, cellpose_major, default_model, resolve_model

CP4 = cellpose_major() >= 4
# random weights label nothing at the default thresholds; these give some masks
LOOSE = {"cellprob_threshold": -0.5 if CP4 else -0.065, "flow_threshold": 0.0}
# a built-in name of the installed Cellpose, and another whose file has an odd name
BUILTIN = "cpsam" if CP4 else "cyto3"


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)  # these random weights do find masks with LOOSE thresholds
    path = tmp_path_factory.mktemp("cellpose") / "random_model"
    if CP4:
        from cellpose.vit import CPSAM

        CPSAM().save_model(str(path))
    else:
        from cellpose.resnet_torch import CPnet

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
        cellpose_fn(BUILTIN)
    assert str(models_folder / BUILTIN) in str(err.value)
    assert "CELLPOSE_LOCAL_MODELS_PATH" in str(err.value)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        cellpose_fn()  # the installed Cellpose's default model
    if not CP4:
        with pytest.raises(FileNotFoundError, match="nucleitorch_0"):
            cellpose_fn("nuclei")


def test_missing_path_and_unknown_name(models_folder: Path, no_network: None) -> None:
    with pytest.raises(FileNotFoundError, match="no weights file there"):
        cellpose_fn("/no/such/weights")
    with pytest.raises(ValueError, match="not a Cellpose model name"):
        cellpose_fn("definitely_not_a_model")


def test_builtin_name_found_in_the_models_folder(models_folder: Path, model_file: Path) -> None:
    shutil.copy(model_file, models_folder / BUILTIN)
    assert resolve_model(BUILTIN) == models_folder / BUILTIN
    assert cellpose_fn(BUILTIN, diameter=30).weights == str(models_folder / BUILTIN)
    assert default_model() == ("cpsam_v2" if CP4 else "cyto3")


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


# cellpose 4 runs its ViT once per plane (padded to 256 x 256), and in 3D once per plane along
# each axis: about 3 s each on a CPU, so its 3D volumes here are tiny
VOL, VOL_TILE, VOL_HALO = ((2, 8, 12), (2, 8, 6), 1) if CP4 else ((8, 48, 64), (8, 48, 32), 4)


@pytest.mark.parametrize("do_3D", [True, False])
def test_tiles_3d(tmp_path: Path, model_file: Path, do_3D: bool) -> None:
    vol = np.random.default_rng(1).random(VOL).astype(np.float32)
    src = write_zarr(tmp_path / "vol.zarr", vol)
    # without do_3D, blocks are segmented plane by plane, linked by stitch_threshold
    extra = {} if do_3D else {"stitch_threshold": 0.1}
    fn3 = cellpose_fn(model_file, diameter=30, do_3D=do_3D, **LOOSE, **extra)
    r3 = tile_process(src, fn3, VOL_TILE, VOL_HALO, write_to=tmp_path / "o3.zarr")
    assert r3.fn_calls == 2
    assert zarr.open_array(str(tmp_path / "o3.zarr")).shape == vol.shape


def test_tiles_with_channels(tmp_path: Path, model_file: Path) -> None:
    rng = np.random.default_rng(2)
    two = rng.random((2, 64, 96)).astype(np.float32)
    src2 = write_zarr(tmp_path / "two.zarr", two)
    if CP4:
        with pytest.raises(ValueError, match="pass multichannel=True instead"):
            cellpose_fn(model_file, channels=(1, 2))
        fnc = cellpose_fn(model_file, diameter=30, multichannel=True, **LOOSE)
    else:
        fnc = cellpose_fn(model_file, diameter=30, channels=(1, 2), **LOOSE)
    rc = tile_process(src2, fnc, (64, 48), 8, write_to=tmp_path / "oc.zarr", channels=True)
    assert rc.fn_calls == 2
    out = zarr.open_array(str(tmp_path / "oc.zarr"))[:]
    assert out.shape == (64, 96)
    assert rc.num_labels == len(np.unique(out)) - 1 > 0
    # a 3D block with channels: the channel axis is not taken for z
    vol2 = rng.random((2, *VOL)).astype(np.float32)
    src3 = write_zarr(tmp_path / "vol2.zarr", vol2)
    fn3c = cellpose_fn(model_file, diameter=30, do_3D=True, multichannel=True, **LOOSE)
    r3c = tile_process(src3, fn3c, VOL, 0, write_to=tmp_path / "o3c.zarr", channels=True)
    assert r3c.fn_calls == 1
    assert zarr.open_array(str(tmp_path / "o3c.zarr")).shape == VOL
