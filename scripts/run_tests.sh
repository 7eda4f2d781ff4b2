#!/usr/bin/env bash
# Set up (or reuse) the environment and run the whole test suite (what CI runs).
# The tests read ../shared/data/davis2016 beside the repository (override: VRS_DAVIS_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "${VRS_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider "$@" test
