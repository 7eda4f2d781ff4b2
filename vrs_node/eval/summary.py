"""The scores and texts of ``vrs-replay``'s ``summary.json``: each sequence's summary from its
per-frame rows, the run's overall, per-subset and DAVIS-table scores, and the protocol in words.

Scores: per frame J and F (:mod:`vrs_node.eval.metrics`) of ALL frames with ground truth (streaming
evaluation: the first and last frames too; an empty prediction scores like any other); per
sequence their means (J&F = (J + F) / 2) and the DAVIS statistics; overall the mean over sequences
(each sequence or expression weighs the same: the ReVOS/MeViS per-expression protocol);
:func:`protocol` says it at length in the summary itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vrs_node.eval.metrics import JF, davis_statistics, davis_summary, summarize_expressions
from vrs_node.eval.sequences import ReplaySequence

RANDOM_WARNING = ("RANDOM weights: the masks and scores prove the pipeline (plumbing, protocol, timing), "
                  "not segmentation quality")
"""The summary's ``warning`` for a model profile with random weights."""


def latency_stats(values: Sequence[float | None]) -> dict:
    """count, mean, p50, p95 and max of the values that are not None (rounded to 3 digits)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "max": None}
    array = np.asarray(values, dtype=float)
    return {"count": int(array.size), "mean": round(float(array.mean()), 3), "p50": round(float(np.percentile(array, 50)), 3),
            "p95": round(float(np.percentile(array, 95)), 3), "max": round(float(array.max()), 3)}


def sequence_summary(seq: ReplaySequence, rows: list[dict], info: dict, out_dir: Path) -> dict:
    """One sequence's summary from its ``frames.csv`` rows (:func:`vrs_node.eval.outputs.run_sequence`)
    and the predictor's ``info`` (added as is)."""
    scored = [r for r in rows if r["J"] is not None]
    first_mask = next((r["index"] for r in rows if r["mask_pixels"]), None)
    summary = {
        "video": seq.video, "expression_id": seq.expression_id, "subset": seq.subset,
        "instruction": seq.instruction, "frames": len(rows), "scored_frames": len(scored),
        "J": None, "F": None, "J&F": None,
        "empty_frames": sum(1 for r in rows if not r["mask_pixels"]),
        "first_mask_frame": first_mask,
        "first_mask_stamp_s": None if first_mask is None else (rows[first_mask]["stamp_ns"] - rows[0]["stamp_ns"]) / 1e9,
        "latency_ms": latency_stats([r["latency_ms"] for r in rows]),
        "statuses": {s: sum(1 for r in rows if r["status"] == s) for s in dict.fromkeys(r["status"] for r in rows)},
        "out_dir": str(out_dir.resolve()),
    }
    if scored:
        j = [r["J"] for r in scored]
        f = [r["F"] for r in scored]
        j_mean, j_recall, j_decay = davis_statistics(j)
        f_mean, f_recall, f_decay = davis_statistics(f)
        summary.update({"J": j_mean, "F": f_mean, "J&F": (j_mean + f_mean) / 2, "J-Recall": j_recall,
                        "J-Decay": j_decay, "F-Recall": f_recall, "F-Decay": f_decay})
    summary.update(info)
    return summary


def run_scores(sequences: dict[str, dict], per_frame: dict[str, list[dict]], realtime: bool = False) -> dict:
    """``overall`` (with, ``realtime``, the time to the first mask and the frames dropped),
    ``by_subset`` and ``davis_all_frames`` of a run: sequence name -> its summary and its rows."""
    scored = [name for name, s in sequences.items() if s["J"] is not None]
    davis = None
    if scored:
        davis = davis_summary([[r["J"] for r in per_frame[n] if r["J"] is not None] for n in scored],
                              [[r["F"] for r in per_frame[n] if r["F"] is not None] for n in scored])
    overall = _overall(sequences)
    if realtime:
        overall["time_to_first_mask_s"] = latency_stats([s.get("time_to_first_mask_s") for s in sequences.values()])
        overall["dropped"] = sum(s.get("dropped", 0) or 0 for s in sequences.values())
    return {"overall": overall, "by_subset": _by_subset(sequences), "davis_all_frames": davis}


def _overall(sequences: dict[str, dict]) -> dict:
    scored = {name: s for name, s in sequences.items() if s["J"] is not None}
    overall = {"sequences": len(sequences), "scored_sequences": len(scored),
               "frames": sum(s["frames"] for s in sequences.values()),
               "scored_frames": sum(s["scored_frames"] for s in sequences.values()), "J": None, "F": None, "J&F": None}
    if scored:
        mean = summarize_expressions(JF(s["J"], s["F"]) for s in scored.values()).strict
        overall.update({"J": mean.j, "F": mean.f, "J&F": mean.jf})
    return overall


def _by_subset(sequences: dict[str, dict]) -> dict | None:
    subsets = sorted({s["subset"] for s in sequences.values() if s["subset"] and s["J"] is not None})
    if not subsets:
        return None
    table = {}
    for subset in subsets:
        mean = summarize_expressions(JF(s["J"], s["F"]) for s in sequences.values()
                                     if s["subset"] == subset and s["J"] is not None)
        table[subset] = {"J": mean.strict.j, "F": mean.strict.f, "J&F": mean.strict.jf, "count": mean.count}
    if {"referring", "reasoning"} <= set(table):  # ReVOS: unweighted mean of the two subsets
        ref, reason = table["referring"], table["reasoning"]
        j, f = (ref["J"] + reason["J"]) / 2, (ref["F"] + reason["F"]) / 2
        table["revos_overall"] = {"J": j, "F": f, "J&F": (j + f) / 2}
    return table


def protocol(mode: str, prompt: str) -> dict:
    """The evaluation protocol of a run in ``mode`` with ``prompt``, in words (the summary's ``protocol``)."""
    empty = ("a frame whose prediction is empty is scored like any other (J = F = 0 against a non-empty "
             "ground truth, 1 against an empty one); frames before the first mask (no prompt yet, grounding "
             "in progress, realtime: no result yet) are emitted as EMPTY masks and scored, never dropped "
             "or counted as missing")
    realtime = ("realtime: frame i is scored with the latest mask the engine had published when frame i "
                "arrived (wall clock = stamp differences / speed); the frame's own result is never ready at "
                "its own arrival, so latency costs accuracy; frames dropped by the engine still get that mask")
    return {
        "frames_scored": "ALL frames that have a ground-truth mask, including the first and the last (streaming "
                         "evaluation; DAVIS semi-supervised and SA-V would drop both)" + (
                             "; with a ground-truth prompt the prompt frame is scored too (its mask comes from "
                             "the ground truth)" if prompt != "instruction" else ""),
        "empty_frames": empty,
        "per_frame": "J (region similarity) and F (boundary F-measure, tolerance ceil(0.008 x image diagonal) px) "
                     "as davis2017-evaluation's metrics.py (vrs_node.eval.metrics), at ground-truth resolution, "
                     "any non-zero pixel = object, no void",
        "sequence": "J, F = mean over the scored frames, J&F = (J + F) / 2; Recall = mean(v > 0.5), Decay = first "
                    "quarter - last quarter (DAVIS statistics, int64 indices)",
        "overall": "J, F = mean over sequences (each sequence or expression weighs the same: the ReVOS/MeViS "
                   "per-expression protocol), J&F = (J + F) / 2; sequences without ground truth are not scored",
        "davis_table": "davis_summary over one row per sequence, of ALL scored frames (not the official DAVIS "
                       "semi-supervised first/last frame drop)",
        "mode": {"stream": "causal, engine in sync mode, every frame processed (reproducible)",
                 "realtime": realtime,
                 "offline": "VRS-HQ reference: whole video as the window, one grounding (lattice <= 11 frames), "
                            "bidirectional propagation from the keyframe (backward pass without forward memory); "
                            "NOT causal"}[mode],
        "prompt": {"instruction": "language instruction (the expression text); the MLLM grounds it",
                   "gt-box": "box of the first non-empty ground-truth mask, on its frame (tracking-only check)",
                   "gt-mask": "the first non-empty ground-truth mask, on its frame (tracking-only check)"}[prompt],
    }


def without_nans(value):
    """``value`` (nested dicts and lists) with every non-finite float replaced by None (JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: without_nans(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nans(v) for v in value]
    return value
