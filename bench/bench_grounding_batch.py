#!/usr/bin/env python3
"""Benchmark: k instructions grounded in one batched query vs k separate queries (issue 14).

One run, ``tiny-random`` at ``--size`` px (256 by default) in ``--precision`` (fp32 by default;
bf16: SAM-2 under autocast, the grounding models in bf16), random weights (cost only, never
quality), a window of ``--window`` DAVIS-2016 ``blackswan`` frames with their SAM-2 features, and
the first k of four instructions of different lengths, for each k in ``--ks``:

* **separate**: ``Grounder.ground`` once per instruction, one after the other;
* **batched**: one ``Grounder.ground_many`` over the k instructions.

Two regimes, each timed ``--repeats`` times with separate and batched interleaved (order
alternating), medians reported, ratio = median batched / median separate, in wall time and in
this process's CPU time (``time.process_time``, all threads: the steadier figure when other
processes load the machine):

* ``cached``: every per-frame input (CLIP embeddings, MLLM frame tokens) and text embedding is
  already cached, as for the periodic re-queries of running targets;
* ``cold``: a fresh window (the same frames and SAM-2 features, nothing else cached) and a fresh
  text cache, as for instructions that arrive together; the separate queries share the window's
  per-frame caches as they would in the node (the first one computes them).

Per-stage medians (the Grounding's ``timings_s``; for separate queries summed over the k) say where
the time goes; ``llm_tokens`` gives the token rows the LLM runs (batch x length over its calls),
batched vs the sum of the separate prompts (the prefill's compute for a large LLM, where it
dominates a query). Each batched
result is checked against its separate query (keyframe, max |diff| of SEG/TAK/TAK').
``tks_decode`` gives TKS's decode alone: k ``decode_token`` calls vs one ``decode_tokens`` of the
k tokens on one frame (CPU time, medians of ``--repeats``), as ``ground_many`` decodes a dense
frame held by all k lattices.

``--real-llm-layers L`` (0: skipped) adds the prefill alone at VRS-HQ-7B's width (LLaMA-7B with L
of its 32 decoder layers, fp32, random weights and random CLIP-L patch tokens), for the largest
k: k prompts over the same lattice (8 dense frames) and over two lattices, each as k ``forward``
calls vs one ``prefill``; there the prefill is nearly all of a query's cost (bench_grounding.py).
The prompts are tokenised by the random profiles' byte-level tokenizer (one token per byte: each
instruction's own text, after the frames, runs about 3x longer than with LLaMA's), or by the
tokenizer of the VRS-HQ checkpoint in ``--tokenizer`` (e.g. the golden VRS-HQ-tiny's
SentencePiece model: about 3.3 characters per token on these prompts, as LLaMA's).

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

from common import davis_sequence, filled_window  # noqa: E402

from vrs_node.core.frames import SAM2_KEY, FrameWindow  # noqa: E402
from vrs_node.core.grounder import Grounder  # noqa: E402
from vrs_node.core.tracker import StreamingTracker  # noqa: E402
from vrs_node.models.config import PRECISION_CHOICES  # noqa: E402
from vrs_node.models.mllm import FrameTokens, PrefillInput, VrshqMLLM, special_token_ids, vrshq_7b_config  # noqa: E402
from vrs_node.models.precision import tracker_precision_options  # noqa: E402
from vrs_node.models.profiles import build_grounding_models, build_sam2_for_profile, get_profile  # noqa: E402
from vrs_node.models.prompt import build_prompt, clean_instruction, tokenize_prompt  # noqa: E402
from vrs_node.models.tokenizer import load_vrshq_tokenizer  # noqa: E402

INSTRUCTIONS = ["the black swan", "what is swimming on the dark water?", "the water",
                "the bird with the red beak that swims from left to right"]
STAGES = ("clip_anchor", "mllm_frame_tokens", "mllm_prefill", "tks")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="SAM-2 input size (px)")
    p.add_argument("--window", type=int, default=16, help="frames in the window (the engine's default)")
    p.add_argument("--ks", default="1,2,4", help="comma list of batch sizes")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--real-llm-layers", type=int, default=0, help="decoder layers of the 7B-wide prefill (0: skip)")
    p.add_argument("--tokenizer", type=Path, help="a VRS-HQ checkpoint folder whose tokenizer the 7B-wide prefill's "
                   "prompts use (default: the byte-level one of the random profiles)")
    p.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                   help="the grounding models' and SAM-2's precision (vrs_node.models.precision)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "grounding_batch.json")
    return p.parse_args(argv)


def fresh_window(window: FrameWindow) -> FrameWindow:
    """The same frames (stamps) and SAM-2 features, nothing else cached."""
    fresh = FrameWindow(window.capacity)
    for frame in window.snapshot():
        new = fresh.append(frame.image, frame.stamp_ns)
        fresh.set_feature(new.index, SAM2_KEY, window.get_feature(frame.index, SAM2_KEY))
    return fresh


def stage_sums(groundings, shared: bool) -> dict[str, float]:
    """Stage seconds of one timed run: summed over separate queries; a batch's shared stages once."""
    sums = {}
    for stage in STAGES:
        values = [g.timings_s.get(stage, 0.0) for g in groundings]
        sums[stage] = values[0] if shared and stage != "tks" else sum(values)
    return sums


def max_diff(batched, alone) -> dict:
    return {"same_keyframes": all(b.keyframe == a.keyframe for b, a in zip(batched, alone)),
            "max_abs_seg_tak_takprime": max(float(max((b.tokens.seg - a.tokens.seg).abs().max(),
                                                      (b.tokens.tak - a.tokens.tak).abs().max(),
                                                      (b.token - a.token).abs().max()))
                                            for b, a in zip(batched, alone))}


def measure(models, grounder, window, k, cold, repeats):
    """Interleaved timings of k separate queries and one batched query (``cold``: each with a
    fresh grounder and window; else with ``grounder`` and ``window``, caches filled)."""
    instructions = [clean_instruction(t) for t in INSTRUCTIONS[:k]]
    times = {"separate": [], "batched": []}
    cpu = {"separate": [], "batched": []}
    stages = {"separate": [], "batched": []}
    results = {}
    for r in range(repeats):
        for case in (("separate", "batched") if r % 2 == 0 else ("batched", "separate")):
            g = make_grounder(models, grounder.tracker) if cold else grounder
            w = fresh_window(window) if cold else window
            start, start_cpu = time.perf_counter(), time.process_time()
            out = [g.ground(w, i) for i in instructions] if case == "separate" else g.ground_many(w, instructions)
            times[case].append(time.perf_counter() - start)
            cpu[case].append(time.process_time() - start_cpu)
            stages[case].append(stage_sums(out, shared=case == "batched"))
            results[case] = out
    med = {case: statistics.median(t) for case, t in times.items()}
    med_cpu = {case: statistics.median(t) for case, t in cpu.items()}
    return {"k": k, "separate_s": med["separate"], "batched_s": med["batched"],
            "ratio": med["batched"] / med["separate"], "separate_cpu_s": med_cpu["separate"],
            "batched_cpu_s": med_cpu["batched"], "cpu_ratio": med_cpu["batched"] / med_cpu["separate"],
            "all_s": times, "all_cpu_s": cpu,
            "stages_s": {case: {s: statistics.median(x[s] for x in stages[case]) for s in STAGES}
                         for case in stages},
            **max_diff(results["batched"], results["separate"])}


def decode_cost(tracker, window, ks, repeats) -> list[dict]:
    """CPU seconds of k ``decode_token`` calls vs one ``decode_tokens`` of k tokens on one frame."""
    feats = window.get_feature(window.snapshot()[0].index, SAM2_KEY)
    tokens = [torch.randn(256, generator=torch.Generator().manual_seed(i)) for i in range(max(ks))]
    rows = []
    for k in ks:
        cpu = {"separate": [], "batched": []}
        for _ in range(repeats):
            for case, run in (("separate", lambda: [tracker.decode_token(feats, t) for t in tokens[:k]]),
                              ("batched", lambda: tracker.decode_tokens(feats, tokens[:k]))):
                start = time.process_time()
                run()
                cpu[case].append(time.process_time() - start)
        med = {case: statistics.median(t) for case, t in cpu.items()}
        rows.append({"k": k, "separate_cpu_s": med["separate"], "batched_cpu_s": med["batched"],
                     "cpu_ratio": med["batched"] / med["separate"]})
        print(f"TKS decode k={k}: {med['separate'] * 1e3:.1f} ms vs {med['batched'] * 1e3:.1f} ms CPU, ratio "
              f"{med['batched'] / med['separate']:.3f}", flush=True)
    return rows


def warm_up(grounder: Grounder, window: FrameWindow) -> None:
    """One batched query over all :data:`INSTRUCTIONS`: every per-frame input and text embedding
    cached, as the ``cached`` regime times them."""
    grounder.ground_many(window, [clean_instruction(t) for t in INSTRUCTIONS])


def make_grounder(models, tracker) -> Grounder:
    return Grounder(models.mllm, models.tokenizer, models.anchor_scorer, tracker, special_ids=models.special_ids)


def llm_tokens(models, grounder, window, k) -> dict:
    """Token rows the LLM runs (batch x length, summed over its calls): k separate queries vs the batch."""
    calls = []
    hook = models.mllm.llm.register_forward_hook(
        lambda m, a, kw, out: calls.append(kw["inputs_embeds"].shape[0] * kw["inputs_embeds"].shape[1]),
        with_kwargs=True)
    try:
        instructions = [clean_instruction(t) for t in INSTRUCTIONS[:k]]
        for i in instructions:
            grounder.ground(window, i)
        separate, calls[:] = sum(calls), []
        grounder.ground_many(window, instructions)
    finally:
        hook.remove()
    return {"k": k, "separate_tokens": separate, "batched_tokens": sum(calls), "batched_llm_calls": len(calls),
            "ratio": sum(calls) / separate}


def real_prefill(tokenizer, layers: int, k: int, dense: int = 8) -> dict:
    """Prefill seconds at VRS-HQ-7B's width: k separate ``forward`` calls vs one ``prefill``, with
    the k prompts over one lattice and over two (alternating), tokenised by ``tokenizer``."""
    torch.manual_seed(0)
    mllm = VrshqMLLM(vrshq_7b_config(len(tokenizer), num_hidden_layers=layers)).eval()
    frames = [FrameTokens(p, p.mean(dim=0)) for p in torch.randn(2 * dense, 256, 1024)]
    seg, tak = special_token_ids(tokenizer)
    out = {"layers": layers, "k": k, "dense_frames": dense}
    for case, lattices in (("one_lattice", 1), ("two_lattices", 2)):
        prompts = [PrefillInput(tokenize_prompt(build_prompt(clean_instruction(INSTRUCTIONS[i]), dense),
                                                tokenizer), frames[i % lattices::lattices][:dense])
                   for i in range(k)]
        start = time.process_time()
        alone = [mllm(p.input_ids, p.dense, seg, tak) for p in prompts]
        separate = time.process_time() - start
        start = time.process_time()
        batched = mllm.prefill(prompts, seg, tak)
        together = time.process_time() - start
        out[case] = {"text_tokens": [sum(i >= 0 for i in p.input_ids) for p in prompts],  # images: < 0
                     "separate_cpu_s": separate, "batched_cpu_s": together, "cpu_ratio": together / separate,
                     "max_abs_seg_tak": max(float(max((a.seg - b.seg).abs().max(), (a.tak - b.tak).abs().max()))
                                            for a, b in zip(alone, batched))}
        print(f"7B-wide prefill ({layers} layers), k={k}, {case}: separate {separate:.1f} s CPU, batched "
              f"{together:.1f} s CPU, ratio {together / separate:.3f}", flush=True)
    return out


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    profile = get_profile("tiny-random")
    model, transform = build_sam2_for_profile(profile, image_size=args.size)
    models = build_grounding_models(profile, precision=args.precision)
    tracker = StreamingTracker(model, transform, **tracker_precision_options(args.precision, "cpu"))
    window = filled_window(tracker, davis_sequence("blackswan", args.window)[0])
    grounder = make_grounder(models, tracker)
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_average": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()},
              "instructions": INSTRUCTIONS, "regimes": {}}
    ks = [int(k) for k in args.ks.split(",")]
    with torch.inference_mode():
        warm_up(grounder, window)
        report["llm_tokens"] = [llm_tokens(models, grounder, window, k) for k in ks]
        report["tks_decode"] = decode_cost(tracker, window, ks, args.repeats)
        for regime in ("cached", "cold"):
            report["regimes"][regime] = []
            for k in ks:
                row = measure(models, grounder, window, k, regime == "cold", args.repeats)
                report["regimes"][regime].append(row)
                print(f"{regime:6s} k={k}: separate {row['separate_s'] * 1e3:7.1f} ms, batched "
                      f"{row['batched_s'] * 1e3:7.1f} ms, ratio {row['ratio']:.3f} (CPU time "
                      f"{row['cpu_ratio']:.3f}), same keyframes "
                      f"{row['same_keyframes']}, max |diff| {row['max_abs_seg_tak_takprime']:.1e}", flush=True)
        if args.real_llm_layers:
            tokenizer = load_vrshq_tokenizer(args.tokenizer) if args.tokenizer else models.tokenizer
            report["real_prefill"] = real_prefill(tokenizer, args.real_llm_layers, max(ks))
    report["load_average_after"] = os.getloadavg()
    print(json.dumps(report["llm_tokens"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
