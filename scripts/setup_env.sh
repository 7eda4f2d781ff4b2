#!/usr/bin/env bash
# Create the virtual environment (default .venv, override with VRS_VENV) and install everything
# vrs_node needs, in the one order that works:
#   1. torch + torchvision as a pinned pair from the package registry (--isolated skips a local
#      CPU-only torch wheel folder, against which torchvision cannot load); the same wheels run
#      on CPU and CUDA machines;
#   2. sam2 1.1.0 without build isolation (its build would pull another torch) and without its
#      CUDA extension (SAM2_BUILD_CUDA=0), with --no-deps;
#   3. the rest from requirements.txt, constrained so the torch pair stays;
#   4. vrs_node itself (editable, no deps).
# Re-running is fast: a stamp of the inputs skips work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VRS_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.vrs_setup_stamp"
want="$(cat scripts/setup_env.sh requirements.txt constraints.txt setup.py setup.cfg | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "vrs_node environment is up to date: $VENV"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[1/4] torch==2.13.0 + torchvision==0.28.0"
pip install --isolated -q torch==2.13.0 torchvision==0.28.0
echo "[2/4] sam2==1.1.0 (no build isolation, no CUDA extension)"
SAM2_BUILD_CUDA=0 pip install -q --no-build-isolation --no-deps sam2==1.1.0
echo "[3/4] requirements.txt"
pip install -q -r requirements.txt -c constraints.txt
echo "[4/4] vrs_node (editable)"
pip install -q --no-deps --no-build-isolation -e .
pip check
python - <<'PY'
import torch, torchvision, sam2, ray  # noqa: F401  (fail here, not in the first test, if an install broke)
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, ray {ray.__version__}, "
      f"CUDA available: {torch.cuda.is_available()}")
PY
echo "$want" > "$stamp"
echo "vrs_node environment ready: $VENV"
