from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockbuster.pipeline.relabel import tile_lookup
from blockbuster.pipeline.resolve import resolve
from blockbuster.pipeline.table import EquivalenceTable


def reference(n_core, n_labels, edges, sequential):
    """Plain-Python union-find over (tile, label) nodes: the expected final ID of core labels."""
    parent: dict = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for ta, la, tb, lb in edges:
        parent[find((ta, la))] = find((tb, lb))
    gid = {}
    nxt = 0
    for t, k in enumerate(n_core):
        for lab in range(1, k + 1):
            nxt += 1
            gid[(t, lab)] = nxt
    groups: dict = {}
    for node in gid:
        groups.setdefault(find(node), []).append(gid[node])
    final = {}
    for node in gid:
        final[node] = min(groups[find(node)])
    if sequential:
        ranks = {v: i + 1 for i, v in enumerate(sorted(set(final.values())))}
        final = {k: ranks[v] for k, v in final.items()}
    return final


@st.composite
def tables(draw: st.DrawFn):
    n_tiles = draw(st.integers(1, 8))
    n_core = [draw(st.integers(0, 6)) for _ in range(n_tiles)]
    n_labels = [k + draw(st.integers(0, 3)) for k in n_core]
    nodes = [(t, lab) for t in range(n_tiles) for lab in range(1, n_labels[t] + 1)]
    edges = []
    if nodes:
        for _ in range(draw(st.integers(0, 20))):
            a = draw(st.sampled_from(nodes))
            b = draw(st.sampled_from(nodes))
            edges.append((*a, *b))
    return n_core, n_labels, edges, draw(st.booleans())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tables())
def test_resolve_and_lookup_match_reference_union_find(tmp_path: Path, case) -> None:
    n_core, n_labels, edges, sequential = case
    db = tmp_path / f"{uuid.uuid4().hex}.sqlite"
    with EquivalenceTable(db) as table:
        table.replace_tiles((t, k, n) for t, (k, n) in enumerate(zip(n_core, n_labels)))
        table.replace_edges(np.array(edges, dtype=np.int64).reshape(-1, 4))
        res = resolve(table, len(n_core), sequential)
        expected = reference(n_core, n_labels, edges, sequential)
        got = {}
        for t, k in enumerate(n_core):
            base, shift, nc, rows = table.tile_resolution(t)
            assert nc == k
            lut = tile_lookup(base, shift, nc, rows, sequential)
            assert lut[0] == 0
            for lab in range(1, k + 1):
                got[(t, lab)] = int(lut[lab])
    # same partition, and the exact IDs (smallest member / its rank)
    assert got == expected
    assert res.num_labels == len(set(expected.values()))
    if sequential and expected:
        assert set(got.values()) == set(range(1, res.num_labels + 1))


def test_resolve_refuses_missing_tiles(tmp_path: Path) -> None:
    with EquivalenceTable(tmp_path / "t.sqlite") as table:
        table.replace_tiles([(0, 1, 1)])
        try:
            resolve(table, 2, False)
        except RuntimeError as e:
            assert "[1]" in str(e)
        else:
            raise AssertionError("resolve accepted a table with a missing tile")
