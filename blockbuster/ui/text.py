"""Docstring text for the terminal."""

from __future__ import annotations

import re

__all__ = ["plain"]


def plain(text: str) -> str:
    """reST inline markup (``literal``, :role:`target`) as plain text.

    >>> plain("see :func:`~blockbuster.tile_process` with ``overlap=8``")
    'see blockbuster.tile_process with overlap=8'
    """
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text).replace("``", "")
