"""The built-in fns by their command-line names, and their parameters as text.

One table serves both ``blockbuster segment --plugin NAME`` (which builder to call with
``--fn-kwargs``) and ``blockbuster plugins`` (what each builder takes, with defaults from its
signature and descriptions from its docstring), so the two cannot disagree.
"""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap
from collections.abc import Callable
from typing import Any

from blockbuster.ui.text import plain

__all__ = ["PLUGINS", "builder", "describe", "parameters"]

#: command-line name -> ``module:builder``
PLUGINS = {
    "watershed": "blockbuster.plugins.watershed:watershed_fn",
    "cellpose": "blockbuster.plugins.cellpose:cellpose_fn",
}


def builder(name: str) -> Callable[..., Any]:
    """The builder function of plugin ``name`` (its module imports no heavy library)."""
    module, _, attr = PLUGINS[name].partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return fn


def parameters(fn: Callable[..., Any]) -> list[tuple[str, str, str]]:
    """``(name, default, description)`` per parameter of ``fn``: the default from its
    signature (``required`` when it has none), the description from the numpydoc
    ``Parameters`` section of its docstring, on one line, reST markup removed."""
    doc = inspect.getdoc(fn) or ""
    section = re.search(r"Parameters\n-+\n(.*?)(?:\n\n[A-Z][a-z]+\n-+\n|\Z)", doc, re.S)
    described: dict[str, str] = {}
    if section:
        name = ""
        for line in section.group(1).splitlines():
            if line and not line.startswith(" "):
                name = line.split(":")[0].strip().lstrip("*")
                described[name] = ""
            elif name:
                described[name] = f"{described[name]} {line.strip()}".strip()
    rows = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            default = "any other keyword"
        elif p.default is p.empty:
            default = "required"
        else:
            default = repr(p.default)
        star = "**" if p.kind is p.VAR_KEYWORD else ""
        rows.append((f"{star}{p.name}", default, plain(described.get(p.name, ""))))
    return rows


def describe(name: str, width: int = 100) -> str:
    """Plugin ``name``'s summary and parameters as terminal text."""
    fn = builder(name)
    summary = plain((inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " "))
    out = [f"{name}: {PLUGINS[name].replace(':', '.')}", f"  {summary}", "  parameters:"]
    for param, default, text in parameters(fn):
        out.append(f"    {param} (default: {default})")
        out += textwrap.wrap(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(out)
