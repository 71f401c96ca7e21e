"""The layout is the design: the drivers and engines import no UI, io imports no run logic,
and the configuration imports nothing of blockbuster."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "blockbuster"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("blockbuster")}


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("run", ("blockbuster.ui", "blockbuster.api", "blockbuster.cli", "blockbuster.pipeline")),
        ("pipeline", ("blockbuster.ui", "blockbuster.api", "blockbuster.cli")),
        ("io", ("blockbuster.run", "blockbuster.pipeline", "blockbuster.ui", "blockbuster.api")),
    ],
)
def test_rooms_do_not_import_what_sits_above_them(room: str, forbidden: tuple[str, ...]) -> None:
    for path in sorted((PACKAGE / room).glob("*.py")):
        bad = sorted(m for m in _imports(path) if m.startswith(forbidden))
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_the_configuration_is_a_leaf() -> None:
    assert _imports(PACKAGE / "config.py") == set()


def test_no_two_modules_import_each_other() -> None:
    modules = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts): path
        for path in PACKAGE.rglob("*.py")
    }
    graph = {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}
    pairs = sorted((a, b) for a, deps in graph.items() for b in deps if a < b and a in graph[b])
    assert not pairs
