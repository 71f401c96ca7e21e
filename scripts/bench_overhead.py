"""What blockbuster costs on top of the work itself.

1. End to end with a no-op fn (returns zeros) against a plain zarr copy of the same volume
   (read every tile, write it to a new array) with the same number of processes, in this run.
2. Stitch, resolve and relabel seconds at growing tile counts (fixed tile size, growing volume),
   with a real connected-component fn so that there are labels to merge.

    python scripts/bench_overhead.py [--workers 2] [--quick]

``--case copy|noop0|noop8|mask|one --tmp DIR`` runs one case of part 1 and exits (the image
is made in DIR the first time; ``one`` is the 1-tile run of a run's fixed cost; the status
page is off), for timing whole processes from outside, paired, e.g.
``hyperfine -N 'python scripts/bench_overhead.py --case noop8 --tmp /tmp/b'
'python scripts/bench_overhead.py --case copy --tmp /tmp/b'``: that counts the interpreter's
start and imports on both sides, as a user's run has them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from bench_fns import cc_label, mask, noop  # noqa: E402

from blockbuster import tile_process  # noqa: E402
from blockbuster.config import RunConfig  # noqa: E402
from blockbuster.io.outputs import create_output  # noqa: E402
from blockbuster.pipeline.driver import prepare_run, stage_tasks  # noqa: E402
from blockbuster.pipeline.resolve import resolve  # noqa: E402
from blockbuster.pipeline.table import EquivalenceTable  # noqa: E402
from blockbuster.run.driver import verify  # noqa: E402
from blockbuster.run.engines import run_engine  # noqa: E402
from blockbuster.run.lease import Lease  # noqa: E402
from blockbuster.synthetic import make_nuclei_volume  # noqa: E402


def _copy_boxes(args: tuple[str, str, list[tuple[tuple[int, int], ...]]]) -> None:
    src, dst, boxes = args
    a = zarr.open_array(src, mode="r")
    b = zarr.open_array(dst, mode="r+")
    for box in boxes:
        sl = tuple(slice(s, e) for s, e in box)
        b[sl] = a[sl]


def plain_copy(src: str, dst: str, tile: tuple[int, ...], workers: int) -> float:
    """Copy ``src`` to a new array tile by tile with ``workers`` processes."""
    a = zarr.open_array(src, mode="r")
    start = time.perf_counter()
    zarr.create_array(dst, shape=a.shape, chunks=tile, dtype=a.dtype, overwrite=True)
    grid = [range(0, s, t) for s, t in zip(a.shape, tile)]
    boxes = [
        tuple((int(s), int(min(s + t, n))) for s, t, n in zip(starts, tile, a.shape))
        for starts in np.array(np.meshgrid(*grid, indexing="ij")).reshape(len(tile), -1).T
    ]
    parts = [(src, dst, boxes[i::workers]) for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_copy_boxes, parts))
    return time.perf_counter() - start


def bench_noop(tmp: Path, workers: int, shape: tuple[int, ...], tile: tuple[int, ...]) -> dict:
    image = tmp / "nuclei.zarr"
    make_nuclei_volume(image, shape=shape, count=int(30_000 * np.prod(shape) / 2**28), chunks=tile)
    copy_s = plain_copy(str(image), str(tmp / "copy.zarr"), tile, workers)
    rows = {"volume": list(shape), "tile": list(tile), "copy_s": round(copy_s, 2)}
    # fixed cost of a run: one tile, so nearly all of it is starting workers and daisy
    one = tmp / "one.zarr"
    zarr.create_array(str(one), shape=(8, 8, 8), dtype="uint16", overwrite=True)[:] = 1
    start = time.perf_counter()
    tile_process(
        str(one),
        noop,
        (8, 8, 8),
        0,
        write_to=tmp / "one_out.zarr",
        num_workers=workers,
        overwrite=True,
    )
    rows["fixed_s"] = round(time.perf_counter() - start, 2)
    for overlap in (0, 8):
        start = time.perf_counter()
        r = tile_process(
            str(image),
            noop,
            tile,
            overlap,
            write_to=tmp / f"noop{overlap}.zarr",
            num_workers=workers,
            overwrite=True,
        )
        wall = time.perf_counter() - start
        rows[f"noop_overlap{overlap}_s"] = round(wall, 2)
        rows[f"noop_overlap{overlap}_ratio"] = round(wall / copy_s, 2)
        assert r.fn_calls == r.tiles_total
    # the same input stored with chunks half the tile per axis: a halo then decodes 1.5^3 the
    # tile's voxels instead of 3^3 (zarr decodes every chunk a read touches in full)
    half = tuple(max(1, t // 2) for t in tile)
    src = zarr.open_array(str(image), mode="r")
    rechunked = zarr.create_array(
        str(tmp / "nuclei_half.zarr"), shape=src.shape, chunks=half, dtype=src.dtype, overwrite=True
    )
    for z in range(0, src.shape[0], tile[0]):
        rechunked[z : z + tile[0]] = src[z : z + tile[0]]
    start = time.perf_counter()
    r = tile_process(
        str(tmp / "nuclei_half.zarr"),
        noop,
        tile,
        8,
        write_to=tmp / "noop8_half.zarr",
        num_workers=workers,
        overwrite=True,
    )
    wall = time.perf_counter() - start
    rows["input_half_chunks"] = list(half)
    rows["noop_overlap8_half_chunks_s"] = round(wall, 2)
    rows["noop_overlap8_half_chunks_ratio"] = round(wall / copy_s, 2)
    assert r.fn_calls == r.tiles_total
    # labels in every tile: every stage and output chunk written, every face compared
    start = time.perf_counter()
    r = tile_process(
        str(image), mask, tile, 0, write_to=tmp / "mask.zarr", num_workers=workers, overwrite=True
    )
    wall = time.perf_counter() - start
    one = zarr.open_array(str(image), mode="r")[tuple(slice(0, t) for t in tile)]
    fn_start = time.perf_counter()
    mask(one)
    rows["mask_fn_only_s"] = round((time.perf_counter() - fn_start) * r.tiles_total / workers, 2)
    rows["mask_overlap0_s"] = round(wall, 2)
    rows["mask_overlap0_ratio"] = round(wall / copy_s, 2)
    return rows


def bench_merge(tmp: Path, workers: int, n_tiles: int, tile: tuple[int, ...]) -> dict:
    """Stitch, resolve, relabel seconds for a volume of about ``n_tiles`` tiles."""
    # a grid close to n_tiles
    g0 = max(1, round(n_tiles ** (1 / 3)))
    g1 = max(1, round((n_tiles / g0) ** 0.5))
    g2 = max(1, round(n_tiles / (g0 * g1)))
    shape = (g0 * tile[0], g1 * tile[1], g2 * tile[2])
    rng = np.random.default_rng(0)
    img = zarr.create_array(
        str(tmp / f"blobs{n_tiles}.zarr"), shape=shape, chunks=tile, dtype="float32", overwrite=True
    )
    # blobs written slab by slab (smooth noise thresholded at 0.5 -> many cut objects)
    for z in range(0, shape[0], tile[0]):
        slab = ndi.gaussian_filter(rng.random((tile[0], *shape[1:])), 2).astype(np.float32)
        img[z : z + tile[0]] = (slab - slab.min()) / (slab.max() - slab.min())
    out = tmp / f"merge{n_tiles}.zarr"
    run, spec, _ = prepare_run(
        str(tmp / f"blobs{n_tiles}.zarr"),
        cc_label,
        tile,
        2,
        write_to=out,
        sequential_labels=True,
        merge_threshold=0.0,
        overwrite=True,
    )
    plan = spec.plan
    lease = Lease(run.root).acquire()  # workers serve only a run a driver holds
    config = RunConfig(num_workers=workers, timeout=600, max_retries=0)
    seg, st, rl = stage_tasks(run, plan)
    st.upstream = ()  # timed alone, once segment is done (the driver runs them together)
    run.write_tasks([seg, st, rl])

    def timed(task):  # one task alone on daisy's workers, as the driver runs it
        start = time.perf_counter()
        reports = run_engine("daisy", [task], run, config)
        return reports, time.perf_counter() - start

    reps, seg_s = timed(seg)
    reps2, stitch_s = timed(st)
    t = time.perf_counter()
    with EquivalenceTable(run.table) as table:
        done = run.task_records(seg).done_records()
        table.replace_tiles((k, r["n_core"], r["n_labels"]) for k, r in sorted(done.items()))
        stitch = run.task_records(st)
        table.replace_edges(stitch.edges(sorted(b.key for b in st.blocks())))
        res = resolve(table, plan.num_tiles, True)
        n_edges = len(table.all_edges())
    resolve_s = time.perf_counter() - t
    create_output(out, spec.source, plan.tile, "uint64")
    reps3, relabel_s = timed(rl)
    assert all(r.ok for r in [*reps.values(), *reps2.values(), *reps3.values()])
    files = sum(len(names) for _, _, names in os.walk(run.root))
    # what a resume of the finished run does before deciding there is nothing to run:
    # every record of every task read, its CRC checked and its output found whole
    t = time.perf_counter()
    checked = verify([seg, st, rl], run)
    resume_s = time.perf_counter() - t
    assert not any(c.missing for c in checked.values())
    lease.release()
    shutil.rmtree(run.root)
    return {
        "tiles": plan.num_tiles,
        "volume": list(shape),
        "labels": res.num_labels,
        "edges": n_edges,
        "segment_s": round(seg_s, 2),
        "stitch_s": round(stitch_s, 2),
        "resolve_s": round(resolve_s, 3),
        "relabel_s": round(relabel_s, 2),
        "stitch_resolve_relabel_s": round(stitch_s + resolve_s + relabel_s, 2),
        "files_per_tile": round(files / plan.num_tiles, 3),
        "resume_check_s": round(resume_s, 3),
    }


CASES = {"noop0": (noop, 0), "noop8": (noop, 8), "mask": (mask, 0)}


def one_case(case: str, tmp: Path, workers: int, shape: tuple[int, ...]) -> None:
    """Run one case of part 1 (``copy`` or one of :data:`CASES`) on the image in ``tmp``."""
    tile = (64, 256, 256)
    image = tmp / "nuclei.zarr"
    if not (image / "zarr.json").exists():
        count = int(30_000 * np.prod(shape) / 2**28)
        make_nuclei_volume(image, shape=shape, count=count, chunks=tile)
    start = time.perf_counter()
    if case == "copy":
        plain_copy(str(image), str(tmp / "copy.zarr"), tile, workers)
    elif case == "one":
        one = tmp / "one.zarr"
        zarr.create_array(str(one), shape=(8, 8, 8), dtype="uint16", overwrite=True)[:] = 1
        r = tile_process(
            str(one), noop, (8, 8, 8), 0, write_to=tmp / "one_out.zarr", num_workers=workers,
            overwrite=True, status_page=None,
        )  # fmt: skip
        assert r.ok
    else:
        fn, overlap = CASES[case]
        r = tile_process(
            str(image),
            fn,
            tile,
            overlap,
            write_to=tmp / f"{case}.zarr",
            num_workers=workers,
            overwrite=True,
            status_page=None,
        )
        assert r.ok and r.fn_calls == r.tiles_total
    print(f"{case}: {time.perf_counter() - start:.2f} s in process")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--tmp", default=None)
    p.add_argument("--no-merge", action="store_true", help="only the no-op vs copy part")
    p.add_argument(
        "--case", choices=["copy", "one", *CASES], help="run only this case (needs --tmp)"
    )
    args = p.parse_args()
    shape = (64, 512, 512) if args.quick else (256, 1024, 1024)
    if args.case:
        if not args.tmp:
            p.error("--case needs --tmp DIR (the image is made there once and kept)")
        Path(args.tmp).mkdir(parents=True, exist_ok=True)
        one_case(args.case, Path(args.tmp), args.workers, shape)
        return
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="bb-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    noop_rows = bench_noop(tmp, args.workers, shape, (64, 256, 256))
    print(json.dumps({"noop_vs_copy": noop_rows}))
    sizes = [] if args.no_merge else [64, 512] if args.quick else [64, 512, 2200]
    merge_rows = []
    for n in sizes:
        row = bench_merge(tmp, args.workers, n, (8, 32, 32))
        merge_rows.append(row)
        print(json.dumps({"merge": row}))
    for row in merge_rows:
        base = merge_rows[0]
        per_tile = row["stitch_resolve_relabel_s"] / row["tiles"]
        base_per_tile = base["stitch_resolve_relabel_s"] / base["tiles"]
        print(
            f"{row['tiles']:>6} tiles: stitch+resolve+relabel "
            f"{row['stitch_resolve_relabel_s']:.2f} s"
            f" ({per_tile * 1000:.1f} ms/tile, {per_tile / base_per_tile:.2f}x the per-tile cost"
            f" at {base['tiles']} tiles)"
        )
    print(
        f"no-op end to end / plain copy: overlap 0 {noop_rows['noop_overlap0_ratio']:.2f}x, "
        f"overlap 8 {noop_rows['noop_overlap8_ratio']:.2f}x (copy {noop_rows['copy_s']:.2f} s; "
        f"fixed cost of any run, 1 tile: {noop_rows['fixed_s']:.2f} s); overlap 8 with input "
        f"chunks {noop_rows['input_half_chunks']} (half the tile): "
        f"{noop_rows['noop_overlap8_half_chunks_ratio']:.2f}x"
    )
    print(
        f"labels in every tile (threshold mask fn), overlap 0 / plain copy: "
        f"{noop_rows['mask_overlap0_ratio']:.2f}x (the fn alone: {noop_rows['mask_fn_only_s']} s)"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
