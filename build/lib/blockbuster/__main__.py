"""``python -m blockbuster``: the command line (:mod:`blockbuster.cli`)."""

import sys

from blockbuster.cli import main

if __name__ == "__main__":
    sys.exit(main())
