"""Fingerprints of fns: source when it can be read, bytecode when it cannot."""

from __future__ import annotations

from pathlib import Path

from blockbuster.run.fingerprint import fn_fingerprint


def _compiled(source: str, filename: str):
    scope: dict = {}
    exec(compile(source, filename, "exec"), scope)
    return scope["f"]


def test_fn_compiled_from_a_string_whose_filename_is_another_file(tmp_path: Path) -> None:
    # The filename points at a file whose text at that line is not Python, as a README
    # example exec'd under the name README.md finds the real README on sys.path.
    decoy = tmp_path / "decoy.md"
    decoy.write_text("def f(x):\n    return (x\n")
    one = _compiled("def f(x):\n    return x + 1\n", str(decoy))
    two = _compiled("def f(x):\n    return x + 2\n", str(decoy))
    assert fn_fingerprint(None, one) == fn_fingerprint(None, one)
    assert fn_fingerprint(None, one) != fn_fingerprint(None, two)


def test_fn_compiled_from_a_string_with_no_file() -> None:
    one = _compiled("def f(x):\n    return x * 2\n", "<string>")
    two = _compiled("def f(x):\n    return x * 3\n", "<string>")
    assert fn_fingerprint(None, one) != fn_fingerprint(None, two)
