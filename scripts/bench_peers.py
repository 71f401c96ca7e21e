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

    python scripts/bench_peers.py [--sizes 64,512,2200] [--limit 600] [--tools ...]
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
    for n in (int(v) for v in args.sizes.split(",")):
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
