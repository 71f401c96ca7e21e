import sys

from blockbuster.cli import main

sys.exit(main())
