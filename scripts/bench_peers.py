"""blockbuster side by side with dask-image on the same volume, chunking and fn.

Each tool runs in its own process; we record wall seconds, the peak RSS summed over that
process and all its children (sampled every 50 ms), fn calls per tile where the tool lets us
count them, and whether the labels equal labelling the whole volume at once (one-to-one).
A tool still running at ``--limit`` seconds is killed and reported as "> limit".

* blockbuster: ``tile_process`` with threshold + ``scipy.ndimage.label``, no halo,
  ``merge_threshold=0`` (exact for connected components), 2 workers.
* dask-image: ``dask_image.ndmeasure.label(image > 0.5)`` on a dask array read from the same
  zarr with the same chunks, computed with the default threaded scheduler into a zarr array.
* Cellpose's ``contrib.distributed_segmentation`` is not run here: it needs zarr < 3 in a
  separate environment (it crashes under zarr 3) and builds a Cellpose model per block.

    python scripts/bench_peers.py [--sizes 64,512,2200] [--limit 600]
"""

from __future__ import annotations

import argparse
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
TILE = (16, 32, 32)

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
}


def make_volume(path: Path, n_tiles: int, seed: int = 0) -> tuple[np.ndarray, tuple[int, ...]]:
    g0 = max(1, round(n_tiles ** (1 / 3)))
    g1 = max(1, round((n_tiles / g0) ** 0.5))
    g2 = max(1, round(n_tiles / (g0 * g1)))
    shape = (g0 * TILE[0], g1 * TILE[1], g2 * TILE[2])
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.random(shape, dtype=np.float32), 2)
    img = (img - img.min()) / (img.max() - img.min())
    arr = zarr.create_array(str(path), shape=shape, chunks=TILE, dtype="float32", overwrite=True)
    arr[:] = img
    return img, shape


def run_tool(code: str, limit: float) -> dict:
    """Run ``code`` in a fresh interpreter; measure wall time and the tree's peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        if time.perf_counter() - start > limit:
            for p in root.children(recursive=True) + [root]:
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
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {
            "wall_s": round(wall, 2),
            "peak_rss_mb": round(peak / 2**20),
            "status": "failed: " + err.strip().splitlines()[-1],
        }
    info = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak / 2**20), "status": "ok", **info}


def one_to_one(expected: np.ndarray, actual: np.ndarray) -> bool:
    if expected.shape != actual.shape or not np.array_equal(expected == 0, actual == 0):
        return False
    fg = expected != 0
    pairs = np.unique(np.stack([expected[fg], actual[fg].astype(np.int64)]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="64,512,2200")
    p.add_argument("--limit", type=float, default=600.0)
    p.add_argument("--out", default="results")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bb-peers-"))
    rows = []
    for n in (int(v) for v in args.sizes.split(",")):
        src = tmp / f"img{n}.zarr"
        img, shape = make_volume(src, n)
        whole = ndi.label(img > 0.5)[0]
        for tool, template in RUNNERS.items():
            out = tmp / f"{tool}{n}.zarr"
            code = template.format(here=str(HERE), src=str(src), out=str(out), tile=TILE)
            row = {
                "tool": tool,
                "tiles_requested": n,
                "volume": "x".join(map(str, shape)),
                **run_tool(code, args.limit),
            }
            if row["status"] == "ok":
                row["equals_whole"] = one_to_one(whole, np.asarray(zarr.open_array(str(out))[:]))
                if row.get("fn_calls") is not None:
                    row["fn_calls_per_tile"] = row["fn_calls"] / row["tiles"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(Path(str(out) + ".blockbuster"), ignore_errors=True)
    Path(args.out).mkdir(exist_ok=True)
    (Path(args.out) / "peers.json").write_text(json.dumps(rows, indent=1))
    for n in sorted({r["tiles_requested"] for r in rows}):
        bb = next(r for r in rows if r["tool"] == "blockbuster" and r["tiles_requested"] == n)
        di = next(r for r in rows if r["tool"] == "dask-image" and r["tiles_requested"] == n)
        if bb["wall_s"] and di["wall_s"]:
            print(
                f"{n} tiles: dask-image / blockbuster wall {di['wall_s'] / bb['wall_s']:.1f}x, "
                f"peak RSS {di['peak_rss_mb'] / bb['peak_rss_mb']:.2f}x"
            )
        else:
            print(
                f"{n} tiles: blockbuster {bb['status']} {bb['wall_s']} s; dask-image {di['status']}"
            )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
