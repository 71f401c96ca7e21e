#!/usr/bin/env bash
# Start N blockbuster workers on this machine for one task of a running run.
#
#   workers/local.sh RUN_DIR TASK [N]
#
# As a launcher (launcher="workers/local.sh"), blockbuster calls it once per worker slot with
# N = 1 and DAISY_CONTEXT set. By hand, without DAISY_CONTEXT, each worker connects to the
# address the driver recorded in RUN_DIR/server/TASK.json (or pass --server via WORKER_ARGS).
#
# RUN_DIR  the run directory (<write_to>.blockbuster) that the driver wrote
# TASK     segment | stitch | relabel
# N        number of worker processes (default 1)
# BLOCKBUSTER_PYTHON  interpreter with blockbuster installed (default: python3)
# WORKER_ARGS         further arguments for python -m blockbuster.worker (e.g. --server H:P)
#
# Each worker connects, takes blocks until the server has none left, and exits 0.
set -euo pipefail
run_dir=${1:?usage: workers/local.sh RUN_DIR TASK [N]}
task=${2:?usage: workers/local.sh RUN_DIR TASK [N]}
n=${3:-1}
python=${BLOCKBUSTER_PYTHON:-python3}
# shellcheck disable=SC2206
extra=(${WORKER_ARGS:-})
pids=()
for _ in $(seq "$n"); do
  "$python" -m blockbuster.worker "$run_dir" "$task" "${extra[@]}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
