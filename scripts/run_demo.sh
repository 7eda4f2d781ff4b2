#!/usr/bin/env bash
# Set up (or reuse) the environment and run vrs_node on the bundled sample (sample/blackswan).
# Extra arguments go to vrs-demo (see `.venv/bin/vrs-demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "${VRS_VENV:-.venv}/bin/vrs-demo" "$@"
