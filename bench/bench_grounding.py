#!/usr/bin/env python3
"""Benchmark: the cost of grounding an instruction, and what a running query does to the hot path.

Three parts, one invocation (all on DAVIS-2016 ``blackswan`` frames, random weights):

* **Query latency breakdown** for each ``--sizes`` entry: ``tiny`` = the ``tiny-random`` profile
  (Hiera-T at 256 px, tiny MLLM and CLIP) and ``real`` = VRS-HQ-7B's real architectures: SAM-2
  Hiera-L at 1024 px (pad), CLIP ViT-L/14-224 tower, CLIP ViT-L-14-336 anchor and a LLaMA-7B-wide
  LLM with ``--real-llm-layers`` of its 32 decoder layers (float32 on CPU; a full 7B model does not
  fit in 24 GiB in float32 and bf16 matmuls on 2 CPU cores would take minutes per query). The
  prefill of the 32-layer model is extrapolated linearly from the measured one:
  t32 = t_embed_and_head + 32 / L * (t_L - t_embed_and_head), with t_embed_and_head measured on a
  0-layer model; the report says which figures are measured and which extrapolated. Stages:
  ``clip_anchor`` (embedding every window frame + the text, first query: nothing cached),
  ``mllm_frame_tokens`` (CLIP-224 + DPC-KNN on the dense frames), ``mllm_prefill``, ``tks``
  (TAK' decoded on every dense frame from cached SAM-2 features), ``catch_up`` (condition on the
  keyframe + track the frames after it in the window), and the same query again with every
  per-frame input cached (what a periodic re-query costs).
* **TKS, cached vs re-encoding**: the Hiera image encoder + the token decode for every candidate
  (the reference's way: a fresh state per candidate re-encodes it) against the decode alone on
  cached features; ratio of medians over ``--repeats``.
* **Hot path with and without a concurrent query** (``tiny`` only): a live engine fed at
  ``--rate`` Hz for ``--hot-frames`` frames, once tracking a box prompt with no grounder work and
  once following an instruction with ``period_s`` = one frame period (a query is always running);
  p50 / p99 of the per-frame latency (push -> result), frames processed and dropped.

Writes ``--out`` (JSON) and a PNG plot beside it. Random weights: cost only, never quality.
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import box_of, davis_sequence, filled_window  # noqa: E402

from vrs_node.core.config import PipelineConfig  # noqa: E402
from vrs_node.core.frames import SAM2_KEY  # noqa: E402
from vrs_node.core.grounder import Grounder  # noqa: E402
from vrs_node.core.pipeline import build_pipeline  # noqa: E402
from vrs_node.core.prompts import PointsPrompt, TokenPrompt  # noqa: E402
from vrs_node.core.tracker import StreamingTracker  # noqa: E402
from vrs_node.models.byte_tokenizer import byte_tokenizer  # noqa: E402
from vrs_node.models.clip_anchor import ClipAnchorScorer  # noqa: E402
from vrs_node.models.mllm import VrshqMLLM, vrshq_7b_config  # noqa: E402
from vrs_node.models.profiles import (build_grounding_models, build_sam2_for_profile,  # noqa: E402
                                      get_profile, load_models)
from vrs_node.models.prompt import build_prompt, clean_instruction, tokenize_prompt  # noqa: E402

INSTRUCTION = "the black swan"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,real", help="comma list of tiny, real")
    p.add_argument("--window", type=int, default=16, help="frames in the window (dense lattice <= 11)")
    p.add_argument("--real-llm-layers", type=int, default=2, help="decoder layers of the measured LLaMA-7B-wide LLM")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each timed stage")
    p.add_argument("--hot-frames", type=int, default=60)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "grounding.json")
    return p.parse_args(argv)


def timed(fn, repeats):
    """(median seconds, all seconds, last result) of ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def build(size: str, llm_layers: int):
    """(tracker, grounder, description) for the ``tiny`` or ``real`` architectures."""
    if size == "tiny":
        profile = get_profile("tiny-random")
        model, transform = build_sam2_for_profile(profile)
        models = build_grounding_models(profile)
        tracker = StreamingTracker(model, transform)
        return tracker, Grounder(models.mllm, models.tokenizer, models.anchor_scorer, tracker,
                                  special_ids=models.special_ids), \
            "tiny-random: Hiera-T 256 px, tiny CLIP-224/LLaMA/CLIP anchor"
    profile = get_profile("vrshq-7b-random")
    model, transform = build_sam2_for_profile(profile)
    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    mllm = VrshqMLLM(vrshq_7b_config(len(tokenizer), num_hidden_layers=llm_layers)).eval()
    anchor = ClipAnchorScorer.from_pretrained("ViT-L-14-336", pretrained=None)
    tracker = StreamingTracker(model, transform)
    return tracker, Grounder(mllm, tokenizer, anchor, tracker), \
        f"Hiera-L 1024 px (pad) + CLIP ViT-L/14-224 + LLaMA-7B width with {llm_layers}/32 layers + CLIP ViT-L-14-336, fp32"


def query_breakdown(size, frames, args):
    tracker, grounder, description = build(size, args.real_llm_layers)
    instruction = clean_instruction(INSTRUCTION)
    encode_s, _, _ = timed(lambda: tracker.encode(frames[0]), args.repeats)
    window = filled_window(tracker, frames)
    start = time.perf_counter()
    first = grounder.ground(window, instruction)
    first_total = time.perf_counter() - start
    cached_s, cached_all, g = timed(lambda: grounder.ground(window, instruction), args.repeats)
    following = [window.get_feature(i, SAM2_KEY) for i in window.indices() if i > g.keyframe]
    catch_up_s, _, _ = timed(lambda: tracker.catch_up(g.keyframe_features, TokenPrompt(g.token), following),
                             args.repeats)
    feats = [window.get_feature(i, SAM2_KEY) for i in g.dense_frames]
    token = torch.zeros(256)
    decode_s, _, _ = timed(lambda: [tracker.decode_token(f, token) for f in feats], args.repeats)
    reencode_s, _, _ = timed(lambda: [tracker.decode_token(tracker.encode(frames[i]), token)
                                      for i in g.dense_frames], args.repeats)
    result = {
        "description": description, "window_frames": len(frames), "dense_frames": len(g.dense_frames),
        "sam2_encode_per_frame_s": encode_s,
        "first_query_s": first_total, "first_query_stages_s": first.timings_s,
        "cached_query_s": cached_s, "cached_query_all_s": cached_all, "cached_query_stages_s": g.timings_s,
        "catch_up_s": catch_up_s, "catch_up_frames": len(following),
        "tks_cached_s": decode_s, "tks_reencode_s": reencode_s, "tks_reencode_over_cached": reencode_s / decode_s,
    }
    if size == "real":
        result.update(extrapolate_prefill(args, frames, grounder, first))
    return result


def extrapolate_prefill(args, frames, grounder, grounding):
    """Prefill of the full 32-layer LLM from the measured L-layer one and a 0-layer one."""
    tokens = [grounder.mllm.frame_tokens([frames[i]])[0] for i in grounding.dense_frames]
    ids = tokenize_prompt(build_prompt(clean_instruction(INSTRUCTION), len(tokens)), grounder.tokenizer)
    measured, _, _ = timed(lambda: grounder.mllm(ids, tokens, grounder.seg_id, grounder.tak_id), args.repeats)
    base = VrshqMLLM(vrshq_7b_config(len(grounder.tokenizer), num_hidden_layers=0)).eval()
    base_s, _, _ = timed(lambda: base(ids, tokens, grounder.seg_id, grounder.tak_id), args.repeats)
    layers = args.real_llm_layers
    return {"prefill_tokens": len(ids) - len(tokens) + 112 * len(tokens),
            "prefill_measured_s": measured, "prefill_measured_layers": layers, "prefill_0_layers_s": base_s,
            "prefill_32_layers_extrapolated_s": base_s + 32 / layers * (measured - base_s)}


def hot_path(frames, args):
    """p50/p99 hot-path latency, live mode, without and with a concurrently running query."""
    profile = get_profile("tiny-random")
    out = {}
    for case in ("prompt_only", "with_queries"):
        results, reports = [], []
        period = 1.0 / args.rate
        engine = build_pipeline(load_models(profile),
                                PipelineConfig(mode="live", period_s=period if case == "with_queries" else 0),
                                on_result=results.append, on_query=reports.append)
        _, masks, _ = davis_sequence("blackswan", 1)
        if case == "with_queries":
            engine.set_instruction(INSTRUCTION)
        else:
            engine.set_prompt(PointsPrompt(box=box_of(masks[0])))
        started = time.perf_counter()
        for i in range(args.hot_frames):
            engine.push(frames[i % len(frames)], int(i * period * 1e9))
            time.sleep(max(0.0, started + (i + 1) * period - time.perf_counter()))
        time.sleep(1.0)
        engine.close()
        latencies = [r.latency_s for r in results]
        out[case] = {"processed": engine.stats.processed, "dropped": engine.stats.dropped,
                     "queries": len(reports), "p50_s": float(np.percentile(latencies, 50)),
                     "p99_s": float(np.percentile(latencies, 99)), "latencies_s": latencies,
                     "query_latencies_s": [q.latency_s for q in reports]}
    return out


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [s for s in ("tiny", "real") if s in report["queries"]]
    fig, axes = plt.subplots(1, len(sizes) + ("hot_path" in report), figsize=(5 * (len(sizes) + 1), 4))
    axes = np.atleast_1d(axes)
    for ax, size in zip(axes, sizes):
        q = report["queries"][size]
        stages = dict(q["first_query_stages_s"])
        if "prefill_32_layers_extrapolated_s" in q:
            stages[f"mllm_prefill ({q['prefill_measured_layers']} layers, measured)"] = stages.pop("mllm_prefill")
            stages["mllm_prefill (32 layers, extrap.)"] = q["prefill_32_layers_extrapolated_s"]
        stages["catch_up"] = q["catch_up_s"]
        stages["tks re-encoding (reference)"] = q["tks_reencode_s"]
        ax.barh(list(stages), list(stages.values()), color="tab:blue")
        ax.set_xlabel("seconds")
        ax.set_title(f"query stages: {size}")
    if "hot_path" in report:
        ax = axes[-1]
        for case, color in (("prompt_only", "tab:green"), ("with_queries", "tab:red")):
            ax.hist(np.array(report["hot_path"][case]["latencies_s"]) * 1e3, bins=30, alpha=0.6, color=color,
                    label=f"{case} (p99 {report['hot_path'][case]['p99_s'] * 1e3:.0f} ms)")
        ax.set_xlabel("hot-path latency per frame (ms)")
        ax.set_title("tiny-random, live mode")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    frames = davis_sequence("blackswan", args.window)[0]
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor() or
              platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}, "queries": {}}
    for size in args.sizes.split(","):
        print(f"query breakdown: {size}", flush=True)
        with torch.inference_mode():
            report["queries"][size] = query_breakdown(size, frames, args)
        print(json.dumps({k: v for k, v in report["queries"][size].items() if not k.endswith("all_s")}, indent=1))
    if "tiny" in args.sizes.split(","):
        print("hot path", flush=True)
        report["hot_path"] = hot_path(frames, args)
        print(json.dumps({c: {k: v for k, v in r.items() if not k.endswith("latencies_s")}
                          for c, r in report["hot_path"].items()}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
