#!/usr/bin/env bash
# Start N blockbuster workers on this machine for one task of a running run.
#
#   DAISY_CONTEXT=... workers/local.sh RUN_DIR TASK [N]
#
# RUN_DIR  the run directory (<write_to>.blockbuster) that the driver wrote
# TASK     segment | stitch | relabel
# N        number of worker processes (default 1)
# PYTHON   interpreter with blockbuster installed (default: python3)
#
# DAISY_CONTEXT is what daisy gives each worker it launches (server host, port, task id,
# worker id). The driver normally starts workers itself, through this same entry point,
# `python -m blockbuster.worker RUN_DIR TASK`; this script is the template for starting them by
# hand or from a job scheduler. Each worker connects, takes blocks until the server has none
# left, and exits 0.
set -euo pipefail
run_dir=${1:?usage: workers/local.sh RUN_DIR TASK [N]}
task=${2:?usage: workers/local.sh RUN_DIR TASK [N]}
n=${3:-1}
: "${DAISY_CONTEXT:?DAISY_CONTEXT must name the daisy server (set by daisy or copied from it)}"
python=${PYTHON:-python3}
pids=()
for _ in $(seq "$n"); do
  "$python" -m blockbuster.worker "$run_dir" "$task" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
