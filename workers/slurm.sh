#!/usr/bin/env bash
# Launch one blockbuster worker as a SLURM job and wait for it.
#
# blockbuster calls this once per worker slot, as `slurm.sh RUN_DIR TASK`, with DAISY_CONTEXT
# (the task server's address) and BLOCKBUSTER_PYTHON (the driver's interpreter) set. Copy it,
# set the knobs below for your cluster, and pass the copy as launcher=... / --launcher.
# The driver's server must be reachable from the nodes: run it with host=<this node's name>.
#
# Knobs (environment variables, or edit the defaults):
#   SLURM_PARTITION   partition (queue)                      default: cluster default
#   SLURM_TIME        job time limit                          default: 04:00:00
#   SLURM_CPUS        CPUs per worker                         default: 2
#   SLURM_MEM         memory per worker                       default: 16G
#   SLURM_GPUS        GPUs per worker (0 = CPU only)          default: 0
#   SLURM_EXTRA       any further sbatch arguments            default: none
#   BLOCKBUSTER_PYTHON  interpreter on the compute nodes      default: the driver's
set -euo pipefail
run_dir=${1:?usage: slurm.sh RUN_DIR TASK}
task=${2:?usage: slurm.sh RUN_DIR TASK}
: "${DAISY_CONTEXT:?DAISY_CONTEXT is set by blockbuster for each worker}"
python=${BLOCKBUSTER_PYTHON:-python3}

args=(--wait --job-name="bb-$task" --time="${SLURM_TIME:-04:00:00}"
      --cpus-per-task="${SLURM_CPUS:-2}" --mem="${SLURM_MEM:-16G}"
      --output="$run_dir/logs/slurm-%j.out" --export=ALL)
[ -n "${SLURM_PARTITION:-}" ] && args+=(--partition="$SLURM_PARTITION")
[ "${SLURM_GPUS:-0}" != 0 ] && args+=(--gpus-per-task="$SLURM_GPUS")
# shellcheck disable=SC2206
[ -n "${SLURM_EXTRA:-}" ] && args+=($SLURM_EXTRA)
mkdir -p "$run_dir/logs"

# --wait: this script (one daisy worker slot) lives as long as the job, so daisy sees the
# worker's end; --export=ALL carries DAISY_CONTEXT to the node.
exec sbatch "${args[@]}" --wrap "exec \"$python\" -m blockbuster.worker \"$run_dir\" \"$task\""
