"""End-to-end demo: synthesize a nuclei volume, segment it tile by tile, check the result.

python scripts/demo.py [--shape 256,1024,1024] [--workers 2] [--out data/]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import fastremap
import numpy as np
import zarr

from blockbuster import tile_process
from blockbuster.plugins import watershed_fn
from blockbuster.synthetic import make_nuclei_volume


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", default="256,1024,1024")
    p.add_argument("--nuclei", type=int, default=30_000)
    p.add_argument("--tile", default="64,256,256")
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="data")
    args = p.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    tile = tuple(int(v) for v in args.tile.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = out / "nuclei.zarr"

    scale = np.prod(shape) / (256 * 1024 * 1024)
    nuclei = max(1, int(args.nuclei * scale))
    t = time.perf_counter()
    make_nuclei_volume(image, shape=shape, count=nuclei, chunks=tile)
    print(f"synthetic volume {shape} uint16 with {nuclei} nuclei: {time.perf_counter() - t:.1f} s")

    fn = watershed_fn(sigma=1.0, threshold=700.0, h=1.0)
    result = tile_process(
        str(image),
        fn,
        tile_shape=tile,
        overlap=args.overlap,
        write_to=out / "labels.zarr",
        num_workers=args.workers,
        progress=True,
        sequential_labels=True,
        overwrite=True,
    )
    # progress=True printed the table already; paths as seen from here
    print(result.summary(table=False).replace(f"{Path.cwd()}/", ""))
    labels = zarr.open_array(str(out / "labels.zarr"))
    sample = np.asarray(labels[: min(shape[0], tile[0] * 2)])
    present = fastremap.unique(sample)
    print(
        f"output {labels.shape} {labels.dtype}; first {sample.shape[0]} planes hold "
        f"{len(present) - 1} labels, max label {int(present.max())} <= {result.num_labels}"
    )


if __name__ == "__main__":
    main()
