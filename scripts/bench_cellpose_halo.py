"""How much halo does a tiled Cellpose segmentation need to equal the whole-image one?

Segments a synthetic 2D nuclei image (nuclei in the left two thirds, only background noise in
the right third) with a small Cellpose 3 model trained from scratch
(``tests/trained_cellpose.py``), once whole and once tiled with ``tile_process`` for each tile
size and halo (``overlap``, given as a multiple of the nucleus diameter), and prints per run:

* F1 at IoU 0.5 of the tiled labels against the whole-image labels, and of each against the
  true labels;
* false objects: labels with most of their pixels in the empty third.

Normalisation modes (``--norms``):

* ``tile``: Cellpose's own per-block percentiles (``cellpose_fn(normalize="tile")``; the whole
  run: percentiles of the whole image);
* ``global``: every tile scaled alike, by the 1st/99th percentiles of the whole image
  (``cellpose_fn(normalize=(lo, hi))``; the whole run gets the same);
* ``image``: ``cellpose_fn(normalize="image")``, the percentiles ``tile_process`` measures
  itself (the whole run: ``global``).

With a ``cellpose_fn`` that has no ``normalize`` parameter (older blockbuster), ``tile`` and
``global`` go to Cellpose's ``eval`` as ``normalize=True`` and ``{"lowhigh": (lo, hi)}``.

Usage::

    .venv/bin/python scripts/bench_cellpose_halo.py                 # trains the model first
    .venv/bin/python scripts/bench_cellpose_halo.py --weights PATH  # a model trained before
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import trained_cellpose as tc  # noqa: E402

from blockbuster import tile_process  # noqa: E402
from blockbuster.plugins.cellpose import cellpose_fn  # noqa: E402


def false_objects(labels: NDArray[Any], empty_from: int) -> int:
    """Labels with more than half of their pixels at or right of column ``empty_from``."""
    ids, total = np.unique(labels, return_counts=True)
    right = dict(zip(*np.unique(labels[:, empty_from:], return_counts=True)))
    return sum(1 for i, n in zip(ids, total) if i != 0 and right.get(i, 0) > n / 2)


def make_fn(weights: Path, diameter: float, mode: str, image: NDArray[Any], whole: bool) -> Any:
    """The ``cellpose_fn`` for this normalisation mode (for the whole image: ``whole``)."""
    lo, hi = (float(v) for v in np.percentile(image, [1.0, 99.0]))
    if "normalize" not in inspect.signature(cellpose_fn).parameters:  # older blockbuster
        legacy: Any = {"tile": True, "global": {"normalize": True, "lowhigh": (lo, hi)}}[mode]
        return cellpose_fn(model=str(weights), diameter=diameter, normalize=legacy)
    norm: Any = {"tile": "tile", "global": (lo, hi), "image": (lo, hi) if whole else "image"}
    return cellpose_fn(model=str(weights), diameter=diameter, normalize=norm[mode])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="trained model (default: train one)")
    parser.add_argument("--workdir", type=Path, help="for the model, images and labels")
    parser.add_argument("--size", type=int, default=768, help="image side (pixels)")
    parser.add_argument("--radius", type=float, default=tc.RADIUS, help="nucleus radius")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.85,
        help="closest nucleus centres, in summed radii (0.85: touching, merged blobs; 1.1: apart)",
    )
    parser.add_argument(
        "--density", type=float, default=0.4, help="nucleus area fraction of the filled part"
    )
    parser.add_argument("--tiles", type=int, nargs="+", default=[128, 256])
    parser.add_argument(
        "--halos",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 1.0, 1.5, 2.0],
        help="overlaps as multiples of the nucleus diameter",
    )
    parser.add_argument(
        "--norms", nargs="+", default=["global", "tile"], choices=["global", "image", "tile"]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="image seeds")
    parser.add_argument(
        "--threshold", type=float, default=0.98, help="tiled-vs-whole F1 a halo must reach"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cellpose_halo_"))
    workdir.mkdir(parents=True, exist_ok=True)
    weights = args.weights
    if weights is None:
        start = time.perf_counter()
        weights = tc.train_model(workdir, seed=0)
        print(f"trained {weights} in {time.perf_counter() - start:.0f} s")
    diameter = 2.0 * args.radius
    empty_from = args.size - int(round(args.size / 3))
    area = np.pi * args.radius**2
    count = int(args.density * args.size * empty_from / area)

    header = (
        f"{'seed':>4} {'tile':>4} {'norm':>7} {'k':>5} {'halo':>4} {'F1 t/w':>7} "
        f"{'F1 t/gt':>7} {'F1 w/gt':>7} {'n t':>4} {'n w':>4} {'n gt':>4} "
        f"{'false t':>7} {'false w':>7} {'s':>5}"
    )
    print(
        f"diameter {diameter:g} px, image {args.size}x{args.size}, empty from column "
        f"{empty_from}, gap {args.gap:g}, density {args.density:g}; F1 at IoU 0.5; "
        "t = tiled, w = whole, gt = truth"
    )
    print(header)
    rows: list[tuple[int, int, str, float, float]] = []
    for seed in args.seeds:
        image, truth = tc.synthetic_image(
            (args.size, args.size),
            count,
            args.radius,
            seed=100 + seed,
            empty_fraction=1 / 3,
            gap=args.gap,
        )
        src = str(workdir / f"image{seed}.zarr")
        arr = zarr.create_array(
            src, shape=image.shape, chunks=(256, 256), dtype=image.dtype, overwrite=True
        )
        arr[...] = image
        for norm in args.norms:
            fn = make_fn(weights, diameter, norm, image, whole=False)
            start = time.perf_counter()
            whole = make_fn(weights, diameter, norm, image, whole=True)(image)
            print(
                f"{seed:>4} {'whole':>4} {norm:>7} {'':>5} {'':>4} {'':>7} {'':>7} "
                f"{tc.f1(whole, truth):>7.3f} {'':>4} {int(len(np.unique(whole)) - 1):>4} "
                f"{int(truth.max()):>4} {'':>7} {false_objects(whole, empty_from):>7} "
                f"{time.perf_counter() - start:>5.1f}",
                flush=True,
            )
            n_whole, f1_whole = len(np.unique(whole)) - 1, tc.f1(whole, truth)
            false_whole = false_objects(whole, empty_from)
            for tile in args.tiles:
                for k in args.halos:
                    halo = int(round(k * diameter))
                    out = workdir / f"labels_{seed}_{norm}_{tile}_{halo}.zarr"
                    start = time.perf_counter()
                    tile_process(
                        src,
                        fn,
                        tile_shape=(tile, tile),
                        overlap=halo,
                        write_to=str(out),
                        num_workers=1,
                        backend="serial",
                        progress=False,
                        status_page=None,
                        overwrite=True,
                    )
                    seconds = time.perf_counter() - start
                    tiled = np.asarray(zarr.open_array(str(out), mode="r")[...])
                    tw = tc.f1(tiled, whole)
                    rows.append((seed, tile, norm, k, tw))
                    print(
                        f"{seed:>4} {tile:>4} {norm:>7} {k:>5.2f} {halo:>4} {tw:>7.3f} "
                        f"{tc.f1(tiled, truth):>7.3f} {f1_whole:>7.3f} "
                        f"{len(np.unique(tiled)) - 1:>4} {n_whole:>4} {int(truth.max()):>4} "
                        f"{false_objects(tiled, empty_from):>7} {false_whole:>7} "
                        f"{seconds:>5.1f}",
                        flush=True,
                    )

    print(
        f"\nsmallest halo (x diameter) with tiled-vs-whole F1 >= {args.threshold} for it and "
        "every larger halo tested, over all seeds:"
    )
    for norm in args.norms:
        for tile in args.tiles:
            ok = {
                k: all(
                    tw >= args.threshold
                    for s, t, n, kk, tw in rows
                    if t == tile and n == norm and kk >= k
                )
                for k in args.halos
            }
            good = [k for k in sorted(args.halos) if ok[k]]
            print(f"  tile {tile:>4} {norm:>7}: {good[0] if good else 'none'}")


if __name__ == "__main__":
    main()
