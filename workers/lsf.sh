#!/usr/bin/env bash
# Launch one blockbuster worker as an LSF job and wait for it.
#
# blockbuster calls this once per worker slot, as `lsf.sh RUN_DIR TASK`, with DAISY_CONTEXT
# (the task server's address) and BLOCKBUSTER_PYTHON (the driver's interpreter) set. Copy it,
# set the knobs below for your cluster, and pass the copy as launcher=... / --launcher.
# The driver's server must be reachable from the nodes: run it with host=<this node's name>.
#
# Knobs (environment variables, or edit the defaults):
#   LSF_QUEUE    queue                                  default: cluster default
#   LSF_TIME     run limit, [hours:]minutes             default: 4:00
#   LSF_CPUS     slots per worker                       default: 2
#   LSF_MEM_MB   memory per worker in MB                default: 16000
#   LSF_GPUS     GPUs per worker (0 = CPU only)         default: 0
#   LSF_EXTRA    any further bsub arguments             default: none
#   BLOCKBUSTER_PYTHON  interpreter on the compute nodes default: the driver's
set -euo pipefail
run_dir=${1:?usage: lsf.sh RUN_DIR TASK}
task=${2:?usage: lsf.sh RUN_DIR TASK}
: "${DAISY_CONTEXT:?DAISY_CONTEXT is set by blockbuster for each worker}"
python=${BLOCKBUSTER_PYTHON:-python3}

args=(-K -J "bb-$task" -W "${LSF_TIME:-4:00}" -n "${LSF_CPUS:-2}"
      -R "rusage[mem=${LSF_MEM_MB:-16000}]" -o "$run_dir/logs/lsf-%J.out" -env all)
[ -n "${LSF_QUEUE:-}" ] && args+=(-q "$LSF_QUEUE")
[ "${LSF_GPUS:-0}" != 0 ] && args+=(-gpu "num=$LSF_GPUS")
# shellcheck disable=SC2206
[ -n "${LSF_EXTRA:-}" ] && args+=($LSF_EXTRA)
mkdir -p "$run_dir/logs"

# -K: wait for the job, so this worker slot lives as long as the worker; -env all carries
# DAISY_CONTEXT to the execution host.
exec bsub "${args[@]}" "$python" -m blockbuster.worker "$run_dir" "$task"
