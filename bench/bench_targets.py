#!/usr/bin/env python3
"""Benchmark (issue 14): per-frame cost of MultiTargetTracker with 1, 2, 4, 8 targets, relative to 1.

One run, one process: a tracker per target count over the same weights (``--profile``, default
tiny-random, at ``--size`` px, ``--precision``), all targets added on frame 0 (one cohort: one
batched ``track_step`` per frame for up to ``--max-batch`` targets, the node's ``target_batch``),
boxes on a 4 x 2 grid over the image as prompts. Frames (DAVIS-2016
blackswan, looped) are interleaved: every frame goes through every tracker, in an order rotated
each frame, so machine noise hits all counts alike. A frame's cost is ``encode`` + ``track``
(the image encoder runs once per frame whatever the count); ``track`` alone is reported too.
Figures are over the frames after ``--warmup`` (memory banks full after 16). Goals (issue 14):
4 targets <= 1.6x, 8 targets <= 2.5x the cost of 1.

Writes ``--out`` (JSON) and a plot beside it (``.png``: each count's time per frame split into the
shared encoder and the tracking, and the ratio to 1 target per ``--max-batch`` against the goals
and against tracking each target in a call of its own). ``--replot JSON`` redraws the plot of a
saved report without measuring.

Random weights: the figures say nothing about segmentation quality, only cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import add_target_model_arguments, davis_sequence, grid_boxes, run_record, write_report  # noqa: E402

from vrs_node.models.config import PRECISION_CHOICES  # noqa: E402

GOALS = {4: 1.6, 8: 2.5}
"""Issue 14's goals: cost per frame with N targets / with 1 target."""


def build_trackers(profile: str, size: int, device: str, counts: list[int], first: np.ndarray,
                   precision: str = "fp32", max_batches: tuple[int, ...] = (0,)):
    """{(max_batch, count): MultiTargetTracker with ``count`` targets conditioned on ``first``, at
    most ``max_batch`` a batch}, one model (same weights), in ``precision``
    (:mod:`vrs_node.models.precision`)."""
    from vrs_node.core.prompts import PointsPrompt
    from vrs_node.core.targets import MultiTargetTracker
    from vrs_node.core.tracker import StreamingTracker
    from vrs_node.models.precision import tracker_precision_options
    from vrs_node.models.profiles import build_sam2_for_profile, get_profile

    model, transform = build_sam2_for_profile(get_profile(profile), device=device, image_size=size)
    trackers = {}
    for max_batch in max_batches:
        for count in counts:
            single = StreamingTracker(model, transform, **tracker_precision_options(precision, device))
            tracker = MultiTargetTracker(single, max_targets=max(counts), max_batch=max_batch)
            for i, box in enumerate(grid_boxes(*first.shape[:2], count), start=1):
                tracker.add(i, PointsPrompt(box=box))
            tracker.track(tracker.encode(first))
            trackers[max_batch, count] = tracker
    return trackers


def timed_step(tracker, image: np.ndarray, device: str) -> tuple[float, float]:
    """(encode + track, track) seconds of one frame (synchronised on CUDA)."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    feats = tracker.encode(image)
    sync()
    t1 = time.perf_counter()
    tracker.track(feats)
    sync()
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def run(args) -> dict:
    """{max_batch: {count: figures}}, every (max_batch, count) tracker fed the same frames,
    interleaved in an order rotated each frame; ratios relative to 1 target at that max_batch."""
    frames, _, _ = davis_sequence("blackswan", args.frames_available)
    trackers = build_trackers(args.profile, args.size, args.device, args.counts, frames[0], args.precision,
                              tuple(args.max_batch))
    keys = list(trackers)
    total = {key: [] for key in keys}
    track = {key: [] for key in keys}
    for k in range(1, args.warmup + args.frames + 1):
        image = frames[k % len(frames)]
        for key in keys[k % len(keys):] + keys[:k % len(keys)]:
            both, alone = timed_step(trackers[key], image, args.device)
            if k > args.warmup:
                total[key].append(both)
                track[key].append(alone)
    rows = {}
    for max_batch in args.max_batch:
        base_total, base_track = np.median(total[max_batch, 1]), np.median(track[max_batch, 1])
        rows[str(max_batch)] = {str(n): {
            "frame_ms_median": round(float(np.median(total[max_batch, n])) * 1000, 2),
            "frame_ms_p90": round(float(np.percentile(total[max_batch, n], 90)) * 1000, 2),
            "track_ms_median": round(float(np.median(track[max_batch, n])) * 1000, 2),
            "frame_ratio": round(float(np.median(total[max_batch, n]) / base_total), 3),
            "track_ratio": round(float(np.median(track[max_batch, n]) / base_track), 3),
            "goal_ratio": GOALS.get(n),
            "batches": [len(c) for c in trackers[max_batch, n].batches],
            "state_bytes": trackers[max_batch, n].state_size()[1],
        } for n in args.counts}
    return rows


def batch_label(max_batch: str) -> str:
    return "all targets in one batch" if max_batch == "0" else f"batches of at most {max_batch}"


def plot(report: dict, path: Path) -> None:
    """The report's figures as a picture at ``path``: left, the default batch's median ms per frame
    per target count, encoder (frame - track) and tracking stacked; right, per-frame cost relative
    to 1 target for each max batch, issue 14's goals as markers, and the cost if every target took
    a full tracking step of its own (1 + (n - 1) x track / frame of 1 target) for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_batch = report["by_max_batch"]
    first = next(iter(by_batch.values()))
    counts = [int(n) for n in first]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    frame = np.array([first[str(n)]["frame_ms_median"] for n in counts])
    track = np.array([first[str(n)]["track_ms_median"] for n in counts])
    labels = [str(n) for n in counts]
    left.bar(labels, frame - track, color="tab:gray", label="image encoder (once per frame)")
    left.bar(labels, track, bottom=frame - track, color="tab:blue", label="tracking (batched over targets)")
    left.set_xlabel("targets")
    left.set_ylabel("ms per frame (median)")
    left.set_title(f"time per frame, {batch_label(next(iter(by_batch)))}")
    left.legend()
    for max_batch, rows in by_batch.items():
        right.plot(counts, [rows[str(n)]["frame_ratio"] for n in counts], "o-", label=batch_label(max_batch))
    one = first["1"]
    right.plot(counts, [1 + (n - 1) * one["track_ms_median"] / one["frame_ms_median"] for n in counts], ":",
               color="tab:gray", label="each target a step of its own (estimate)")
    right.plot(list(GOALS), list(GOALS.values()), "r*", markersize=12, label="goal (issue 14)")
    right.set_xlabel("targets")
    right.set_ylabel("per-frame cost / 1 target")
    args = report["args"]
    right.set_title(f"{args['profile']} at {args['size']} px, {args['precision']}, {args['device']}")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_model_arguments(parser, max_batch_nargs="+")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                        help="tracking precision (auto: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--warmup", type=int, default=16, help="frames before timing (banks full after 16)")
    parser.add_argument("--frames", type=int, default=10, help="timed frames per target count")
    parser.add_argument("--frames-available", type=int, default=30, help="blackswan frames read (looped)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "targets.json")
    parser.add_argument("--replot", type=Path, help="a saved report: write its plot (.png beside it) and exit")
    args = parser.parse_args(argv)
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        print(f"wrote {args.replot.with_suffix('.png')}")
        return 0
    if args.counts[0] != 1:
        parser.error("--counts must start with 1 (the ratios are relative to it)")
    started = time.time()
    with torch.inference_mode():
        rows = run(args)
    report = {**run_record(argv, args, started),
              "targets": rows[str(args.max_batch[0])],
              "by_max_batch": rows}
    write_report(args.out, report)
    plot(report, args.out.with_suffix(".png"))
    for max_batch, by_count in rows.items():
        for n, row in by_count.items():
            print(f"max_batch {max_batch}, {n} targets: {row['frame_ms_median']:.1f} ms/frame ({row['frame_ratio']:.2f}x; "
                  f"track {row['track_ratio']:.2f}x)" + (f", goal <= {row['goal_ratio']}x" if row["goal_ratio"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
