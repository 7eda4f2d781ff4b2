#!/usr/bin/env python3
"""Benchmark: the tracker's per-frame cost in bf16 against fp32 (the ``precision`` setting), and how far they agree.

For each ``--sizes`` entry the ``--profile`` model (default SAM-2.1 Hiera-T, seeded random
weights) is loaded twice by ``load_models(..., precision="fp32" | "bf16")`` -- identical float32
weights; bf16 runs them under ``torch.autocast(dtype=torch.bfloat16)`` -- and both trackers follow
the DAVIS-2016 ``blackswan`` frames from the mask prompt ``Annotations/00000.png`` on frame 0.

Timing: per frame, ``encode`` + ``condition`` (frame 0) or ``track``; the two precisions run in
this one process, one frame of each in turn, the order within a frame pair alternating from frame
to frame and between the ``--rounds`` (so machine noise hits both alike). Figures are the median /
p90 over the steady-state frames (index >= ``--warmup-frames``: memory bank and pointer history
full) of all rounds, the ratio bf16 / fp32 of those medians and the median of the per-frame
paired ratios.

Agreement (round 1, every frame): per-frame IoU of the bf16 mask with the fp32 mask at camera
resolution, max |Δ| of the low-res mask logits and of the object-score logit.

Writes ``--out`` (JSON, ``bench/out/`` is git-ignored) and prints one line per size. Random
weights: cost and numeric agreement only, never segmentation quality.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_tracker import loadavg, machine_info, stats_ms  # noqa: E402
from common import davis_sequence  # noqa: E402
from tqdm import tqdm  # noqa: E402

from vrs_node.core.prompts import MaskPrompt  # noqa: E402
from vrs_node.core.tracker import StreamingTracker  # noqa: E402
from vrs_node.models.profiles import get_profile, load_models  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--profile", default="hiera-t-512-random", help="model profile (its SAM-2 at each size)")
    ap.add_argument("--sizes", default="256,512", help="comma list of SAM-2 input sizes (multiples of 32)")
    ap.add_argument("--frames", type=int, default=50, help="blackswan frames per run (the sequence has 50)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per size")
    ap.add_argument("--warmup-frames", type=int, default=16,
                    help="frame indices below this are excluded from the timing statistics")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "precision.json")
    return ap.parse_args(argv)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """|a ∩ b| / |a ∪ b| of two boolean masks; 1 when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def run_size(args, size: int, frames: list[np.ndarray], prompt: np.ndarray) -> dict:
    """Timing and agreement of both precisions at SAM-2 input size ``size`` (module docstring)."""
    profile = get_profile(args.profile)
    models = {p: load_models(profile, "cpu", image_size=size, precision=p) for p in PRECISIONS}
    times = {p: [[None] * len(frames) for _ in range(args.rounds)] for p in PRECISIONS}
    results = {}
    bar = tqdm(total=args.rounds * len(frames), desc=f"{size} px", unit="frame pair")
    for r in range(args.rounds):
        trackers = {p: StreamingTracker(m.sam2, m.transform, **m.tracker_options) for p, m in models.items()}
        outputs = {p: [] for p in PRECISIONS}
        for i, image in enumerate(frames):
            for p in (PRECISIONS if (i + r) % 2 == 0 else PRECISIONS[::-1]):
                tracker = trackers[p]
                start = time.perf_counter()
                feats = tracker.encode(image)
                out = tracker.condition(feats, MaskPrompt(prompt)) if i == 0 else tracker.track(feats)
                times[p][r][i] = time.perf_counter() - start
                outputs[p].append(out)
            bar.update()
        if r == 0:
            results = outputs
    bar.close()
    steady = {p: [t for run in times[p] for t in run[args.warmup_frames:]] for p in PRECISIONS}
    stats = {p: stats_ms(steady[p]) for p in PRECISIONS}
    paired = [b / a for a, b in zip(steady["fp32"], steady["bf16"])]
    ious = [mask_iou(a.mask(), b.mask()) for a, b in zip(results["fp32"], results["bf16"])]
    logit_diffs = [float((a.low_res_logits - b.low_res_logits).abs().max())
                   for a, b in zip(results["fp32"], results["bf16"])]
    score_diffs = [abs(a.object_score - b.object_score) for a, b in zip(results["fp32"], results["bf16"])]
    return {
        "image_size": size,
        "tracker_options": {p: {k: str(v) for k, v in m.tracker_options.items()} for p, m in models.items()},
        "ms_per_frame": stats,
        "ratio_bf16_over_fp32": {"of_medians": round(stats["bf16"]["median"] / stats["fp32"]["median"], 3),
                                 "median_of_paired_frames": round(float(np.median(paired)), 3)},
        "agreement": {"mask_iou_min": round(min(ious), 4), "mask_iou_mean": round(float(np.mean(ious)), 4),
                      "max_abs_low_res_logit_diff": round(max(logit_diffs), 4),
                      "max_abs_object_score_diff": round(max(score_diffs), 4),
                      "mask_iou_per_frame": [round(v, 4) for v in ious]},
        "raw_s": {p: times[p] for p in PRECISIONS},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    frames, masks, _ = davis_sequence("blackswan", args.frames)
    if args.warmup_frames >= len(frames):
        raise SystemExit(f"--warmup-frames {args.warmup_frames} leaves none of the {len(frames)} frames timed")
    report = {
        "benchmark": "StreamingTracker per-frame cost and agreement, bf16 (autocast) vs fp32",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "mkldnn_bf16_supported": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        "loadavg_before": loadavg(),
        "profile": args.profile, "frames": len(frames), "rounds": args.rounds, "warmup_frames": args.warmup_frames,
        "weights": "seeded random (object-score bias +5): cost and numeric agreement only, no quality",
        "sizes": [],
    }
    for size in (int(s) for s in args.sizes.split(",")):
        result = run_size(args, size, frames, masks[0])
        report["sizes"].append(result)
        ms, ratio, agree = result["ms_per_frame"], result["ratio_bf16_over_fp32"], result["agreement"]
        print(f"{size} px: fp32 {ms['fp32']['median']} ms/frame (p90 {ms['fp32']['p90']}), bf16 "
              f"{ms['bf16']['median']} ms/frame (p90 {ms['bf16']['p90']}); bf16/fp32 {ratio['of_medians']} "
              f"(paired {ratio['median_of_paired_frames']}); mask IoU min {agree['mask_iou_min']} "
              f"(mean {agree['mask_iou_mean']}), max |Δ logits| {agree['max_abs_low_res_logit_diff']}, "
              f"max |Δ object score| {agree['max_abs_object_score_diff']}", flush=True)
    report["loadavg_after"] = loadavg()
    report["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
