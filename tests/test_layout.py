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


def test_the_command_names_the_other_blockbuster_when_it_is_found(tmp_path: Path) -> None:
    """The PyPI project ``blockbuster`` shares the import name: the command says so."""
    import subprocess
    import sys

    fake = tmp_path / "blockbuster"
    fake.mkdir()
    (fake / "__init__.py").write_text('"""Detect blocking calls in asyncio event loops."""\n')
    root = Path(__file__).parents[1]
    done = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            "import sys, blockbuster_seg; sys.exit(blockbuster_seg.main())",
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{tmp_path}:{root}", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: 'import blockbuster' finds {fake / '__init__.py'}, ")
    assert "pip uninstall -y blockbuster blockbuster-seg" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_import_refuses_a_folder_the_other_blockbuster_was_installed_into(tmp_path: Path) -> None:
    """Installed into one folder, the two overwrite each other's files: a clear ImportError."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    shutil.copytree(root / "blockbuster", tmp_path / "blockbuster")
    info = tmp_path / "blockbuster-1.5.29.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: blockbuster\nVersion: 1.5.29\n"
        "Summary: Utility to detect blocking calls in the async event loop\n"
    )
    (info / "RECORD").write_text("blockbuster/__init__.py,,\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-P", "-c", "import blockbuster"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 1
    assert "ImportError: the PyPI project 'blockbuster' 1.5.29 (an asyncio" in done.stderr
    # the command says it in one line
    command = "import sys, blockbuster_seg; sys.exit(blockbuster_seg.main())"
    shim = subprocess.run(
        [sys.executable, "-P", "-c", command],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": f"{tmp_path}:{root}"},
    )
    assert shim.returncode == 1
    assert shim.stderr.startswith("error: the PyPI project 'blockbuster' 1.5.29 (an asyncio")
    assert len(shim.stderr.strip().splitlines()) == 1
    # elsewhere (another folder on the path), it does not touch this package: no error
    (info / "RECORD").write_text("elsewhere/blockbuster/__init__.py,,\n")
    done = subprocess.run(
        [sys.executable, "-P", "-c", "import blockbuster"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
