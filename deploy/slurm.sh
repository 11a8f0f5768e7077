#!/bin/bash
# A Slurm batch script: 6 ditask processes, 3 on each of 2 nodes, joined in a full mesh.
#
#   sbatch deploy/slurm.sh
#
# `srun` starts one ditask per task; `ditask --platform slurm` reads SLURM_NTASKS,
# SLURM_NTASKS_PER_NODE, SLURM_NODELIST, SLURM_PROCID and SLURMD_NODENAME: task i is node i,
# listens on its node's host name at port 15151 + (its index on the node), and dials every task
# of lower rank. Run it from the directory that holds your package (train.ts exporting main)
# and ditask (npm install ditask).
#SBATCH --job-name=ditask
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=3
#SBATCH --time=01:00:00
#SBATCH --output=ditask-%j.out
set -euo pipefail

# --kill-on-bad-exit: one failed node ends the job, as a failed worker ends a local run.
# --label: prefix every output line with the task number.
srun --kill-on-bad-exit=1 --label \
  npx --no-install ditask --platform slurm --topology mesh --package "$PWD" --main train.main

# Per-task settings (DI-engine's league layout) go in a platform spec, a JSON string or a file:
#   srun ... npx --no-install ditask --platform slurm --platform-spec league.json --main league.main
