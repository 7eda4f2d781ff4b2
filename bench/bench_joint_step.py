#!/usr/bin/env python3
"""Benchmark (issue 14): targets added at different frames, batched once their memories align.

Targets 1..N are added one every ``--stagger`` frames (boxes on a 4 x 2 grid), so each has a
memory layout of its own (its own cohort). ``joint``: the tracker as it is, cohorts whose memories
have equal token counts tracked in one call (:mod:`vrs_node.core.joint_step`), at most
``--max-batch`` targets a call (the node's ``target_batch``). ``separate``: the same tracker with
one call per cohort, the behaviour before joint steps (``joint_step.first_fit`` replaced by one
pack per cohort while its frames run; a single cohort's step is sam2's ``track_step`` bit for bit).
Timing starts 16 frames after the last target was added (every memory full); every frame goes
through every tracker, in an order rotated each frame. Figures: ``encode`` + ``track`` per frame,
and its ratio to 1 target (issue 14's goals: 4 targets <= 1.6x, 8 targets <= 2.5x).

Random weights: the figures say nothing about segmentation quality, only cost.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_targets import GOALS, timed_step  # noqa: E402
from common import add_target_model_arguments, davis_sequence, grid_boxes, run_record, write_report  # noqa: E402

from vrs_node.core import joint_step  # noqa: E402

MODES = ("joint", "separate")


@contextlib.contextmanager
def one_call_per_cohort():
    """While inside: every cohort is tracked in a call of its own (the behaviour before joint steps)."""
    packed = joint_step.first_fit
    joint_step.first_fit = lambda items, key, size, max_batch=0: [[item] for item in items]
    try:
        yield
    finally:
        joint_step.first_fit = packed


def staggered_tracker(model, transform, count: int, frames: list[np.ndarray], stagger: int, max_batch: int,
                      mode: str):
    """A MultiTargetTracker with ``count`` targets, target i added on frame (i - 1) x ``stagger``
    and tracked through the frames up to the last addition (``frames`` looped)."""
    from vrs_node.core.prompts import PointsPrompt
    from vrs_node.core.targets import MultiTargetTracker
    from vrs_node.core.tracker import StreamingTracker

    tracker = MultiTargetTracker(StreamingTracker(model, transform), max_targets=8, max_batch=max_batch)
    boxes = grid_boxes(*frames[0].shape[:2], count)
    with one_call_per_cohort() if mode == "separate" else contextlib.nullcontext():
        for k in range((count - 1) * stagger + 1):
            if k % stagger == 0 and k // stagger < count:
                tracker.add(k // stagger + 1, PointsPrompt(box=boxes[k // stagger]))
            tracker.track(tracker.encode(frames[k % len(frames)]))
    return tracker, (count - 1) * stagger + 1


def run(args) -> dict:
    """{mode: {count: row}}: every (mode, count) tracker timed on the same frames, interleaved."""
    from vrs_node.models.profiles import build_sam2_for_profile, get_profile

    frames, _, _ = davis_sequence("blackswan", args.frames_available)
    model, transform = build_sam2_for_profile(get_profile(args.profile), device=args.device, image_size=args.size)
    trackers, next_frame = {}, {}
    for mode in MODES:
        for n in args.counts:
            trackers[mode, n], next_frame[mode, n] = staggered_tracker(model, transform, n, frames, args.stagger,
                                                                       args.max_batch, mode)
    keys = list(trackers)
    times = {key: [] for key in keys}
    for k in range(args.warmup + args.frames):
        for key in keys[k % len(keys):] + keys[:k % len(keys)]:
            image = frames[(next_frame[key] + k) % len(frames)]
            with one_call_per_cohort() if key[0] == "separate" else contextlib.nullcontext():
                total, _ = timed_step(trackers[key], image, args.device)
            if k >= args.warmup:
                times[key].append(total)
    return {mode: {str(n): {
        "frame_ms_median": round(float(np.median(times[mode, n])) * 1000, 2),
        "frame_ratio": round(float(np.median(times[mode, n]) / np.median(times[mode, 1])), 3),
        "goal_ratio": GOALS.get(n),
        "batches": [len(b) for b in trackers[mode, n].batches],
        "cohorts": len(trackers[mode, n].cohorts),
    } for n in args.counts} for mode in MODES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_model_arguments(parser)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--stagger", type=int, default=3, help="frames between two targets' additions")
    parser.add_argument("--warmup", type=int, default=17, help="frames after the last addition before timing")
    parser.add_argument("--frames", type=int, default=10, help="timed frames per tracker")
    parser.add_argument("--frames-available", type=int, default=30, help="blackswan frames read (looped)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "joint_step.json")
    args = parser.parse_args(argv)
    if args.counts[0] != 1 or args.stagger < 1:
        parser.error("--counts must start with 1 (the ratios are relative to it); --stagger must be >= 1")
    started = time.time()
    with torch.inference_mode():
        rows = run(args)
    report = {**run_record(argv, args, started),
              "modes": rows}
    write_report(args.out, report)
    for mode, by_count in rows.items():
        for n, row in by_count.items():
            print(f"{mode}, {n} targets: {row['frame_ms_median']:.1f} ms/frame ({row['frame_ratio']:.2f}x), "
                  f"calls {row['batches']}" + (f", goal <= {row['goal_ratio']}x" if row["goal_ratio"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
