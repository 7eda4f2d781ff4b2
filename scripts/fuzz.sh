#!/usr/bin/env bash
# Long fuzz run of every input surface (test/test_fuzz.py): 5,000 examples per ROS-free surface
# and 500 per live-node surface unless VRS_FUZZ_EXAMPLES / VRS_FUZZ_LIVE_EXAMPLES say otherwise
# (CI runs 200 / 50 as part of scripts/run_tests.sh). Same environment set-up and reuse as
# scripts/run_tests.sh; extra arguments go to pytest (e.g. -k prompt). Prints the examples run
# per surface at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export VRS_FUZZ_EXAMPLES="${VRS_FUZZ_EXAMPLES:-5000}"
export VRS_FUZZ_LIVE_EXAMPLES="${VRS_FUZZ_LIVE_EXAMPLES:-500}"
exec "${VRS_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider "$@" test/test_fuzz.py
