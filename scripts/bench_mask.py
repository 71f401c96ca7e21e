"""What mask="auto" saves on a mostly empty volume: fn calls and seconds, side by side.

A light-sheet volume's bounding box is often mostly empty. This writes a synthetic volume whose
nuclei fill only one corner box (``--fill`` of each axis), segments it with watershed_fn
without a mask and with ``mask="auto"``, checks that both give the same labels, and prints fn
calls, tiles skipped and seconds for each, with the ratio.

    python scripts/bench_mask.py                 # 128x1024x1024, nuclei in a 1/2-per-axis corner
    python scripts/bench_mask.py --shape 64,512,512 --workers 2
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blockbuster import tile_process  # noqa: E402
from blockbuster.plugins import watershed_fn  # noqa: E402
from blockbuster.synthetic import nuclei_centres, render_box  # noqa: E402


def write_volume(path: Path, shape: tuple[int, ...], fill: float, chunks: tuple[int, ...]) -> None:
    """Nuclei (radius 4,5,5) at the density of the demo, only in the corner box ``fill`` of
    each axis; background noise elsewhere."""
    corner = tuple(max(1, int(s * fill)) for s in shape)
    count = int(30_000 * math.prod(corner) / (256 * 1024 * 1024))
    centres, radii = nuclei_centres(corner, count, (4.0, 5.0, 5.0), seed=0)
    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16", overwrite=True)
    for start in np.ndindex(*[math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]):
        lo = [i * c for i, c in zip(start, chunks, strict=True)]
        hi = [min(a + c, s) for a, c, s in zip(lo, chunks, shape, strict=True)]
        arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = render_box(
            lo, hi, centres, radii, seed=0
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="128,1024,1024")
    parser.add_argument("--fill", type=float, default=0.5, help="nuclei box per axis (fraction)")
    parser.add_argument("--tile", default="64,256,256")
    parser.add_argument("--overlap", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    tile = tuple(int(v) for v in args.tile.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "volume.zarr"
        write_volume(image, shape, args.fill, tile)
        rows = []
        outputs = []
        for name, mask in (("no mask", None), ('mask="auto"', "auto")):
            out = Path(tmp) / f"labels-{mask}.zarr"
            t0 = time.perf_counter()
            result = tile_process(
                str(image),
                watershed_fn(),
                tile,
                args.overlap,
                write_to=str(out),
                num_workers=args.workers,
                mask=mask,
                status_page=None,
            )
            rows.append((name, result.fn_calls, result.tiles_skipped, time.perf_counter() - t0))
            outputs.append(zarr.open(str(out))[:])
        same = bool(np.array_equal(outputs[0] > 0, outputs[1] > 0))
        print(f"volume {shape}, nuclei in the first {args.fill:.0%} of each axis, tile {tile}")
        print(f"{'run':<14}{'fn calls':>10}{'skipped':>10}{'seconds':>10}")
        for name, calls, skipped, secs in rows:
            print(f"{name:<14}{calls:>10}{skipped:>10}{secs:>10.1f}")
        print(
            f"fn calls ratio {rows[1][1] / rows[0][1]:.2f}, seconds ratio "
            f"{rows[1][3] / rows[0][3]:.2f}; same foreground: {same}"
        )


if __name__ == "__main__":
    main()
