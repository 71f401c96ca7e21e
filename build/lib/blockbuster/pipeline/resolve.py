"""Between stitch and relabel: resolve every equivalence once, in the driver.

Final IDs
---------
Tile ``t`` (in tile-id order) owns the ID range ``base_t + 1 .. base_t + n_core_t`` where
``base_t`` is the number of core labels in all earlier tiles; its core label ``l`` has the
global ID ``base_t + l``. Labels seen only in a halo get IDs past every core ID; they link
equivalences but never reach the output.

Connected components of the equivalence graph (``scipy.sparse.csgraph``) give each merged group
one *representative*: its smallest core ID. Merged labels that are not representatives are
*absorbed*. Unmerged labels keep their own ID, so the table written for relabel holds only the
labels that were merged, plus two integers per tile.

With ``sequential_labels`` the IDs are made gap-free by subtracting, from each surviving ID, the
number of absorbed IDs below it, an O(merged labels) step with no pass over voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.csgraph import connected_components

from blockbuster.pipeline.table import EquivalenceTable


@dataclass(frozen=True)
class Resolution:
    """What the resolve step wrote.

    Attributes
    ----------
    num_labels
        Number of distinct objects in the final output.
    merged_labels
        Labels that took part in a merge.
    max_id
        An upper bound on the IDs the output will hold.
    """

    num_labels: int
    merged_labels: int
    max_id: int


def resolve(table: EquivalenceTable, num_tiles: int, sequential: bool) -> Resolution:
    """Resolve the equivalence table into per-tile relabel instructions.

    Parameters
    ----------
    table
        The run's equivalence table, with every tile counted and stitched.
    num_tiles
        Number of tiles in the plan; every one must have been segmented.
    sequential
        Make final IDs ``1..num_labels`` without gaps.
    """
    tile_ids, n_core, n_labels = table.tile_counts()
    if len(tile_ids) != num_tiles or not np.array_equal(tile_ids, np.arange(num_tiles)):
        missing = sorted(set(range(num_tiles)) - set(tile_ids.tolist()))
        raise RuntimeError(f"cannot resolve: tiles {missing[:10]} were never segmented")
    base = np.concatenate([[0], np.cumsum(n_core)[:-1]]).astype(np.int64)
    total_core = int(n_core.sum())
    halo_base = total_core + np.concatenate([[0], np.cumsum(n_labels - n_core)[:-1]])

    edges = table.all_edges()
    ta, la, tb, lb = edges.T

    def key(t: NDArray[Any], lab: NDArray[Any]) -> NDArray[Any]:
        return np.where(lab <= n_core[t], base[t] + lab, halo_base[t] + lab - n_core[t])

    ka, kb = key(ta, la), key(tb, lb)
    nodes, inverse = np.unique(np.concatenate([ka, kb]), return_inverse=True)
    m = len(ka)
    graph = sp.coo_matrix(
        (np.ones(m, dtype=np.int8), (inverse[:m], inverse[m:])), shape=(len(nodes), len(nodes))
    )
    _, comp = connected_components(graph, directed=False)

    core = nodes <= total_core
    core_nodes, core_comp = nodes[core], comp[core]
    # nodes are sorted, so each component's first core node is its smallest core ID
    rep_of_comp = np.zeros(comp.max() + 1 if len(comp) else 0, dtype=np.int64)
    first_comps, first_idx = np.unique(core_comp, return_index=True)
    rep_of_comp[first_comps] = core_nodes[first_idx]
    rep = rep_of_comp[core_comp]
    absorbed = rep != core_nodes
    dead = core_nodes[absorbed]  # sorted

    node_tile = np.searchsorted(base, core_nodes, side="left") - 1
    node_label = core_nodes - base[node_tile]
    if sequential:
        final = rep - np.searchsorted(dead, rep)
        shift = np.searchsorted(dead, base + 1)
    else:
        final = rep
        shift = np.zeros(num_tiles, dtype=np.int64)
    num_labels = total_core - len(dead)
    tiles_rows = np.stack([np.arange(num_tiles), base, shift, n_core], axis=1)
    label_rows = np.stack([node_tile, node_label, final, absorbed.astype(np.int64)], axis=1)
    table.write_resolution(tiles_rows, label_rows)
    return Resolution(
        num_labels=num_labels,
        merged_labels=len(core_nodes),
        max_id=num_labels if sequential else total_core,
    )
