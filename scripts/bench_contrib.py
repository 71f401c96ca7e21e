"""Cellpose's ``contrib.distributed_segmentation`` run end to end with the benchmark's fn.

Runs inside its own environment, ``.venv-contrib`` (cellpose 3.1 + zarr < 3): contrib's
``distributed_eval`` calls ``zarr.open(path, 'w', ...)``, which fails under zarr 3. Create it
with ``scripts/setup_contrib_venv`` (about 2 GB; installs ``torch`` first so a local CPU wheel is
used, then ``cellpose[distributed]==3.1.1.3`` and ``zarr<3``). ``scripts/bench_peers.py`` runs
this script as its "cellpose-contrib" peer; by hand::

    .venv-contrib/bin/python scripts/bench_contrib.py IMG_V2.zarr OUT.zarr --tile 16,32,32

``IMG_V2.zarr`` is a zarr *v2* array (zarr 2 cannot read v3), chunked like the tile; the labels
are written to ``OUT.zarr`` (zarr v2, readable by zarr 3). The last stdout line is JSON
``{"fn_calls": ..., "tiles": ...}``.

How it is driven, honestly: contrib has no hook for a custom segmentation function. Every block
runs ``cellpose.models.CellposeModel(**model_kwargs).eval(image, **eval_kwargs)[0]`` (a new
model per block). We **monkeypatch** ``cellpose.models.CellposeModel`` on every dask worker (a
worker plugin) with a stand-in whose ``eval`` is the benchmark's fn, threshold > 0.5 +
``scipy.ndimage.label``, and counts its calls. Everything else is contrib's own code, unchanged:
``distributed_eval`` with ``blocksize`` = the tile and ``eval_kwargs={"diameter": 0}`` (its
overlap is ``2 * diameter``, so no halo, like the other peers); ``get_block_crops``;
``process_block`` (``remove_overlaps``, ``bounding_boxes_in_global_coordinates``,
``global_segment_ids``, writing the unstitched zarr, ``block_faces``);
``determine_merge_relabeling`` (``adjacent_faces``, ``block_face_adjacency_graph`` with its
``shrink_labels``, scipy connected components); the dask relabel pass into ``OUT.zarr``; and
``merge_all_boxes``. The cluster is contrib's ``myLocalCluster`` with 2 single-threaded worker
processes (like blockbuster's 2 workers) and no dashboard.

Expect ``equals_whole: false``: before matching labels across a block face, contrib's
``block_face_adjacency_graph`` shrinks every label on both face planes by its ``shrink_labels``
(removes boundary pixels and those within 1 px of them), so objects whose cross-section at a
face is thin stay cut in two. With the shrink replaced by the identity (a diagnosis only, not
done here) the same run equals the whole-image labelling, so the cuts are the merge rule, not
how we drive it.

contrib writes into the current directory (worker logs, its temp zarr, dask scratch) and dumps
its dask config to ``~/.config/dask/``, which every dask process on the machine would read while
it exists; so we chdir into ``--workdir`` and point ``HOME`` there before importing it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


class ThresholdLabelModel:
    """Stand-in for ``cellpose.models.CellposeModel``: eval = threshold > 0.5 + label."""

    calls_file = ""

    def __init__(self, **model_kwargs):
        pass

    def eval(self, image, **eval_kwargs):
        from scipy import ndimage as ndi

        with open(self.calls_file, "a") as f:  # one line per fn call, from any worker
            f.write("1\n")
        return ndi.label(image > 0.5)[0], None, None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src", help="input zarr v2 array")
    p.add_argument("out", help="output zarr (v2) for the stitched labels")
    p.add_argument("--tile", default="16,32,32")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--workdir", default=None, help="default: OUT + '.work'")
    args = p.parse_args()
    tile = tuple(int(v) for v in args.tile.split(","))
    out = str(Path(args.out).absolute())
    src = str(Path(args.src).absolute())
    work = Path(args.workdir or out + ".work").absolute()
    (work / ".config" / "dask").mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    os.environ["HOME"] = str(work)
    calls_file = str(work / "fn_calls.txt")
    Path(calls_file).write_text("")

    import distributed
    import numpy as np
    import zarr
    from cellpose.contrib import distributed_segmentation as ds

    class PatchModel(distributed.WorkerPlugin):
        def setup(self, worker):
            import cellpose.models

            ThresholdLabelModel.calls_file = calls_file
            cellpose.models.CellposeModel = ThresholdLabelModel

    image = zarr.open(src, mode="r")
    with ds.myLocalCluster(
        ncpus=1, n_workers=args.workers, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        cluster.client.register_plugin(PatchModel())
        ds.distributed_eval(
            image,
            blocksize=tile,
            write_path=out,
            eval_kwargs={"diameter": 0},
            cluster=cluster,
        )
    tiles = int(np.prod(ds.get_nblocks(image.shape, tile)))
    fn_calls = len(Path(calls_file).read_text().splitlines())
    print(json.dumps({"fn_calls": fn_calls, "tiles": tiles}), flush=True)


if __name__ == "__main__":
    main()
