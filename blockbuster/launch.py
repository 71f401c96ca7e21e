"""The daisy worker function that starts ``python -m blockbuster.worker``.

Kept free of heavy imports: daisy unpickles it in a fresh process that immediately replaces
itself with the worker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


class WorkerLauncher:
    """A daisy worker function that becomes ``python -m blockbuster.worker RUN_DIR TASK``.

    daisy runs it in a fresh process with ``DAISY_CONTEXT`` set; the process replaces itself
    (``exec``) with the blockbuster worker, so the process daisy watches (exit codes, timeouts,
    kills) is the worker itself.
    """

    def __init__(self, run_dir: Path | str, task: str) -> None:
        self.run_dir = str(run_dir)
        self.task = task

    def __call__(self, *, context: Any = None) -> None:
        if context is not None:
            os.environ["DAISY_CONTEXT"] = context.to_env()
        sys.stdout.flush()
        sys.stderr.flush()
        argv = [sys.executable, "-m", "blockbuster.worker", self.run_dir, self.task]
        os.execv(sys.executable, argv)
