#!/usr/bin/env python3
"""Benchmark: ``vrs-replay --all-expressions`` against the same expressions one at a time (issue 14).

Each round runs, video by video, back to back in this process, the same video's expressions both
ways (``vrs_node.eval.replay.run --sequences VIDEO``, models loaded at the start of each run; pairs
run back to back so that both sides of a ratio see the same load on a shared machine):

- ``one at a time``: ``--expression all``, one engine pass per expression;
- ``grouped``: ``--all-expressions``, one engine pass per video following its expressions as targets.

Input: every video of the DAVIS-2016 sample (8 expressions in 4 videos on the shared sample), the
first ``--limit`` frames of each (``--image-size`` 256 by default); profile tiny-random at ``--image-size`` px, stream mode,
instruction prompt, CPU (``OMP_WAIT_POLICY=PASSIVE``).

Figures per run: ``wall_s`` (the whole command: model loading, frame decoding, engine, writing the
outputs, scoring); ``engine_s``, the engine's own time: the sum of the per-frame push latencies of
every pass (one at a time: of every expression; grouped: of one expression per pass, as the frames
of a pass are shared); and, grouped, the summary's ``pass_s`` (the passes' time, decoding included).
A discarded one-frame run first takes the imports and the first model load out of the timed runs.
The speed-ups are one-at-a-time over grouped: of the totals (every round and video) and the median
of the pairs. The agreement of the two runs' masks is counted too (pixels that differ). Writes ``bench/results/all_expressions.json``
(``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DAVIS, REPO
from PIL import Image

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def replay_run(grouped: bool, video: str, limit: int, image_size: int, out: Path) -> dict:
    """One ``vrs-replay`` run in this process: its wall seconds, engine seconds and what it replayed."""
    from vrs_node.eval.replay import run

    argv = ["--dataset", str(DAVIS), "--sequences", video, "--limit", str(limit), "--image-size", str(image_size), "--device", "cpu",
            "--quiet", "--out", str(out), *(["--all-expressions"] if grouped else ["--expression", "all"])]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run(argv)
    wall = time.perf_counter() - start
    sequences = summary["sequences"]
    if grouped:
        passes = {s["pass"]["group"]: s for s in sequences.values()}.values()
    else:
        passes = sequences.values()
    engine_ms = sum(s["latency_ms"]["mean"] * s["latency_ms"]["count"] for s in passes)
    return {"video": video, "mode": "grouped" if grouped else "one at a time", "wall_s": round(wall, 2),
            "engine_s": round(engine_ms / 1e3, 2), "passes": len(list(passes)),
            "pass_s": summary.get("all_expressions", {}).get("pass_s"), "expressions": len(sequences),
            "frames": summary["overall"]["frames"], "J&F": summary["overall"]["J&F"]}


def mask_agreement(single: Path, grouped: Path) -> dict:
    """Mask PNGs compared between two output folders: count, pixels in all, pixels that differ."""
    pngs = sorted(single.rglob("*.png"))
    pngs = [p for p in pngs if "plots" not in p.parts]
    differ = total = 0
    for path in pngs:
        a = np.array(Image.open(path)) > 0
        b = np.array(Image.open(grouped / path.relative_to(single))) > 0
        differ, total = differ + int((a != b).sum()), total + a.size
    return {"masks": len(pngs), "pixels": total, "pixels_differing": differ}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=12, help="frames per video (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=256, help="SAM-2 input size (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (one at a time, grouped) (default %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "all_expressions.json")
    args = parser.parse_args()
    loadavg_before, runs = os.getloadavg(), []
    videos = list(json.loads((DAVIS / "meta_expressions.json").read_text())["videos"])
    with tempfile.TemporaryDirectory() as scratch:
        replay_run(True, videos[0], 1, args.image_size, Path(scratch) / "warm-up")  # imports, first load: not timed
        for round_ in range(args.repeats):
            for video in videos:
                for grouped in (False, True):
                    out = Path(scratch) / f"{round_}-{int(grouped)}"
                    runs.append({"round": round_ + 1, **replay_run(grouped, video, args.limit, args.image_size,
                                                                   out / video)})
                    print(runs[-1], flush=True)
        agreement = mask_agreement(Path(scratch) / "0-0", Path(scratch) / "0-1")
    import torch

    singles, groups = runs[0::2], runs[1::2]

    def total(key: str) -> float:
        return round(sum(r[key] for r in singles) / sum(r[key] for r in groups), 3)

    def median(key: str) -> float:
        return round(float(np.median([s[key] / g[key] for s, g in zip(singles, groups)])), 3)

    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": f"bench/bench_all_expressions.py --limit {args.limit} "
                                                               f"--image-size {args.image_size} --repeats {args.repeats}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "loadavg_before": loadavg_before,
                    "loadavg_after": os.getloadavg()},
        "input": {"dataset": str(DAVIS), "limit": args.limit, "profile": "tiny-random", "image_size": args.image_size,
                  "mode": "stream", "prompt": "instruction", "device": "cpu"},
        "runs": runs, "mask_agreement_round_1": agreement,
        "speedup_wall": total("wall_s"), "speedup_engine": total("engine_s"),
        "speedup_wall_median_pair": median("wall_s"), "speedup_engine_median_pair": median("engine_s"),
        "speedup_engine_per_pair": [round(s["engine_s"] / g["engine_s"], 3) for s, g in zip(singles, groups)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| round | video | run | passes | expressions | frames | wall s | engine s | J&F |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['round']} | {run['video']} | {run['mode']} | {run['passes']} | {run['expressions']} | "
              f"{run['frames']} | {run['wall_s']} | {run['engine_s']} | {run['J&F']:.4f} |")
    print(f"speed-up one at a time / grouped: totals wall {result['speedup_wall']}, engine {result['speedup_engine']}; "
          f"median pair wall {result['speedup_wall_median_pair']}, engine {result['speedup_engine_median_pair']}; "
          f"masks: {agreement}; written {args.out}")


if __name__ == "__main__":
    main()
