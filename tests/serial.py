"""Run a prepared run directory in this process with the serial engine (no daisy workers).

Tests use it to check the segment/stitch/resolve/relabel logic on many random cases quickly;
it is the driver's own path (:func:`blockbuster.pipeline.driver.execute_run`), with every
block run here. The daisy path is covered by test_driver.py.
"""

from __future__ import annotations

import numpy as np

from blockbuster.config import RunConfig
from blockbuster.io.sources import open_array
from blockbuster.pipeline.spec import read_spec
from blockbuster.run.rundir import RunDir


def run_in_process(run: RunDir) -> tuple[np.ndarray, int]:
    from blockbuster.pipeline.driver import execute_run

    options = RunConfig(backend="serial", status_page=None, keep_stage=True, max_retries=0)
    result = execute_run(run, options)
    spec = read_spec(run)
    return open_array(spec.output_store, spec.output_path)[:], result.num_labels
