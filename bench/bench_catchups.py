#!/usr/bin/env python3
"""Benchmark (issue 14): a query's catch-ups prepared together vs one after another.

A batched query answers k instructions at once; each answer conditions its target on its keyframe,
a past frame of the window, and the target is tracked from there through the frames buffered since
(the catch-up, prepared on the grounding thread: :mod:`vrs_node.core.catchup`). ``together``:
:meth:`CatchUps.prepare` of all k answers, the targets due at a frame tracked in one batched call;
``one_by_one``: a ``prepare`` per answer, the behaviour before. Keyframes: ``same`` (all on the
window's first frame, the case of instructions about one moment) or ``spread`` (2 frames apart).
A ``--window``-frame window of DAVIS-2016 blackswan with its SAM-2 features cached, k new targets
with box prompts (a grounding's prompt is its TAK' with the keyframe decode; the conditioning is a
small part of a catch-up, the tracking is the rest), a fresh tracker per repeat, the two modes
interleaved; figures: medians of the wall time of the preparation alone.

Random weights: the figures say nothing about segmentation quality, only cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import add_target_model_arguments, davis_sequence, filled_window, grid_boxes, run_record, write_report  # noqa: E402

from vrs_node.core.config import PipelineConfig  # noqa: E402

MODES = ("together", "one_by_one")
KEYFRAMES = {"same": lambda k: [0] * k, "spread": lambda k: [2 * i for i in range(k)]}
"""Keyframes (window positions) of the k answers, by pattern."""


def keyframe_answers(window, positions: list[int], boxes: list) -> list[tuple[int, SimpleNamespace, bool]]:
    """New-target answers 1..k, answer i on the window's frame at ``positions[i]`` with a box prompt
    ``boxes[i]`` and that frame's cached SAM-2 features: what :meth:`CatchUps.prepare` reads of a
    grounding (keyframe, its features, the prompt)."""
    from vrs_node.core.frames import SAM2_KEY
    from vrs_node.core.prompts import PointsPrompt

    held = window.snapshot()
    return [(i + 1, SimpleNamespace(keyframe=held[p].index, prompt=PointsPrompt(box=boxes[i]),
                                    keyframe_features=window.get_feature(held[p].index, SAM2_KEY)), True)
            for i, p in enumerate(positions)]


def timed_prepare(single, window, answers: list, mode: str, max_batch: int) -> float:
    """Seconds to prepare ``answers`` ((target id, grounding-like, new target)) on a fresh
    MultiTargetTracker over ``single``, in ``mode`` (synchronised on CUDA)."""
    from vrs_node.core.catchup import CatchUps
    from vrs_node.core.results import EngineStats
    from vrs_node.core.targets import MultiTargetTracker

    catch_ups = CatchUps(window, MultiTargetTracker(single, max_batch=max_batch), PipelineConfig, EngineStats())
    started = time.perf_counter()
    if mode == "together":
        prepared = catch_ups.prepare(answers)
    else:
        prepared = {i: p for answer in answers for i, p in catch_ups.prepare([answer]).items()}
    if single.device.type == "cuda":
        torch.cuda.synchronize(single.device)
    elapsed = time.perf_counter() - started
    assert len(prepared) == len(answers)
    return elapsed


def run(args) -> dict:
    """{pattern: {k: row}}: both modes timed ``--repeats`` times each, interleaved."""
    from vrs_node.core.tracker import StreamingTracker
    from vrs_node.models.profiles import build_sam2_for_profile, get_profile

    frames, _, _ = davis_sequence("blackswan", args.window)
    model, transform = build_sam2_for_profile(get_profile(args.profile), device=args.device, image_size=args.size)
    single = StreamingTracker(model, transform)
    window = filled_window(single, frames)
    boxes = grid_boxes(*frames[0].shape[:2], max(args.counts))
    rows = {}
    for pattern, keyframes in KEYFRAMES.items():
        rows[pattern] = {}
        for k in args.counts:
            answers = keyframe_answers(window, keyframes(k), boxes)
            times = {mode: [] for mode in MODES}
            for r in range(args.repeats):
                for mode in MODES[r % 2:] + MODES[:r % 2]:
                    times[mode].append(timed_prepare(single, window, answers, mode, args.max_batch))
            together, one_by_one = (float(np.median(times[mode])) for mode in MODES)
            rows[pattern][str(k)] = {"together_ms": round(together * 1000, 1), "one_by_one_ms": round(one_by_one * 1000, 1),
                                     "ratio": round(together / one_by_one, 3), "keyframes": keyframes(k)}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_model_arguments(parser)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--window", type=int, default=PipelineConfig().window_frames, help="frames in the window")
    parser.add_argument("--repeats", type=int, default=3, help="timed preparations per mode")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "catchups.json")
    args = parser.parse_args(argv)
    if max(args.counts) > 8 or 2 * (max(args.counts) - 1) >= args.window - 1:
        parser.error("--counts: at most 8 targets, their spread keyframes (2 apart) before the window's newest frame")
    started = time.time()
    with torch.inference_mode():
        rows = run(args)
    write_report(args.out, {**run_record(argv, args, started), "patterns": rows})
    for pattern, by_count in rows.items():
        for k, row in by_count.items():
            print(f"{pattern} keyframes, {k} answers: together {row['together_ms']:.0f} ms, one by one "
                  f"{row['one_by_one_ms']:.0f} ms ({row['ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
