"""``vrs-parity`` on every shared golden of the authors' VRS-HQ code, in both precisions.

The goldens (``../shared/golden/vrshq_tiny/golden``, override with ``VRS_GOLDEN_DIR``) were made by
the reference implementation on a checkpoint its own merge flow saved; passing them is the proof
that our tokenizer, pre-processing, MLLM, TDA, TKS, keyframe decode and offline protocol are the
reference's. Any further ``<case>.<precision>.npz`` put in that folder is run the same way.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import DAVIS, VRSHQ_GOLDEN as GOLDEN
from vrs_node.eval import parity

CHECKPOINT = GOLDEN / "checkpoint"
FRAMES = DAVIS / "blackswan" / "JPEGImages"
CASES = sorted((GOLDEN / "golden").glob("*.npz"))


def test_the_goldens_are_there():
    assert CHECKPOINT.is_dir() and len(CASES) >= 4, f"VRS-HQ goldens missing: {GOLDEN} (set VRS_GOLDEN_DIR)"
    assert {p.name.split(".")[1] for p in CASES} == {"fp32", "bf16"}


@pytest.mark.parametrize("golden", CASES, ids=[p.name for p in CASES])
def test_every_stage_is_within_tolerance(golden, capsys):
    code = parity.main(["--checkpoint", str(CHECKPOINT), "--frames", str(FRAMES), "--golden", str(golden)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "PASS", "\n".join(lines)
    assert code == 0
    stages = {line.split()[0] for line in lines[1:-1]}
    assert set(parity.TOLERANCES[golden.name.split(".")[1]]) - stages <= {"clip224_pixels", "dpc_knn_tokens"}


def test_a_stage_that_differs_fails_the_run(tmp_path):
    """The command as a user runs it: a golden whose TAK' was nudged fails on that stage only, exit 1."""
    source = GOLDEN / "golden" / "the_black_swan.fp32.npz"
    with np.load(source) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["tak_prime"] = arrays["tak_prime"] + np.float32(1e-3) * (np.arange(256) == 7)
    np.savez(tmp_path / "nudged.fp32.npz", **arrays)
    shutil.copy(source.with_suffix(".json"), tmp_path / "nudged.fp32.json")
    run = subprocess.run([sys.executable, "-m", "vrs_node.eval.parity", "--checkpoint", str(CHECKPOINT),
                          "--frames", str(FRAMES), "--golden", str(tmp_path / "nudged.fp32.npz")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1] == "FAIL: tak_prime"


def test_unusable_inputs_are_named_with_exit_2(tmp_path, capsys):
    golden = str(GOLDEN / "golden" / "the_black_swan.fp32.npz")
    assert parity.main(["--checkpoint", str(CHECKPOINT), "--frames", str(tmp_path), "--golden", golden]) == 2
    assert f"{tmp_path} has 0 frames; the golden used 12" in capsys.readouterr().err
    renamed = tmp_path / "case.npz"
    shutil.copy(golden, renamed)
    assert parity.main(["--checkpoint", str(CHECKPOINT), "--frames", str(FRAMES), "--golden", str(renamed)]) == 2
    assert "must end in .fp32.npz or .bf16.npz" in capsys.readouterr().err
