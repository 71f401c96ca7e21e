"""Scaling: planning, stitch+resolve+relabel seconds, files per tile in the run directory and
the resume check of a finished run, from 64 to 100,000 tiles.

Fixed tile size (8x32x32, 2-voxel halo), growing volume, threshold + connected components on
smooth noise so that there are labels to merge across every face. Writes
``results/scaling.csv`` and ``results/scaling.png``, and prints the no-op vs plain-copy ratio
from ``bench_overhead`` for the same run.

    python scripts/bench_scaling.py [--sizes 64,512,2200,10000,100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import daisy  # noqa: E402
from bench_fns import cc_label  # noqa: E402
from bench_overhead import bench_merge, bench_noop  # noqa: E402

from blockbuster.config import RunConfig  # noqa: E402
from blockbuster.pipeline.driver import prepare_run, stage_tasks  # noqa: E402
from blockbuster.run.engines import daisy_pipeline  # noqa: E402

TILE = (8, 32, 32)


def planning_seconds(tmp: Path, n_tiles: int) -> float:
    """Describe the input, cut it into tiles and build daisy's block graph for all tasks."""
    import zarr

    g0 = max(1, round(n_tiles ** (1 / 3)))
    g1 = max(1, round((n_tiles / g0) ** 0.5))
    g2 = max(1, round(n_tiles / (g0 * g1)))
    shape = (g0 * TILE[0], g1 * TILE[1], g2 * TILE[2])
    src = tmp / f"plan{n_tiles}.zarr"
    zarr.create_array(str(src), shape=shape, chunks=TILE, dtype="float32", overwrite=True)
    start = time.perf_counter()
    run, spec, _ = prepare_run(
        str(src),
        cc_label,
        TILE,
        2,
        write_to=tmp / f"plan{n_tiles}_out.zarr",
        sequential_labels=False,
        merge_threshold=0.0,
        overwrite=True,
    )
    segment, stitch, _ = stage_tasks(run, spec.plan)
    daisy.Scheduler(daisy_pipeline([segment, stitch], run, RunConfig()))
    seconds = time.perf_counter() - start
    shutil.rmtree(run.root)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="64,512,2200,10000")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="results")
    p.add_argument("--skip-noop", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bb-scaling-"))
    rows = []
    for n in (int(v) for v in args.sizes.split(",")):
        row = bench_merge(tmp, args.workers, n, TILE)
        row["planning_s"] = round(planning_seconds(tmp, n), 3)
        rows.append(row)
        print(
            f"{row['tiles']:>6} tiles: planning {row['planning_s']:.2f} s, stitch "
            f"{row['stitch_s']:.2f} s, resolve {row['resolve_s']:.3f} s, relabel "
            f"{row['relabel_s']:.2f} s, stitch+resolve+relabel "
            f"{row['stitch_resolve_relabel_s']:.2f} s "
            f"({1000 * row['stitch_resolve_relabel_s'] / row['tiles']:.1f} ms/tile), "
            f"{row['files_per_tile']:.3f} files/tile, resume check {row['resume_check_s']:.2f} s",
            flush=True,
        )
    fields = [
        "tiles",
        "volume",
        "labels",
        "edges",
        "planning_s",
        "segment_s",
        "stitch_s",
        "resolve_s",
        "relabel_s",
        "stitch_resolve_relabel_s",
        "files_per_tile",
        "resume_check_s",
    ]
    with open(out / "scaling.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("x".join(map(str, row[k])) if k == "volume" else row[k]) for k in fields}
            )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles = [r["tiles"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in [
        ("stitch_resolve_relabel_s", "stitch + resolve + relabel"),
        ("stitch_s", "stitch"),
        ("relabel_s", "relabel"),
        ("resolve_s", "resolve (driver)"),
        ("planning_s", "planning"),
    ]:
        ax.plot(tiles, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tiles (8x32x32, halo 2)")
    ax.set_ylabel("seconds")
    ax.set_title(f"blockbuster scaling, {args.workers} workers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    print(f"wrote {out / 'scaling.csv'} and {out / 'scaling.png'}")
    if not args.skip_noop:
        noop = bench_noop(tmp, args.workers, (256, 1024, 1024), (64, 256, 256))
        print(
            f"no-op end to end / plain copy: overlap 0 {noop['noop_overlap0_ratio']:.2f}x, "
            f"overlap 8 {noop['noop_overlap8_ratio']:.2f}x; labels in every tile (threshold "
            f"mask fn), overlap 0 {noop['mask_overlap0_ratio']:.2f}x"
        )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
