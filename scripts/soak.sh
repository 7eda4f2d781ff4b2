#!/usr/bin/env bash
# Set up (or reuse) the environment and soak the engine for FRAMES frames: tiny-random at 128 px, a
# box prompt and an instruction re-queried every second of stamp time, in turn; RSS, memory bank,
# window and caches sampled and bounded (vrs_node/eval/soak.py). Exit 0 on PASS, 1 on FAIL.
# Usage: scripts/soak.sh FRAMES [options]   (scripts/soak.sh --help lists the options)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh >&2
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "${VRS_VENV:-.venv}/bin/python" -m vrs_node.eval.soak "$@"
