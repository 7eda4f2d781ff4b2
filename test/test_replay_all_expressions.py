"""``vrs-replay --all-expressions`` (issue 14): every expression of a video followed as a target of one
engine pass, each written and scored as ``--expression all`` writes it, on the shared DAVIS sample
with tiny-random models at 128 px; passes split at ``--max-targets``; the same figures on Ray
workers (a task = a group); bad flag combinations refused.

Expected values come from the one-at-a-time run (``--expression all``), the ground truth, numpy
computed here (IoU by hand) or the test's own bookkeeping, never from the code under test.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import DAVIS
from PIL import Image

from vrs_node.core.results import STATUS_ERROR, STATUS_TARGET_ABSENT, STATUS_TRACKING, FrameResult
from vrs_node.core.target_specs import TargetReport
from vrs_node.eval.groups import run_group
from vrs_node.eval.predictors import own_prediction
from vrs_node.eval.replay import run
from vrs_node.eval.sequences import Prediction, dataset_sequences

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # GroupOracle, into the Ray workers

SEQUENCES = "blackswan,car-shadow"
LIMIT = 4
COMMON = ["--image-size", "128", "--device", "cpu", "--quiet"]
META = json.loads((DAVIS / "meta_expressions.json").read_text())["videos"]
UNITS = [f"{video}/{exp}" for video in SEQUENCES.split(",") for exp in META[video]["expressions"]]
TIMING = {"latency_ms", "query_latency_ms", "pass_s", "pass"}
"""Measured times (and the pass, which only the grouped run has): what may differ between runs."""


def dataset_args(out, *extra, sequences=SEQUENCES):
    return ["--dataset", str(DAVIS), "--sequences", sequences, "--limit", str(LIMIT), "--out", str(out), *extra]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def files(root: Path) -> list[str]:
    """Every file under ``root``, relative."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(one at a time, grouped, printed report of the grouped run): the same expressions replayed
    with ``--expression all`` and with ``--all-expressions``."""
    single_out, grouped_out = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("grouped")
    single = run(dataset_args(single_out, "--expression", "all", *COMMON))
    grouped = run(dataset_args(grouped_out, "--all-expressions", *COMMON))
    return (single_out, single), (grouped_out, grouped)


def test_all_expressions_writes_the_files_and_rows_of_expression_all(both, capsys):
    (single_out, single), (grouped_out, grouped) = both
    assert list(grouped["sequences"]) == list(single["sequences"]) == UNITS
    assert files(grouped_out) == files(single_out)
    assert (grouped_out / "blackswan" / "0" / "00003.png").is_file()
    for unit in UNITS:
        one, many = read_csv(single_out / unit / "frames.csv"), read_csv(grouped_out / unit / "frames.csv")
        assert [(r["frame"], r["stamp_ns"], r["status"], r["has_gt"]) for r in many] == \
            [(r["frame"], r["stamp_ns"], r["status"], r["has_gt"]) for r in one]
        assert grouped["sequences"][unit]["instruction"] == single["sequences"][unit]["instruction"]
        assert grouped["sequences"][unit]["pass"]["group"] == f"{unit.split('/')[0]}[0,1]"
        assert grouped["sequences"][unit]["pass"]["expressions"] == 2
        assert "pass" not in single["sequences"][unit]
    passes = {s["pass"]["group"]: s["pass"]["pass_s"] for s in grouped["sequences"].values()}
    section = grouped["all_expressions"]
    assert section["passes"] == 2 and section["expressions"] == 4 and "all_expressions" not in single
    assert section["pass_s"] == pytest.approx(sum(passes.values()), abs=1e-3) and section["pass_s"] > 0
    assert grouped["settings"]["all_expressions"] is True and single["settings"]["all_expressions"] is False
    assert grouped["input"]["expression"] == "all"
    run(dataset_args(grouped_out, "--all-expressions", *COMMON, sequences="blackswan"))
    assert "all expressions: 1 pass(es) over 2 expression(s)" in capsys.readouterr().out


def test_each_expression_agrees_with_its_one_at_a_time_run(both):
    """Batched tracking differs from one-target tracking by float rounding only (<= 1e-6 in the
    logits): a pixel can flip only at a logit of 0 (none on this sample here; 12 of 39 M pixels in
    bench/bench_all_expressions.py at 256 px), so IoU >= 0.999 per frame; the scores and J&F agree.
    (That each expression gets its own target's mask, not the resolved union, is the test below.)"""
    (single_out, single), (grouped_out, grouped) = both
    for unit in UNITS:
        for png in sorted((single_out / unit).glob("*.png")):
            alone, together = (np.array(Image.open(root / unit / png.name)) > 0 for root in (single_out, grouped_out))
            assert iou(alone, together) >= 0.999, (unit, png.name)
        one, many = read_csv(single_out / unit / "frames.csv"), read_csv(grouped_out / unit / "frames.csv")
        for a, b in zip(one, many, strict=True):
            assert float(b["object_score"]) == pytest.approx(float(a["object_score"]), abs=1e-4)
        alone, together = single["sequences"][unit], grouped["sequences"][unit]
        assert together["J&F"] == pytest.approx(alone["J&F"], abs=1e-3)
        assert (together["queries"], together["keyframes"]) == (alone["queries"], alone["keyframes"])
    assert grouped["overall"]["J&F"] == pytest.approx(single["overall"]["J&F"], abs=1e-3)


class FakeTrack:
    """A target's SAM-2 result as :func:`own_prediction` reads it: ``object_score`` and ``mask()``."""

    def __init__(self, mask: np.ndarray, score: float):
        self._mask, self.object_score = mask, score

    def mask(self) -> np.ndarray:
        return self._mask


def test_an_expression_gets_its_own_mask_not_the_resolved_instance_map():
    frame = dataset_sequences(DAVIS, ["blackswan"], "all", limit=1)[0].frames().__next__()
    hw = frame.image.shape[:2]
    left, right = np.zeros(hw, bool), np.zeros(hw, bool)
    left[:, : hw[1] // 2 + 10], right[:, hw[1] // 2 - 10:] = True, True  # overlapping by 20 columns
    instance = np.where(right, 2, np.where(left, 1, 0)).astype(np.uint8)  # target 2 scores higher: it wins
    reports = (TargetReport(1, "a", True, 1.0, None, 0, None, STATUS_TRACKING, "tracking"),
               TargetReport(2, "b", True, 3.0, None, 0, None, STATUS_TRACKING, "tracking"),
               TargetReport(3, "c", False, -2.0, None, 0, None, STATUS_TARGET_ABSENT, "absent"))
    tracks = {1: FakeTrack(left, 1.0), 2: FakeTrack(right, 3.0), 3: FakeTrack(np.ones(hw, bool), -2.0)}
    result = FrameResult(0, frame.stamp_ns, "camera", instance > 0, 3.0, STATUS_TRACKING, "", 0.25, frame.image,
                         instance_map=instance, targets=reports, tracks=tracks)
    first = own_prediction(frame, result, 1, 0.0)
    assert np.array_equal(first.mask, left) and first.object_score == 1.0 and first.status == STATUS_TRACKING
    assert first.latency_s == 0.25 and first.frame is frame
    assert np.array_equal(own_prediction(frame, result, 2, 0.0).mask, right)
    absent = own_prediction(frame, result, 3, 0.0)
    assert not absent.mask.any() and absent.status == STATUS_TARGET_ABSENT and absent.object_score == -2.0
    assert not own_prediction(frame, result, 1, 1.5).mask.any()  # score 1.0 <= threshold 1.5
    failed = FrameResult(0, frame.stamp_ns, "camera", np.zeros(hw, bool), None, STATUS_ERROR, "boom", 0.1, frame.image)
    error = own_prediction(frame, failed, 1, 0.0)
    assert error.status == STATUS_ERROR and error.object_score is None and not error.mask.any()
    assert error.mask.shape == hw


class GroupOracle:
    """A group predictor answering each expression's ground truth; ``groups`` records the groups asked
    for (their sequence names), ``info`` each sequence's group size."""

    name = "group-oracle"

    def __init__(self):
        self.groups: list[list[str]] = []
        self.info: dict = {}

    def __call__(self, group):
        self.groups.append([seq.name for seq in group])
        for frames in zip(*(seq.frames() for seq in group)):
            yield {seq.name: Prediction(f, f.gt if f.gt is not None else np.zeros(f.image.shape[:2], bool),
                                        status="oracle") for seq, f in zip(group, frames)}
        self.info = {seq.name: {"group_size": len(group)} for seq in group}


def test_more_expressions_than_max_targets_are_split_into_passes(tmp_path):
    every = ",".join(META)
    oracle = GroupOracle()
    summary = run(dataset_args(tmp_path / "one", "--all-expressions", "--max-targets", "1", "--quiet",
                               sequences=every), predictor=oracle)
    units = [f"{video}/{exp}" for video in META for exp in META[video]["expressions"]]
    assert oracle.groups == [[unit] for unit in units]
    assert summary["all_expressions"]["passes"] == len(units) and list(summary["sequences"]) == units
    assert all(s["group_size"] == 1 and s["J&F"] == 1.0 for s in summary["sequences"].values())
    oracle = GroupOracle()
    summary = run(dataset_args(tmp_path / "all", "--all-expressions", "--quiet", sequences=every), predictor=oracle)
    assert oracle.groups == [[u for u in units if u.startswith(f"{video}/")] for video in META]
    assert summary["all_expressions"] == {"passes": len(META), "expressions": len(units),
                                          "pass_s": summary["all_expressions"]["pass_s"]}


def test_a_group_predictor_answering_other_sequences_is_refused(tmp_path):
    group = dataset_sequences(DAVIS, ["blackswan"], "all", limit=2)

    def half(seqs):
        for frame in seqs[0].frames():
            yield {seqs[0].name: Prediction(frame, np.zeros(frame.image.shape[:2], bool))}

    with pytest.raises(RuntimeError, match="expected"):
        run_group(group, half, tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="one video"):
        run_group([group[0], *dataset_sequences(DAVIS, ["car-shadow"], "all", limit=2)], half, tmp_path)


@pytest.mark.parametrize("extra", [
    ["--mode", "offline"], ["--mode", "realtime"], ["--prompt", "gt-mask"], ["--prompt", "gt-box"],
    ["--expression", "0"],
])
def test_bad_flag_combinations_are_refused(tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as exit_info:
        run(dataset_args(tmp_path, "--all-expressions", *extra))
    assert exit_info.value.code == 2
    assert "--all-expressions needs --dataset, --mode stream and --prompt instruction" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_bag_is_refused_with_all_expressions(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--bag", str(tmp_path / "none.mcap"), "--all-expressions", "--instruction", "the swan"])
    assert exit_info.value.code == 2 and "--all-expressions needs --dataset" in capsys.readouterr().err


def comparable(summary: dict, out: Path) -> dict:
    """The summary without measured times, the Ray section and ``out``'s path."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMING | {"parallel", "failures", "pass_s"}}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(json.loads(json.dumps(summary).replace(str(out.resolve()), "<out>")))


def test_ray_workers_run_one_group_per_task_with_the_same_figures(tmp_path):
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=128 * 2**20,
             logging_level="WARNING", log_to_driver=False)
    try:
        here = run(dataset_args(tmp_path / "here", "--all-expressions", "--quiet"), predictor=GroupOracle())
        there = run(dataset_args(tmp_path / "there", "--all-expressions", "--quiet", "--workers", "2"),
                    predictor=GroupOracle())
    finally:
        ray.shutdown()
    assert there["parallel"]["workers"] == 2 and there["failures"] == []
    assert comparable(there, tmp_path / "there") == comparable(here, tmp_path / "here")
    assert there["all_expressions"]["passes"] == 2 and there["all_expressions"]["expressions"] == 4
    assert files(tmp_path / "there") == files(tmp_path / "here")
    for unit in UNITS:
        assert there["sequences"][unit]["group_size"] == 2 and there["sequences"][unit]["J&F"] == 1.0
