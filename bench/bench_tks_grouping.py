#!/usr/bin/env python3
"""Benchmark: TKS's decoder work on all frames of a query in grouped calls vs one call per frame.

One run, ``tiny-random`` at ``--size`` px (random weights: cost only, never quality), a window of
``--window`` DAVIS-2016 ``blackswan`` frames with their SAM-2 features and every per-frame input
cached (as for the periodic re-queries of running targets). Three modes, swapped in within the same
process, so all run on the same models and machine, interleaved (order rotating), ``--repeats``
times:

- ``grouped``, the product: the candidates' object scores
  (:meth:`StreamingTracker.grouped_object_scores`) and the keyframes' decodes
  (:meth:`StreamingTracker.grouped_decode_tokens`) each in decoder calls of up to ``SCORE_BATCH``
  tokens over several frames;
- ``decodes_per_keyframe``: scores grouped, one decode call per keyframe (before the keyframes'
  decodes were grouped);
- ``per_frame``: one call per frame for both (before the scores were grouped).

For k in ``--ks``: the keyframe selection alone (``select_many`` on the reasonings of k
instructions), and whole queries (k separate ``ground`` calls, one ``ground_many``). Medians of
this process's CPU time and of wall time.

Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_grounding_batch import INSTRUCTIONS, make_grounder  # noqa: E402
from common import davis_sequence, filled_window  # noqa: E402

from vrs_node.core.tracker import StreamingTracker  # noqa: E402
from vrs_node.models.profiles import build_grounding_models, build_sam2_for_profile, get_profile  # noqa: E402
from vrs_node.models.prompt import clean_instruction  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="SAM-2 input size (px)")
    p.add_argument("--window", type=int, default=16, help="frames in the window (the engine's default)")
    p.add_argument("--ks", default="1,4", help="comma list of instruction counts")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "tks_grouping.json")
    return p.parse_args(argv)


def timed(run) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``run()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return time.process_time() - cpu, time.perf_counter() - wall


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    profile = get_profile("tiny-random")
    model, transform = build_sam2_for_profile(profile, image_size=args.size)
    tracker = StreamingTracker(model, transform)
    window = filled_window(tracker, davis_sequence("blackswan", args.window)[0])
    grounder = make_grounder(build_grounding_models(profile), tracker)
    instructions = [clean_instruction(t) for t in INSTRUCTIONS]
    scores, decodes = tracker.grouped_object_scores, tracker.grouped_decode_tokens

    def per_frame(grouped):
        return lambda groups: [out for group in groups for out in grouped([group])]

    modes = {"grouped": (scores, decodes), "decodes_per_keyframe": (scores, per_frame(decodes)),
             "per_frame": (per_frame(scores), per_frame(decodes))}
    samples: dict[str, list[tuple[float, float]]] = {}
    with torch.inference_mode():
        grounder.ground_many(window, instructions)  # warm-up: every per-frame input and text cached
        for k in [int(k) for k in args.ks.split(",")]:
            reasonings = grounder.reason_many(window, instructions[:k])
            cases = {"select": lambda: grounder.select_many(reasonings),
                     "separate": lambda: [grounder.ground(window, i) for i in instructions[:k]],
                     "batched": lambda: grounder.ground_many(window, instructions[:k])}
            for r in range(args.repeats):
                for mode in list(modes)[r % len(modes):] + list(modes)[:r % len(modes)]:
                    tracker.grouped_object_scores, tracker.grouped_decode_tokens = modes[mode]
                    for case, run in cases.items():
                        samples.setdefault(f"k={k} {case} {mode}", []).append(timed(run))
    tracker.grouped_object_scores, tracker.grouped_decode_tokens = scores, decodes
    medians = {key: {"cpu_ms": statistics.median(s[0] for s in v) * 1e3,
                     "wall_ms": statistics.median(s[1] for s in v) * 1e3} for key, v in samples.items()}
    for key, m in medians.items():
        print(f"{key:40s} CPU {m['cpu_ms']:7.1f} ms, wall {m['wall_ms']:7.1f} ms")
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "load_average": os.getloadavg(),
              "args": {k: str(v) for k, v in vars(args).items()}, "medians": medians,
              "samples": {k: [list(s) for s in v] for k, v in samples.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
