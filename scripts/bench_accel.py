"""Does the accelerator wait? End to end against the accelerator's own time.

fn waits ``T`` seconds per 1024² tile without holding the GIL (as a CUDA call does) and then
labels cheaply. The ideal run takes ``tiles × T / workers``: every second the accelerator is
not busy is overhead (reading, staging, stitching, resolving, relabelling, starting workers).
The segment worker reads the next tile and writes the previous one while fn runs, so the
ratio ``end to end / ideal`` should approach 1.

    python scripts/bench_accel.py [--tiles 64] [--seconds 0.2,0.5,1.0] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_fns import accelerator  # noqa: E402

from blockbuster import tile_process  # noqa: E402
from blockbuster.synthetic import make_nuclei_volume  # noqa: E402

TILE = 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiles", type=int, default=64, help="tiles (a square grid is used)")
    p.add_argument("--seconds", default="0.2,0.5,1.0", help="accelerator seconds per tile")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--overlap", type=int, default=32)
    args = p.parse_args()
    side = math.isqrt(args.tiles)
    tiles = side * side
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        image = tmp / "image.zarr"
        shape = (1, side * TILE, side * TILE)  # one plane: 2D tiles
        make_nuclei_volume(image, shape=shape, count=40 * tiles, chunks=(1, TILE, TILE))
        print(f"{tiles} tiles of {TILE}², halo {args.overlap}, image {shape}")
        print(
            f"{'T s':>5} {'workers':>7} {'ideal s':>8} {'end s':>7} {'ratio':>6} "
            f"{'segment+stitch s':>16}"
        )
        for seconds in [float(s) for s in args.seconds.split(",")]:
            for workers in [int(w) for w in args.workers.split(",")]:
                out = tmp / f"labels-{seconds}-{workers}.zarr"
                start = time.perf_counter()
                result = tile_process(
                    str(image),
                    functools.partial(accelerator, seconds=seconds),
                    (1, TILE, TILE),
                    (0, args.overlap, args.overlap),
                    write_to=out,
                    num_workers=workers,
                    progress=False,
                    status_page=None,
                )
                end = time.perf_counter() - start
                assert result.ok, result.summary()
                ideal = tiles * seconds / workers
                print(
                    f"{seconds:5.1f} {workers:7d} {ideal:8.2f} {end:7.2f} {end / ideal:6.3f} "
                    f"{result.seconds['segment+stitch']:16.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
