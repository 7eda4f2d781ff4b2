#!/usr/bin/env bash
# GPU device check (issue 12): one command, under 8 minutes on one CUDA GPU, random weights.
# Measures tracker FPS (Hiera-T/S/B+/L at 1024 in fp32, bf16, bf16 + compile), GPU memory over
# 2,000 frames, the 7B-shaped reasoner per stage and per quantization, instruction -> first mask,
# hot-path p50/p99 with and without a concurrent query and the memory a deactivate returns
# (bench/device_check.py says how). Writes bench/results/device_<gpu>.json and .md (--out-dir DIR
# elsewhere). Refuses to run without CUDA (exit 2).
#
# Python: $VRS_PYTHON, else the project's .venv, else python3. On a machine without the project's
# environment and without network (a lent GPU machine), build the missing wheels here first with
# bench/device_wheels.sh and pass their folder as VRS_WHEELS=.whl: they are installed into
# /tmp/vrs_site (no dependency resolution, nothing else touched).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${VRS_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -n "${VRS_WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/vrs_site "$VRS_WHEELS"/*.whl
  export PYTHONPATH="/tmp/vrs_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
exec timeout --signal=INT 480 "$PY" bench/device_check.py "$@"
