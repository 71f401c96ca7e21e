"""blockbuster side by side with dask-image and Cellpose's contrib on the same volume and fn.

Each tool runs in its own process; we record wall seconds, the peak RSS summed over that
process and all its children (sampled every 50 ms), fn calls per tile where the tool lets us
count them, and whether the labels equal labelling the whole volume at once (one-to-one; when
not, how many whole-image objects are split and how many tool labels merge objects). A tool
still running at ``--limit`` seconds is killed and reported as "> limit".

* blockbuster: ``tile_process`` with threshold + ``scipy.ndimage.label``, no halo,
  ``merge_threshold=0`` (exact for connected components), 2 workers.
* dask-image: ``dask_image.ndmeasure.label(image > 0.5)`` on a dask array read from the same
  zarr with the same chunks, computed with the default threaded scheduler into a zarr array.
* cellpose-contrib: ``cellpose.contrib.distributed_segmentation.distributed_eval`` (cellpose
  3.1) run end to end by ``scripts/bench_contrib.py`` in its own environment (``--contrib-python``,
  default ``.venv-contrib/bin/python``; it needs zarr < 3, create it with
  ``scripts/setup_contrib_venv``). contrib has no hook for a custom fn, so its per-block
  ``CellposeModel`` is monkeypatched on the workers with the same threshold + label; everything
  else (no overlap, per-block global IDs, block faces, its face merge, relabel) is contrib's own
  code, on 2 single-threaded dask worker processes. It reads a zarr v2 copy of the volume with
  the same chunks (zarr 2 cannot read v3). Without that environment its row says "not installed".
  Its face merge shrinks labels on the faces first, so thin contacts stay cut: expect
  ``equals_whole: false`` with ``objects_split`` > 0.

With ``--spatialdata SIDE`` it compares, on one 2D image of SIDE² pixels stored as a
SpatialData image element (``c, y, x``, chunks of 512²), what SpatialData users have:

* spatialdata-map_raster: ``spatialdata.map_raster(image, label_block, blockwise=True,
  relabel=True)``, threshold + ``scipy.ndimage.label`` per 512² block, IDs made unique per
  block but never merged across blocks;
* blockbuster-spatialdata: ``tile_process("<store>/images/img", ..., write_to=
  "<store>/labels/bb")`` with the same fn on 512² tiles, 2 workers, into a labels element.

    python scripts/bench_peers.py [--sizes 64,512,2200] [--limit 600] [--tools ...]
    python scripts/bench_peers.py --spatialdata 8192 --sizes ""
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import zarr
from scipy import ndimage as ndi

HERE = Path(__file__).parent
ROOT = HERE.parent
TILE = (16, 32, 32)
CONTRIB_SETUP = "scripts/setup_contrib_venv"

RUNNERS = {
    "blockbuster": """
import sys, json
sys.path.insert(0, {here!r})
from bench_fns import cc_label
from blockbuster import tile_process
r = tile_process({src!r}, cc_label, {tile!r}, 0, write_to={out!r}, num_workers=2,
                 merge_threshold=0.0, overwrite=True)
print(json.dumps({{"fn_calls": r.fn_calls, "tiles": r.tiles_total}}))
""",
    "dask-image": """
import json
import dask.array as da
from dask_image.ndmeasure import label
image = da.from_zarr({src!r})
labels, n = label(image > 0.5)
labels.astype("uint32").to_zarr({out!r}, overwrite=True)
print(json.dumps({{"fn_calls": None, "tiles": image.npartitions}}))
""",
    # run as scripts/bench_contrib.py by the contrib environment's python, see command()
    "cellpose-contrib": None,
}

#: the 2D side by side on a SpatialData store (``--spatialdata``): src is the store
SPATIALDATA_RUNNERS = {
    "spatialdata-map_raster": """
import json, warnings
warnings.simplefilter("ignore")
import numpy as np, spatialdata as sd
from scipy import ndimage as ndi
def label_block(block):
    return ndi.label(block[0] > 0.5)[0].astype(np.uint32)
image = sd.read_zarr({src!r}).images["img"]
labels = sd.map_raster(image, label_block, dims=("y", "x"), blockwise=True, relabel=True,
                       drop_axis=0, dtype=np.uint32)
labels.data.to_zarr({out!r}, overwrite=True)
print(json.dumps({{"fn_calls": None, "tiles": labels.data.npartitions}}))
""",
    "blockbuster-spatialdata": """
import sys, json, shutil
sys.path.insert(0, {here!r})
from bench_fns import first_channel_label
from blockbuster import tile_process
r = tile_process({src!r} + "/images/img", first_channel_label, (512, 512), 0,
                 write_to={src!r} + "/labels/bb", num_workers=2, merge_threshold=0.0)
import zarr
zarr.open_group({src!r} + "/labels/bb", mode="r")["0"]  # the element's full resolution
shutil.copytree({src!r} + "/labels/bb/0", {out!r})
print(json.dumps({{"fn_calls": r.fn_calls, "tiles": r.tiles_total}}))
""",
}


def make_spatialdata_image(store: Path, side: int, seed: int = 0) -> np.ndarray:
    """A SpatialData store with one ``c, y, x`` image element ``img`` of blobs; returns the
    image's one channel."""
    import warnings

    import spatialdata as sd
    from spatialdata.models import Image2DModel

    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.random((side, side), dtype=np.float32), 2)
    img = (img - img.min()) / (img.max() - img.min())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # multiscale: spatialdata 0.7.2 cannot write a single-scale image with ome-zarr 0.18
        element = Image2DModel.parse(
            img[None], dims=("c", "y", "x"), chunks=(1, 512, 512), scale_factors=[2]
        )
        sd.SpatialData(images={"img": element}).write(store)
    return img


def spatialdata_rows(tmp: Path, side: int, limit: float) -> list[dict]:
    """Both 2D runners on one SpatialData store of ``side``² pixels."""
    store = tmp / "sample.zarr"
    img = make_spatialdata_image(store, side)
    whole = ndi.label(img > 0.5)[0]
    rows = []
    for tool, code in SPATIALDATA_RUNNERS.items():
        out = tmp / f"{tool}.zarr"
        logs = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=tmp))
        cmd = [sys.executable, "-c", code.format(here=str(HERE), src=str(store), out=str(out))]
        row = {"tool": tool, "image": f"{side}x{side}", **run_tool(cmd, limit, logs)}
        if row["status"] == "ok":
            labels = np.asarray(zarr.open_array(str(out), mode="r")[:])
            row["equals_whole"] = one_to_one(whole, labels)
            row.update(object_diff(whole, labels))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def make_volume(
    path: Path, n_tiles: int, seed: int = 0, v2_path: Path | None = None
) -> tuple[np.ndarray, tuple[int, ...]]:
    g0 = max(1, round(n_tiles ** (1 / 3)))
    g1 = max(1, round((n_tiles / g0) ** 0.5))
    g2 = max(1, round(n_tiles / (g0 * g1)))
    shape = (g0 * TILE[0], g1 * TILE[1], g2 * TILE[2])
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.random(shape, dtype=np.float32), 2)
    img = (img - img.min()) / (img.max() - img.min())
    arr = zarr.create_array(str(path), shape=shape, chunks=TILE, dtype="float32", overwrite=True)
    arr[:] = img
    if v2_path is not None:  # same data and chunks, readable by zarr 2 (cellpose contrib)
        kw = {"chunks": TILE, "dtype": "float32", "zarr_format": 2, "overwrite": True}
        zarr.create_array(str(v2_path), shape=shape, **kw)[:] = img
    return img, shape


def command(tool: str, src: Path, src_v2: Path, out: Path, contrib_python: Path) -> list[str]:
    if tool == "cellpose-contrib":
        tile = ",".join(map(str, TILE))
        script = str(HERE / "bench_contrib.py")
        return [str(contrib_python), script, str(src_v2), str(out), "--tile", tile]
    code = RUNNERS[tool].format(here=str(HERE), src=str(src), out=str(out), tile=TILE)
    return [sys.executable, "-c", code]


def run_tool(cmd: list[str], limit: float, logs: Path) -> dict:
    """Run ``cmd``; measure wall time and the peak RSS of its process tree.

    Output goes to files, not pipes: contrib's workers print a line per block, which would
    fill a pipe and stall the tool.
    """
    with open(logs / "stdout", "w") as out_f, open(logs / "stderr", "w") as err_f:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            if time.perf_counter() - start > limit:
                for p in root.children(recursive=True) + [root]:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                proc.wait()
                return {"wall_s": None, "peak_rss_mb": round(peak / 2**20), "status": "> limit"}
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)
        wall = time.perf_counter() - start
    out = (logs / "stdout").read_text()
    err = (logs / "stderr").read_text()
    if proc.returncode != 0:
        lines = err.strip().splitlines() or [f"exit code {proc.returncode}"]
        return {
            "wall_s": round(wall, 2),
            "peak_rss_mb": round(peak / 2**20),
            "status": "failed: " + lines[-1],
        }
    info = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak / 2**20), "status": "ok", **info}


def one_to_one(expected: np.ndarray, actual: np.ndarray) -> bool:
    if expected.shape != actual.shape or not np.array_equal(expected == 0, actual == 0):
        return False
    fg = expected != 0
    pairs = np.unique(np.stack([expected[fg], actual[fg].astype(np.int64)]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def object_diff(expected: np.ndarray, actual: np.ndarray) -> dict:
    """How a labelling differs from the whole-image one (for rows that are not equal)."""
    if expected.shape != actual.shape:
        return {"shape": "x".join(map(str, actual.shape))}
    actual = actual.astype(np.int64)
    fg = (expected != 0) & (actual != 0)
    e, a = np.unique(np.stack([expected[fg], actual[fg]]), axis=1)
    return {
        "objects_whole": int(len(np.unique(expected)) - (expected == 0).any()),
        "objects_tool": int(len(np.unique(actual)) - (actual == 0).any()),
        # whole-image objects covered by more than one tool label (cut, not stitched)
        "objects_split": int((np.unique(e, return_counts=True)[1] > 1).sum()),
        # tool labels covering more than one whole-image object
        "labels_merging": int((np.unique(a, return_counts=True)[1] > 1).sum()),
        "fg_mismatch_voxels": int(((expected != 0) != (actual != 0)).sum()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="64,512,2200")
    p.add_argument("--limit", type=float, default=600.0)
    p.add_argument("--out", default="results")
    p.add_argument("--tools", default=",".join(RUNNERS))
    p.add_argument(
        "--spatialdata",
        type=int,
        default=0,
        metavar="SIDE",
        help="also compare with spatialdata.map_raster on a SIDE x SIDE 2D image (0: no)",
    )
    p.add_argument(
        "--contrib-python",
        default=str(ROOT / ".venv-contrib" / "bin" / "python"),
        help=f"python of the cellpose-contrib environment (create it with {CONTRIB_SETUP})",
    )
    args = p.parse_args()
    tools = args.tools.split(",")
    unknown = set(tools) - set(RUNNERS)
    if unknown:
        p.error(f"unknown tools {sorted(unknown)}; choose from {list(RUNNERS)}")
    contrib_python = Path(args.contrib_python)
    contrib_ok = "cellpose-contrib" in tools and contrib_python.exists()
    tmp = Path(tempfile.mkdtemp(prefix="bb-peers-"))
    rows = []
    for n in (int(v) for v in args.sizes.split(",") if v):
        src, src_v2 = tmp / f"img{n}.zarr", tmp / f"img{n}.v2.zarr"
        img, shape = make_volume(src, n, v2_path=src_v2 if contrib_ok else None)
        whole = ndi.label(img > 0.5)[0]
        for tool in tools:
            out = tmp / f"{tool}{n}.zarr"
            row = {"tool": tool, "tiles_requested": n, "volume": "x".join(map(str, shape))}
            if tool == "cellpose-contrib" and not contrib_ok:
                row["status"] = (
                    f"not installed: no {contrib_python}; create it with {CONTRIB_SETUP}"
                    " (or pass --contrib-python)"
                )
            else:
                logs = Path(tempfile.mkdtemp(prefix=f"{tool}{n}-", dir=tmp))
                cmd = command(tool, src, src_v2, out, contrib_python)
                row.update(run_tool(cmd, args.limit, logs))
            if row["status"] == "ok":
                labels = np.asarray(zarr.open_array(str(out), mode="r")[:])
                row["equals_whole"] = one_to_one(whole, labels)
                if not row["equals_whole"]:
                    row.update(object_diff(whole, labels))
                if row.get("fn_calls") is not None:
                    row["fn_calls_per_tile"] = row["fn_calls"] / row["tiles"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            for leftover in (out, Path(str(out) + ".blockbuster"), Path(str(out) + ".work")):
                shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(src_v2, ignore_errors=True)
    Path(args.out).mkdir(exist_ok=True)
    if args.spatialdata:
        sd_rows = spatialdata_rows(tmp, args.spatialdata, args.limit)
        (Path(args.out) / "peers_spatialdata.json").write_text(json.dumps(sd_rows, indent=1))
        by = {r["tool"]: r for r in sd_rows}
        bb, mr = by["blockbuster-spatialdata"], by["spatialdata-map_raster"]
        if bb.get("wall_s") and mr.get("wall_s"):
            print(
                f"{args.spatialdata}² image: map_raster {mr['objects_tool']:,} labels for "
                f"{mr['objects_whole']:,} objects ({mr['objects_split']:,} cut at block "
                f"borders), {mr['wall_s']} s; blockbuster {bb['objects_tool']:,} labels, "
                f"equal to the whole image: {bb['equals_whole']}, {bb['wall_s']} s "
                f"({bb['wall_s'] / mr['wall_s']:.1f}x map_raster's time)"
            )
    if not rows:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    (Path(args.out) / "peers.json").write_text(json.dumps(rows, indent=1))
    for n in sorted({r["tiles_requested"] for r in rows}):
        at_n = {r["tool"]: r for r in rows if r["tiles_requested"] == n}
        bb = at_n.get("blockbuster")
        parts = []
        for tool, r in at_n.items():
            if tool != "blockbuster" and bb and bb.get("wall_s") and r.get("wall_s"):
                parts.append(
                    f"{tool} / blockbuster wall {r['wall_s'] / bb['wall_s']:.1f}x, "
                    f"peak RSS {r['peak_rss_mb'] / bb['peak_rss_mb']:.2f}x"
                )
            elif tool != "blockbuster" or not r.get("wall_s"):
                parts.append(f"{tool} {r['status']} {r.get('wall_s')} s")
        print(f"{n} tiles: " + "; ".join(parts))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
