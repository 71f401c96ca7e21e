"""The ``blockbuster`` command of the ``blockbuster-seg`` distribution.

The PyPI project ``blockbuster`` (a detector of blocking calls in asyncio event loops) also
installs a top-level module named ``blockbuster``. Where both are installed, ``import
blockbuster`` finds one of them; this entry point lives outside that name so that it can say
which one it found and what to do, instead of failing with ``No module named
'blockbuster.cli'``.
"""

from __future__ import annotations

import sys

DISTRIBUTION = "blockbuster-seg"
FIX = (
    "uninstall both and install this one again (pip uninstall -y blockbuster blockbuster-seg, "
    "then pip install blockbuster-seg, or pip install -e . in a checkout), or keep them in "
    "separate environments"
)


def other_blockbuster() -> str | None:
    """Where ``import blockbuster`` finds a module that is not this project, or None."""
    import blockbuster

    if getattr(blockbuster, "__distribution__", None) == DISTRIBUTION:
        return None
    return str(getattr(blockbuster, "__file__", None) or blockbuster)


def main() -> int:
    """Check which ``blockbuster`` is imported, then run the command line."""
    try:
        found = other_blockbuster()
    except ImportError as e:  # this package refused a folder the other one overwrote
        print(f"error: {e}", file=sys.stderr)
        return 1
    if found is not None:
        print(
            f"error: 'import blockbuster' finds {found}, the PyPI project 'blockbuster' (an "
            f"asyncio blocking-call detector), not {DISTRIBUTION}: both install a module named "
            f"blockbuster; {FIX}",
            file=sys.stderr,
        )
        return 1
    from blockbuster.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
