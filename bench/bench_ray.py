#!/usr/bin/env python3
"""Benchmark: ``vrs-replay --dataset`` on Ray (issue 16): sequences per hour with 1 and 2 workers,
and Ray's start-up cost.

Runs, each in a fresh process (``python -m vrs_node.eval.replay``), end to end, in turn
(``--repeats`` rounds):

- ``1 worker``: the single-process path (``--workers 1``, no Ray), torch on one thread
  (``OMP_NUM_THREADS=1``);
- ``2 workers``: ``--workers 2 --threads-per-worker 1`` on the embedded local Ray.

Input: the DAVIS-2016 sample with ``--expression all`` (every expression of every video: 8
sequences on the shared sample), the first ``--limit`` frames of each; profile tiny-random (256 px),
stream mode, instruction prompt, CPU. A run's wall time includes Python's start, model loading
(once per worker) and, with Ray, its start-up: sequences per hour = sequences / wall x 3600.

Ray start-up: the embedded Ray started as ``vrs-replay`` starts it
(:func:`vrs_node.eval.parallel.start_ray`), until one empty actor answers (a worker process is up),
then ``ray.shutdown``; median of ``--startups`` in this process.

Speed-up: sequences per hour of 2 workers over 1, of the best run of each and per round (the two
runs of a round ran back to back, under the same load). Writes ``bench/out/ray_eval.json``
(``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DAVIS, REPO


def replay_run(workers: int, limit: int, out: Path) -> dict:
    """One end-to-end ``vrs-replay`` run in a fresh process: wall seconds and what it replayed."""
    command = [sys.executable, "-m", "vrs_node.eval.replay", "--dataset", str(DAVIS), "--expression", "all",
               "--limit", str(limit), "--device", "cpu", "--quiet", "--out", str(out), "--workers", str(workers)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "RAY_DISABLE_USAGE_STATS": "1"}
    if workers == 1:
        env["OMP_NUM_THREADS"] = "1"
    else:
        command += ["--threads-per-worker", "1"]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    sequences, frames = summary["overall"]["sequences"], summary["overall"]["frames"]
    return {"workers": workers, "wall_s": round(wall, 2), "sequences": sequences, "frames": frames,
            "sequences_per_hour": round(sequences / wall * 3600, 1), "frames_per_s": round(frames / wall, 3),
            "retries": summary.get("parallel", {}).get("retries_total"), "failures": len(summary.get("failures", []))}


def ray_startup(times: int) -> dict:
    """Median seconds of the embedded Ray's start until an empty actor answers, and of its shutdown."""
    import ray

    from vrs_node.eval.parallel import start_ray

    @ray.remote(num_cpus=1)
    class Empty:
        def ready(self) -> bool:
            return True

    args = argparse.Namespace(ray_address=None, quiet=True, workers=2, threads_per_worker=1)
    starts, stops = [], []
    for _ in range(times):
        begin = time.perf_counter()
        start_ray(args)
        ray.get(Empty.remote().ready.remote())
        up = time.perf_counter()
        ray.shutdown()
        starts.append(up - begin)
        stops.append(time.perf_counter() - up)
    return {"start_to_first_actor_s": round(statistics.median(starts), 2), "shutdown_s": round(statistics.median(stops), 2),
            "runs": times, "all_start_s": [round(s, 2) for s in starts]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=10, help="frames per sequence (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (1 worker, 2 workers) (default %(default)s)")
    parser.add_argument("--startups", type=int, default=3, help="Ray start-ups timed (default %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "ray_eval.json")
    args = parser.parse_args()
    loadavg_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.repeats):
            for workers in (1, 2):
                runs.append(replay_run(workers, args.limit, Path(scratch) / f"{round_}-{workers}"))
                print(runs[-1], flush=True)
    startup = ray_startup(args.startups)
    best = {w: max((r for r in runs if r["workers"] == w), key=lambda r: r["sequences_per_hour"]) for w in (1, 2)}
    import ray
    import torch

    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(["bench/bench_ray.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "ray": ray.__version__, "cuda": torch.cuda.is_available(),
                    "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()},
        "input": {"dataset": str(DAVIS), "expression": "all", "limit": args.limit, "profile": "tiny-random",
                  "mode": "stream", "prompt": "instruction", "device": "cpu"},
        "runs": runs, "ray_startup": startup,
        "speedup_2_vs_1": round(best[2]["sequences_per_hour"] / best[1]["sequences_per_hour"], 3),
        "speedup_2_vs_1_per_round": [round(two["sequences_per_hour"] / one["sequences_per_hour"], 3)
                                     for one, two in zip(runs[0::2], runs[1::2])],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| workers | sequences | frames | wall s | sequences / hour | frames / s |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['workers']} | {run['sequences']} | {run['frames']} | {run['wall_s']} | "
              f"{run['sequences_per_hour']} | {run['frames_per_s']} |")
    print(f"speed-up 2 vs 1 worker (best runs): {result['speedup_2_vs_1']}, per round "
          f"{result['speedup_2_vs_1_per_round']}; Ray start-up (embedded, to the first actor): "
          f"{startup['start_to_first_actor_s']} s, shutdown {startup['shutdown_s']} s; written {args.out}")


if __name__ == "__main__":
    main()
