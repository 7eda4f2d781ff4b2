"""bench/device_check.sh: it refuses to run without CUDA, and its ``--cpu-smoke`` run drives every
part (tracker FPS per setting, memory, reasoner stages and quantizations, batched queries, first
mask, hot path, deactivate, CUDA checks, targets, catch-ups) through the same code on the CPU with
tiny sizes, so the GPU run does not fail on plumbing. The smoke run measures nothing worth reporting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_refuses_without_cuda(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "VRS_PYTHON": sys.executable}
    run = subprocess.run([str(REPO / "bench" / "device_check.sh"), "--out-dir", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "CUDA is not available" in run.stderr and "refuses to run" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_cpu_smoke_runs_every_part(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "bench" / "device_check.py"), "--cpu-smoke",
                          "--out-dir", str(tmp_path), "--budget-s", "840"], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads((tmp_path / "device_cpu_smoke.json").read_text())
    parts = report["parts"]
    assert set(parts) == {"host", "tracker_fps", "memory", "reasoner", "grounding_batch", "first_mask", "hot_path",
                          "deactivate", "cuda_checks", "targets", "catch_ups"}
    errors = {name: part["error"] for name, part in parts.items() if "error" in part}
    assert not errors, errors
    assert 0 < parts["host"]["total"]["p50_ms"] <= parts["host"]["total"]["p99_ms"]
    fps = parts["tracker_fps"]
    assert set(fps) == {"hiera-t fp32", "hiera-t bf16", "hiera-t bf16+compile"}
    for key, value in fps.items():
        assert value.get("fps", 0) > 0, (key, value)
    assert fps["hiera-t bf16+compile"]["compile_s"] > 0
    memory = parts["memory"]
    assert memory["frames"] == 30 and memory["bank"] <= 4 + 15 and memory["spread"] is None  # no CUDA allocator
    reasoner = parts["reasoner"]
    assert set(reasoner["first_query_stages_s"]) == {"clip_anchor", "mllm_frame_tokens", "mllm_prefill", "tks"}
    assert set(reasoner["quantization"]) == {"none", "int8", "nf4"}
    for mode, value in reasoner["quantization"].items():
        assert "prefill_s" in value, (mode, value)
    assert reasoner["quantization"]["none"]["tak_cosine_to_none"] > 0.99999  # itself
    queries = parts["grounding_batch"]
    assert set(queries) == {"tiny-random 128 px", "tiny-random"}, "the issue's setting, then the reasoner part's models"
    for name, value in queries.items():
        assert value["k"] == 4 and value["separate_s"] > 0 and value["batched_s"] > 0, (name, value)
    assert queries["tiny-random 128 px"]["precision"] == "fp32", "the node's precision: auto is fp32 on the CPU"
    assert queries["tiny-random 128 px"]["max_abs_seg_tak_takprime"] <= 1e-4
    assert queries["tiny-random"]["precision"] == "bf16", "the reasoner part's models"
    assert parts["first_mask"]["first_mask_ms"] > 0
    hot = parts["hot_path"]
    assert hot["no_query"]["processed"] > 0 and hot["query_1hz"]["queries"] >= 1 and hot["p99_ratio"] > 0
    assert set(parts["deactivate"]) >= {"allocated_active_bytes", "returned_bytes"}
    checks = parts["cuda_checks"]
    assert checks["compile_max_abs_logit_diff"] <= 1e-5  # aot_eager in the smoke run: the same kernels
    for mode in ("int8", "nf4"):
        assert checks[mode]["within_tolerance"] and checks[mode]["round_trip_identical"], checks[mode]
    targets = parts["targets"]
    assert [targets[str(n)]["p50_ms"] > 0 for n in (1, 2, 4, 8)] == [True] * 4
    assert targets["1"]["ratio_to_1"] == 1.0 and targets["8"]["state_bytes"] > targets["1"]["state_bytes"]
    assert targets["8"]["batches"] == [4, 4] and targets["8_one_batch"]["batches"] == [8]
    assert targets["8_staggered"]["batches"] == [4, 4], "separate memories, tracked in shared calls"
    tiny = targets["tiny_random"]
    assert tiny["image_size"] == 128 and tiny["precision"] == "fp32", "the node's precision: auto is fp32 on the CPU"
    assert tiny["1"]["ratio_to_1"] == 1.0 and tiny["4"]["batches"] == [4] and tiny["8"]["batches"] == [4, 4]
    assert tiny["8"]["p50_ms"] > 0 and tiny["8"]["state_bytes"] > tiny["4"]["state_bytes"] > tiny["1"]["state_bytes"]
    catch_ups = parts["catch_ups"]
    assert catch_ups["together_p50_ms"] > 0 and catch_ups["one_by_one_p50_ms"] > 0 and catch_ups["frames_each"] == 4
    table = (tmp_path / "device_cpu_smoke.md").read_text()
    assert "| hiera-t bf16+compile at 128 px |" in table and "instruction -> first mask" in table
    assert "| 8 targets (hiera-t bf16), per frame |" in table
    assert "| 8 targets in one batch (hiera-t bf16), per frame |" in table
    assert "| 8 targets added on 8 frames (hiera-t bf16), per frame |" in table
    assert "| 4 answers' catch-ups (hiera-t bf16), together / one by one |" in table
    assert "| 8 targets (tiny-random 128 px fp32), per frame |" in table
    assert "| batched query of 4 instructions (tiny-random 128 px), batched / separate |" in table
