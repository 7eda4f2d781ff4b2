#!/usr/bin/env bash
# Set up (or reuse) the environment and replay-evaluate vrs_node on the shared DAVIS-2016 sample
# (../shared/data/davis2016, or $VRS_DAVIS_DIR): masks, overlay videos, frames.csv, summary.json
# and plots under out/replay. Extra arguments go to vrs-replay (see `.venv/bin/vrs-replay --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "${VRS_VENV:-.venv}/bin/vrs-replay" --dataset "${VRS_DAVIS_DIR:-../shared/data/davis2016}" \
    --out out/replay "$@"
