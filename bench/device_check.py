#!/usr/bin/env python3
"""GPU device check: every figure issue 12 asks of a CUDA machine, in one run of under 8 minutes.

Random weights throughout (cost and size only, never quality). Frames: the bundled
``sample/blackswan`` JPEGs, upscaled once to 1920 x 1080 (a 1080p camera). Parts, in this order
(each is timed with ``torch.cuda.synchronize``; a part that does not fit the time left is
written down as not run, with the reason, never dropped silently):

0. ``host``: host time per raw 1080p frame outside the model (pre-processing on the device, hole
   filling, the mask back on the host), p50/p99 (goal <= 3 ms at 1024 px).
1. ``tracker_fps``: SAM-2.1 Hiera-T, S, B+ and L at 1024 px, each in fp32, bf16 (autocast) and
   bf16 + ``torch.compile`` (:func:`vrs_node.models.sam2_compile.compile_sam2`): per-frame time of
   ``encode`` (uint8 frame -> device pre-processing -> image encoder) + ``track`` + the mask back
   on the host, after a warm-up; FPS = 1 / median.
2. ``memory``: Hiera-B+ bf16 (+ compile when it ran) over 2,000 tracked frames:
   ``torch.cuda.max_memory_allocated`` per 100 frames after the first 100; flat = (max - min) /
   min <= 1 %.
3. ``reasoner``: the 7B-shaped reasoner (``vrshq-7b-random``: CLIP-224, LLaMA-7B with all 32
   layers, CLIP-336 anchor; SAM-2 Hiera-L at 1024) in bf16: a first query (nothing cached) and a
   re-query (every per-frame input cached), per stage; then the prefill and the LLM's weight memory
   with each ``reasoner_quantization`` (none, int8, nf4).
4. ``first_mask``: instruction -> first mask: a live engine fed at 30 FPS; from
   ``set_instruction`` to the first result that tracks the target.
5. ``hot_path``: the live engine at 30 FPS, p50/p99 of push -> result, once with a box prompt and no
   queries, once following an instruction re-grounded at 1 Hz (a query always running).
6. ``grounding_batch``: issue 14's batched query, one ``ground_many`` over 4 instructions vs 4
   ``ground`` calls (per-frame inputs cached, medians of 3, interleaved:
   ``bench/bench_grounding_batch.py``), on ``tiny-random`` at 256 px (the issue's setting) and on
   the 7B-shaped reasoner the parts before loaded.
7. ``deactivate``: GPU memory allocated with every model loaded, and after a lifecycle
   deactivate (weights to host memory, the allocator's cache returned).
8. ``cuda_checks``: what CI cannot check without a GPU: compiled vs eager SAM-2, the quantized
   reasoners on CUDA (tiny-random).
9. ``targets``: the per-frame cost (encode + track, p50) with 1/2/4/8 targets on Hiera-B+ in bf16
   (``MultiTargetTracker`` at the node's ``target_batch``, box prompts on a grid, all added on the
   first frame), relative to 1; 8 targets in one batch; 8 targets added one per frame; then 1, 4
   and 8 targets on ``tiny-random`` at 256 px in the node's precision (the issue's setting).
10. ``catch_ups``: a batched query's catch-ups on Hiera-B+ in bf16: 4 answers on the window's first
   frame prepared together (one batched call per frame) and one after another
   (``bench/bench_catchups.py``), medians of 3.

Writes ``<out-dir>/device_<gpu>.json`` (after every part, so a run cut short keeps what it
measured) and ``<out-dir>/device_<gpu>.md`` (the table, goals beside the figures). Refuses to run
without CUDA (exit 2). ``--cpu-smoke`` runs every part on the CPU with tiny sizes (Hiera-T at
256 px, the tiny MLLM, a few frames) so that the script's plumbing is tested where no GPU is.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import platform
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_catchups import MODES as CATCHUP_MODES  # noqa: E402
from bench_catchups import keyframe_answers, timed_prepare  # noqa: E402
from bench_grounding_batch import make_grounder, warm_up  # noqa: E402
from bench_grounding_batch import measure as measure_query_batch  # noqa: E402
from common import box_of, filled_window, grid_boxes  # noqa: E402

from vrs_node.core.config import PipelineConfig  # noqa: E402
from vrs_node.core.engine import StreamingEngine  # noqa: E402
from vrs_node.core.grounder import Grounder  # noqa: E402
from vrs_node.core.pipeline import build_pipeline  # noqa: E402
from vrs_node.core.prompts import MaskPrompt, PointsPrompt  # noqa: E402
from vrs_node.core.results import STATUS_TRACKING  # noqa: E402
from vrs_node.core.targets import MultiTargetTracker  # noqa: E402
from vrs_node.core.tracker import StreamingTracker  # noqa: E402
from vrs_node.models.precision import tracker_precision_options  # noqa: E402
from vrs_node.models.profiles import get_profile, load_models, release_accelerator_memory  # noqa: E402
from vrs_node.models.prompt import build_prompt, clean_instruction, tokenize_prompt  # noqa: E402
from vrs_node.models.quantize import (AGREEMENT, QUANTIZATION_MODES, embedding_agreement,  # noqa: E402
                                      move_reasoner, quantize_reasoner, weight_bytes)
from vrs_node.models.sam2_compile import DEFAULT_MODE as DEFAULT_COMPILE_MODE  # noqa: E402
from vrs_node.models.sam2_compile import compile_sam2  # noqa: E402

SAMPLE = REPO / "sample" / "blackswan"
INSTRUCTION = "the black swan"
GOALS = {
    "hiera-b+ bf16+compile FPS": ">= 60",
    "hiera-l bf16+compile FPS": ">= 40",
    "hot-path p99 with query / without": "<= 1.5",
    "instruction -> first mask": "<= 300 ms",
    "GPU memory over 2,000 frames": "flat within 1 %",
}
TARGET_COUNTS = (1, 2, 4, 8)
TARGET_RUNS = {**{str(n): (n, f"{n} target{'s' * (n > 1)}") for n in TARGET_COUNTS},
               "8_one_batch": (8, "8 targets in one batch"), "8_staggered": (8, "8 targets added on 8 frames")}
"""part_targets' runs by key: (targets, label); all at the node's ``target_batch`` but the one batch;
all targets added on the first frame but the staggered ones (one per frame: separate memories,
tracked in shared calls once 16 frames past the last addition, :mod:`vrs_node.core.joint_step`)."""
TARGET_GOALS = {"4": "<= 1.6x of 1", "8": "<= 2.5x of 1"}
"""Issue 14's goals for the per-frame cost with several targets (by part_targets key)."""
TARGET_GOALS_COUNTS = tuple(int(key) for key in TARGET_GOALS)


@dataclass(frozen=True)
class Sizes:
    """How much each part runs: the full device check, or the CPU smoke run of its plumbing."""

    archs: tuple[str, ...]
    image_size: int
    camera_hw: tuple[int, int]
    warmup: int
    timed: int
    memory_frames: int
    memory_every: int
    tracker_profile: str
    reasoner_profile: str
    window: int
    stream_s: float
    rate_hz: float
    compile_options: dict

    @property
    def tiny_image_size(self) -> int:
        """The ``tiny-random`` runs' input size: 256 px (issue 14's setting), at most ``image_size``."""
        return min(256, self.image_size)


FULL = Sizes(("t", "s", "b+", "l"), 1024, (1080, 1920), 10, 100, 2000, 100, "sam2.1-hiera-{}-random",
             "vrshq-7b-random", 16, 10.0, 30.0, {"mode": DEFAULT_COMPILE_MODE})
SMOKE = Sizes(("t",), 128, (120, 214), 2, 4, 30, 10, "sam2.1-hiera-{}-random", "tiny-random", 6, 2.0, 10.0,
              {"mode": None, "backend": "aot_eager"})
"""The smoke run compiles with ``aot_eager`` (the same traced graphs, run eagerly): inductor's cold
compile takes minutes on a 2-core CPU."""


class Clock:
    """The run's time budget: ``left()`` seconds remain of ``budget_s``."""

    def __init__(self, budget_s: float):
        self.end = time.perf_counter() + budget_s

    def left(self) -> float:
        return self.end - time.perf_counter()


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_frames(sizes: Sizes) -> tuple[list[np.ndarray], np.ndarray]:
    """The sample's RGB frames at the camera size and frame 0's object mask (nearest-resized)."""
    h, w = sizes.camera_hw
    paths = sorted((SAMPLE / "JPEGImages").glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no sample frames in {SAMPLE / 'JPEGImages'}")
    frames = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (w, h),
                         interpolation=cv2.INTER_LINEAR) for p in paths]
    mask = cv2.imread(str(SAMPLE / "Annotations" / (paths[0].stem + ".png")), cv2.IMREAD_GRAYSCALE)
    return frames, cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST) > 0


def percentile_ms(values_s: list[float], q: float) -> float:
    return float(np.percentile(values_s, q) * 1e3)


def track_frames(tracker: StreamingTracker, frames, mask, count: int) -> list[float]:
    """Seconds per frame of encode + track + mask on the host, ``count`` frames after a prompt."""
    tracker.reset()
    tracker.condition(tracker.encode(frames[0]), MaskPrompt(mask))
    times = []
    for i in range(count):
        start = time.perf_counter()
        tracker.track(tracker.encode(frames[1 + i % (len(frames) - 1)])).mask()
        sync(tracker.device)
        times.append(time.perf_counter() - start)
    return times


def part_tracker_fps(device, sizes: Sizes, frames, mask, clock: Clock, state: dict) -> dict:
    """FPS per (architecture, setting); compiled settings last, B+ and L first (the goals)."""
    out = {}
    order = [(a, s) for s in ("fp32", "bf16") for a in sizes.archs]
    order += [(a, "bf16+compile") for a in sorted(sizes.archs, key=lambda a: ("b+", "l", "t", "s").index(a))]
    models = {}
    for arch, setting in order:
        key = f"hiera-{arch} {setting}"
        if clock.left() < (120 if "compile" in setting else 20):
            out[key] = {"not_run": f"time budget ({clock.left():.0f} s left)"}
            continue
        try:
            if arch not in models:
                models[arch] = load_models(get_profile(sizes.tracker_profile.format(arch)), device,
                                           image_size=sizes.image_size, precision="fp32")
            loaded = models[arch]
            precision = "fp32" if setting == "fp32" else "bf16"
            options = {**loaded.tracker_options, **tracker_precision_options(precision, device)}
            compile_s = None
            if "compile" in setting:
                start = time.perf_counter()
                compile_sam2(loaded.sam2, **sizes.compile_options)
                tracker = StreamingTracker(loaded.sam2, loaded.transform, **options)
                track_frames(tracker, frames, mask, sizes.warmup)  # compiles
                compile_s = time.perf_counter() - start
            tracker = StreamingTracker(loaded.sam2, loaded.transform, **options)
            track_frames(tracker, frames, mask, sizes.warmup)
            times = track_frames(tracker, frames, mask, sizes.timed)
            out[key] = {"fps": 1.0 / statistics.median(times), "p50_ms": percentile_ms(times, 50),
                        "p99_ms": percentile_ms(times, 99), "frames": len(times), "compile_s": compile_s}
            if arch == "b+" and "compile" in setting:
                state["bplus_compiled"] = True
        except Exception as exc:  # written down; the other settings still run
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        print(f"  {key}: {out[key]}", flush=True)
        if "compile" in setting:
            models.pop(arch, None)  # compiled in place: not reused uncompiled
    state["models"] = models
    return out


def bplus_bf16(device, sizes: Sizes) -> tuple[str, object]:
    """(arch, models): Hiera-B+ (the smoke run's arch where it has no B+) at ``sizes.image_size``
    in bf16, freshly loaded."""
    arch = "b+" if "b+" in sizes.archs else sizes.archs[0]
    return arch, load_models(get_profile(sizes.tracker_profile.format(arch)), device, image_size=sizes.image_size,
                             precision="bf16")


def shared_bplus_bf16(device, sizes: Sizes, state: dict) -> tuple[str, object]:
    """:func:`bplus_bf16`, loaded once for the parts after ``deactivate`` (``targets``,
    ``catch_ups``), which leave its weights as they are."""
    if "bplus_bf16" not in state:
        state["bplus_bf16"] = bplus_bf16(device, sizes)
    return state["bplus_bf16"]


def part_memory(device, sizes: Sizes, frames, mask, clock: Clock, state: dict) -> dict:
    """max_memory_allocated per ``memory_every`` frames of Hiera-B+ bf16 after a warm-up."""
    arch, loaded = bplus_bf16(device, sizes)  # compiled in place below when tracker_fps compiled it
    if state.get("bplus_compiled"):
        compile_sam2(loaded.sam2, **sizes.compile_options)
    tracker = StreamingTracker(loaded.sam2, loaded.transform, **loaded.tracker_options)
    tracker.condition(tracker.encode(frames[0]), MaskPrompt(mask))
    peaks, per_frame = [], []
    for i in range(sizes.memory_frames):
        if i == sizes.memory_every and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        tracker.track(tracker.encode(frames[1 + i % (len(frames) - 1)])).mask()
        sync(device)
        per_frame.append(time.perf_counter() - start)
        if device.type == "cuda" and i >= sizes.memory_every and (i + 1) % sizes.memory_every == 0:
            peaks.append(torch.cuda.max_memory_allocated(device))
        if clock.left() < 5:
            break
    spread = (max(peaks) - min(peaks)) / min(peaks) if peaks else None  # None on the CPU (smoke run)
    return {"arch": f"hiera-{arch}", "compiled": bool(state.get("bplus_compiled")), "frames": len(per_frame),
            "max_memory_allocated_per_window": peaks, "spread": spread, "flat_within_1pct": spread is not None
            and spread <= 0.01, "fps": 1.0 / statistics.median(per_frame), "bank": tracker.state_size()[0]}


def part_reasoner(device, sizes: Sizes, frames, mask, clock: Clock, state: dict) -> dict:
    """Per-stage query cost of the bf16 reasoner, then the prefill with each quantization."""
    loaded = load_models(get_profile(sizes.reasoner_profile), device, precision="bf16")
    state["reasoner"] = loaded
    tracker = StreamingTracker(loaded.sam2, loaded.transform, **loaded.tracker_options)
    g = loaded.grounding
    grounder = Grounder(g.mllm, g.tokenizer, g.anchor_scorer, tracker, special_ids=g.special_ids)
    window = filled_window(tracker, frames, sizes.window)
    instruction = clean_instruction(INSTRUCTION)
    start = time.perf_counter()
    first = grounder.ground(window, instruction)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    again = grounder.ground(window, instruction)
    again_s = time.perf_counter() - start
    out = {"profile": sizes.reasoner_profile, "llm_layers": g.mllm.llm.config.num_hidden_layers,
           "first_query_s": first_s, "first_query_stages_s": first.timings_s,
           "cached_query_s": again_s, "cached_query_stages_s": again.timings_s, "quantization": {}}
    tokens = [g.mllm.frame_tokens([frames[i % len(frames)]])[0] for i in again.dense_frames]
    ids = tokenize_prompt(build_prompt(instruction, len(tokens)), g.tokenizer)
    reference = None
    for mode in QUANTIZATION_MODES:  # "none" first: the others are compared with its TAK token
        if clock.left() < 60:
            out["quantization"][mode] = {"not_run": f"time budget ({clock.left():.0f} s left)"}
            continue
        try:
            mllm = g.mllm if mode == "none" else quantize_reasoner(copy.deepcopy(g.mllm), mode)
            times = []
            for _ in range(4):
                begin = time.perf_counter()
                tak = mllm(ids, tokens, grounder.seg_id, grounder.tak_id).tak.float().flatten()
                sync(device)
                times.append(time.perf_counter() - begin)
            reference = tak if mode == "none" else reference
            out["quantization"][mode] = {
                "prefill_s": statistics.median(times[1:]), "llm_weight_bytes": weight_bytes(mllm.llm),
                "tak_cosine_to_none": None if reference is None else float(
                    torch.nn.functional.cosine_similarity(tak, reference, dim=0))}
            if mllm is not g.mllm:
                del mllm
                release_accelerator_memory(device)
        except Exception as exc:
            out["quantization"][mode] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
    return out


QUERY_BATCH = 4
"""part_grounding_batch's instructions per batched query (issue 14's goal: <= 0.5x of as many
separate queries)."""


def part_grounding_batch(device, sizes: Sizes, frames, mask, clock: Clock, state: dict) -> dict:
    """One batched query over :data:`QUERY_BATCH` instructions vs as many separate queries, on a
    ``sizes.window``-frame window with every per-frame input cached (after one warm-up batch):
    ``tiny-random`` at 256 px (128 in the smoke run) in the node's precision on the device (bf16
    on CUDA), then the reasoner part's models when they are loaded. ``ratio`` = median batched /
    median separate."""
    size = sizes.tiny_image_size
    models = {f"tiny-random {size} px": lambda: load_models(get_profile("tiny-random"), device, image_size=size)}
    if "reasoner" in state:
        models[sizes.reasoner_profile] = lambda: state["reasoner"]
    out = {}
    for name, load in models.items():
        if clock.left() < 60:
            out[name] = {"not_run": f"time budget ({clock.left():.0f} s left)"}
            continue
        loaded = load()
        grounder = make_grounder(loaded.grounding, StreamingTracker(loaded.sam2, loaded.transform,
                                                                    **loaded.tracker_options))
        window = filled_window(grounder.tracker, frames, sizes.window)
        warm_up(grounder, window)
        row = measure_query_batch(loaded.grounding, grounder, window, QUERY_BATCH, cold=False, repeats=3)
        out[name] = {key: row[key] for key in ("k", "separate_s", "batched_s", "ratio", "same_keyframes",
                                               "max_abs_seg_tak_takprime")}
        out[name]["precision"] = loaded.precision
    return out


def stream(engine: StreamingEngine, frames, sizes: Sizes, seconds: float, on_start=None) -> float:
    """Push frames at ``sizes.rate_hz`` for ``seconds``; ``on_start()`` after the first frame.
    Returns the perf_counter time ``on_start`` was called at."""
    period = 1.0 / sizes.rate_hz
    started = time.perf_counter()
    called = None
    for i in range(int(seconds * sizes.rate_hz)):
        engine.push(frames[i % len(frames)], int(i * period * 1e9))
        if i == 0 and on_start is not None:
            called = time.perf_counter()
            on_start()
        time.sleep(max(0.0, started + (i + 1) * period - time.perf_counter()))
    return called


def live_engine(loaded, period_s: float, results: list, reports: list, **config) -> StreamingEngine:
    stamped = lambda r: results.append((time.perf_counter(), r))  # noqa: E731
    return build_pipeline(loaded, PipelineConfig(mode="live", period_s=period_s, **config), on_result=stamped,
                          on_query=reports.append)


def part_first_mask(device, sizes: Sizes, frames, mask, clock: Clock, state: dict) -> dict:
    """Time from ``set_instruction`` to the first tracking result delivered, fed at camera rate."""
    loaded = state.get("reasoner") or load_models(get_profile(sizes.reasoner_profile), device, precision="bf16")
    state["reasoner"] = loaded
    out = []
    for _ in range(2):  # the first run pays one-off costs (CUDA kernels, text model)
        results, reports = [], []
        engine = live_engine(loaded, 0.0, results, reports)  # a first query runs at tracking's priority
        asked = stream(engine, frames, sizes, min(3.0, sizes.stream_s),
                       on_start=lambda e=engine: e.set_instruction(INSTRUCTION))
        engine.close()
        first = next((t for t, r in results if r.status == STATUS_TRACKING), None)
        out.append({"first_mask_ms": None if first is None else (first - asked) * 1e3,
                    "query_s": [q.latency_s for q in reports], "query_errors": [q.error for q in reports if q.error]})
    return {"runs": out, "first_mask_ms": out[-1]["first_mask_ms"]}


def part_hot_path(device, sizes: Sizes, frames, mask, clock: Clock, state: dict) -> dict:
    """p50/p99 of push -> result in live mode, without and with a query re-grounding at 1 Hz."""
    loaded = state.get("reasoner") or load_models(get_profile(sizes.reasoner_profile), device, precision="bf16")
    state["reasoner"] = loaded
    out = {}
    for case, period in (("no_query", 0.0), ("query_1hz", 1.0)):
        results, reports = [], []
        engine = live_engine(loaded, period, results, reports)
        if period:
            engine.set_instruction(INSTRUCTION)
        else:
            engine.set_prompt(PointsPrompt(box=box_of(mask)))
        stream(engine, frames, sizes, sizes.stream_s)
        engine.close()
        latencies = [r.latency_s for _, r in results[len(results) // 10:]]  # warm-up tenth dropped
        out[case] = {"p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99),
                     "processed": engine.stats.processed, "dropped": engine.stats.dropped,
                     "queries": len(reports), "query_errors": sum(1 for q in reports if q.error)}
    out["p99_ratio"] = out["query_1hz"]["p99_ms"] / out["no_query"]["p99_ms"]
    return out


def part_deactivate(device, sizes: Sizes, frames, mask, clock: Clock, state: dict) -> dict:
    """GPU memory allocated with the reasoner's models loaded, and after a lifecycle deactivate."""
    loaded = state.pop("reasoner", None) or load_models(get_profile(sizes.reasoner_profile), device,
                                                       precision="bf16")
    state.pop("models", None)
    release_accelerator_memory(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    loaded.to("cpu")
    release_accelerator_memory(device)
    after = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    reserved = torch.cuda.memory_reserved(device) if device.type == "cuda" else 0
    return {"allocated_active_bytes": before, "allocated_inactive_bytes": after,
            "returned_bytes": before - after, "reserved_after_bytes": reserved}


def part_cuda_checks(device, sizes: Sizes, frames, mask, clock: Clock, state: dict) -> dict:
    """What CI cannot check without a GPU, on the tiny-random models: SAM-2 compiled with the device
    check's options tracks like the eager one (max |difference| of the low-res logits and object
    scores over a box prompt and 7 tracked frames); each quantized reasoner keeps its SEG/TAK
    embeddings within ``quantize.AGREEMENT`` of the unquantized bf16 one and gives identical ones
    after a move to host memory and back (a lifecycle deactivate/activate)."""
    sessions = []
    for compiled in (False, True):
        loaded = load_models(get_profile("tiny-random"), device, image_size=sizes.tiny_image_size,
                             precision="fp32")
        if compiled:
            compile_sam2(loaded.sam2, **sizes.compile_options)
        tracker = StreamingTracker(loaded.sam2, loaded.transform, **loaded.tracker_options)
        steps = [tracker.condition(tracker.encode(frames[0]), PointsPrompt(box=box_of(mask)))]
        steps += [tracker.track(tracker.encode(image)) for image in frames[1:8]]
        sessions.append([(r.low_res_logits.float().cpu(), r.object_score) for r in steps])
    out = {"compile_max_abs_logit_diff": max(float((c - e).abs().max()) for (e, _), (c, _) in zip(*sessions)),
           "compile_max_abs_score_diff": max(abs(c - e) for (_, e), (_, c) in zip(*sessions))}
    grounding = load_models(get_profile("tiny-random"), device, precision="bf16").grounding
    seg_id, tak_id = grounding.special_ids
    ids = tokenize_prompt(build_prompt(clean_instruction(INSTRUCTION), 4), grounding.tokenizer)
    tokens = grounding.mllm.frame_tokens(frames[:4])
    reference = grounding.mllm(ids, tokens, seg_id, tak_id)
    for mode in ("int8", "nf4"):
        mllm = quantize_reasoner(copy.deepcopy(grounding.mllm), mode, device)
        quantized = mllm(ids, tokens, seg_id, tak_id)
        agreement = {name: embedding_agreement(getattr(quantized, name), getattr(reference, name))
                     for name in ("seg", "tak")}
        move_reasoner(mllm, "cpu")
        again = move_reasoner(mllm, device)(ids, tokens, seg_id, tak_id)
        max_rel, min_cos = AGREEMENT[mode]
        out[mode] = {"relative_error_cosine": agreement,
                     "within_tolerance": all(rel < max_rel and cos > min_cos for rel, cos in agreement.values()),
                     "round_trip_identical": bool(torch.equal(again.seg, quantized.seg)
                                                  and torch.equal(again.tak, quantized.tak))}
    return out


def part_host(device, sizes: Sizes, frames, mask, clock: Clock, state: dict) -> dict:
    """Host time per raw camera frame outside the model, on the device: pre-processing (uint8 upload,
    resize, normalise, pad), hole filling and the camera-size mask back on the host, with fixed
    low-res logits standing in for SAM-2; p50/p99 over 200 frames (the device synchronised after
    each stage, so a stage counts its own kernels). Decoding and building the ROS messages are not
    in it (the device machine may have no ROS 2): ``bench/bench_host.py`` measures those where ROS is.
    """
    from vrs_node.core.hole_filling import fill_holes_in_mask_scores
    from vrs_node.core.track_result import TrackResult
    from vrs_node.models.sam2_build import FILL_HOLE_AREA, SamImageTransform

    transform = SamImageTransform(sizes.image_size)
    n = sizes.image_size // 4
    logits = torch.linspace(-4, 4, n * n, device=device).reshape(1, 1, n, n)
    stages = {"preprocess": [], "fill_holes": [], "mask": [], "total": []}
    for i in range(220):
        image = frames[i % len(frames)]
        times = []
        for name, fn in (("preprocess", lambda: transform(image, device)),
                         ("fill_holes", lambda: fill_holes_in_mask_scores(logits, FILL_HOLE_AREA)),
                         ("mask", lambda: TrackResult(logits, 1.0, image.shape[:2], transform).mask())):
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
        if i >= 20:
            for name, t in zip(("preprocess", "fill_holes", "mask"), times):
                stages[name].append(t)
            stages["total"].append(sum(times))
    return {name: {"p50_ms": percentile_ms(t, 50), "p99_ms": percentile_ms(t, 99)} for name, t in stages.items()}


def timed_targets(loaded, frames, sizes: Sizes, count: int, max_batch: int, staggered: bool = False) -> dict:
    """p50/p99 ms of encode + track with ``count`` targets (box prompts on a grid) in a
    ``MultiTargetTracker`` of at most ``max_batch`` a batch, all added on the first frame or, when
    ``staggered``, one per frame (then timed from 16 frames after the last addition); its state
    bytes and batches at the end."""
    device = loaded.sam2.device
    tracker = MultiTargetTracker(StreamingTracker(loaded.sam2, loaded.transform, **loaded.tracker_options),
                                 max(TARGET_COUNTS), max_batch)
    boxes = grid_boxes(*frames[0].shape[:2], count)
    for target_id, box in enumerate(boxes[:1] if staggered else boxes, start=1):
        tracker.add(target_id, PointsPrompt(box=box))
    warmup = sizes.warmup + (count + 16 if staggered else 0)
    times = []
    for k in range(warmup + sizes.timed):
        if staggered and 0 < k < count:
            tracker.add(k + 1, PointsPrompt(box=boxes[k]))
        start = time.perf_counter()
        tracker.track(tracker.encode(frames[k % len(frames)]))
        sync(device)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return {"p50_ms": percentile_ms(times, 50), "p99_ms": percentile_ms(times, 99),
            "state_bytes": tracker.state_size()[1], "batches": [len(c) for c in tracker.batches]}


def part_targets(device, sizes: Sizes, frames, mask, clock: Clock, state: dict) -> dict:
    """Per-frame cost with 1/2/4/8 targets at the node's ``target_batch``, relative to 1 (issue
    14's goals: 4 <= 1.6x, 8 <= 2.5x); 8 targets in one batch (``8_one_batch``: whether a larger
    ``target_batch`` pays on this GPU); 8 targets added one per frame (``8_staggered``, timed from
    16 frames after the last addition: what the joint steps save of separate memories). Then
    ``tiny_random``: 1, 4 and 8 targets on ``tiny-random`` at 256 px (128 in the smoke run) in the
    node's precision, the setting of the issue's goals."""
    arch, loaded = shared_bplus_bf16(device, sizes, state)
    batch = PipelineConfig().target_batch
    out: dict = {"arch": f"hiera-{arch}", "target_batch": batch}
    for key, (count, _) in TARGET_RUNS.items():
        if clock.left() < 15:
            out[key] = {"not_run": f"time budget ({clock.left():.0f} s left)"}
            continue
        out[key] = timed_targets(loaded, frames, sizes, count, 0 if key == "8_one_batch" else batch,
                                 staggered=key == "8_staggered")
    tiny = load_models(get_profile("tiny-random"), device, image_size=sizes.tiny_image_size)
    out["tiny_random"] = {"image_size": sizes.tiny_image_size, "precision": tiny.precision}
    for count in (1, *TARGET_GOALS_COUNTS):
        out["tiny_random"][str(count)] = ({"not_run": f"time budget ({clock.left():.0f} s left)"}
                                          if clock.left() < 15 else timed_targets(tiny, frames, sizes, count, batch))
    for runs in (out, out["tiny_random"]):
        add_ratios_to_1(runs)
    return out


def add_ratios_to_1(runs: dict) -> None:
    """``ratio_to_1`` = p50 / the p50 of run ``"1"``, in every measured run of ``runs`` (none when
    run ``"1"`` was not measured)."""
    one = runs.get("1", {}).get("p50_ms")
    for run in runs.values():
        if one and isinstance(run, dict) and "p50_ms" in run:
            run["ratio_to_1"] = run["p50_ms"] / one


CATCHUP_ANSWERS = 4
"""part_catch_ups' answers, all on the window's first frame."""


def part_catch_ups(device, sizes: Sizes, frames, mask, clock: Clock, state: dict) -> dict:
    """A batched query's catch-ups (:data:`CATCHUP_ANSWERS` answers on the first frame of a
    ``sizes.window``-frame window) prepared together and one after another, at the node's
    ``target_batch``; p50 of 3 each, interleaved, and together / one after another."""
    arch, loaded = shared_bplus_bf16(device, sizes, state)
    single = StreamingTracker(loaded.sam2, loaded.transform, **loaded.tracker_options)
    window = filled_window(single, frames, sizes.window)
    answers = keyframe_answers(window, [0] * CATCHUP_ANSWERS, grid_boxes(*frames[0].shape[:2], CATCHUP_ANSWERS))
    times = {mode: [] for mode in CATCHUP_MODES}
    for r in range(3):
        for mode in CATCHUP_MODES[r % 2:] + CATCHUP_MODES[:r % 2]:
            times[mode].append(timed_prepare(single, window, answers, mode, PipelineConfig().target_batch))
    out = {"arch": f"hiera-{arch}", "answers": CATCHUP_ANSWERS, "frames_each": len(window) - 2,
           **{f"{mode}_p50_ms": percentile_ms(t, 50) for mode, t in times.items()}}
    out["ratio"] = out["together_p50_ms"] / out["one_by_one_p50_ms"]
    return out


PARTS = (("host", part_host), ("tracker_fps", part_tracker_fps), ("memory", part_memory), ("reasoner", part_reasoner),
         ("first_mask", part_first_mask), ("hot_path", part_hot_path), ("grounding_batch", part_grounding_batch),
         ("deactivate", part_deactivate), ("cuda_checks", part_cuda_checks), ("targets", part_targets),
         ("catch_ups", part_catch_ups))


def table(report: dict) -> str:
    """The report as a Markdown table of the headline figures, goals beside them."""
    p = report["parts"]
    rows = [("GPU", report["gpu"], ""), ("torch", report["torch"], "")]
    host = p.get("host", {})
    if "total" in host:
        rows.append((f"host time per {report['camera_hw'][1]}x{report['camera_hw'][0]} raw frame at "
                     f"{report['image_size']} px, p50/p99 (pre-processing {host['preprocess']['p50_ms']:.2f}, "
                     f"holes {host['fill_holes']['p50_ms']:.2f}, mask {host['mask']['p50_ms']:.2f})",
                     f"{host['total']['p50_ms']:.2f} / {host['total']['p99_ms']:.2f} ms", "<= 3 ms (1080p, 1024 px)"))
    for key, value in p.get("tracker_fps", {}).items():
        figure = f"{value['fps']:.1f} FPS (p99 {value['p99_ms']:.1f} ms)" if "fps" in value else _why(value)
        rows.append((f"{key} at {report['image_size']} px", figure, GOALS.get(f"{key} FPS", "")))
    mem = p.get("memory", {})
    if mem.get("spread") is not None:
        rows.append((f"GPU memory over {mem['frames']} frames ({mem['arch']})",
                     f"spread {mem['spread'] * 100:.2f} %", GOALS["GPU memory over 2,000 frames"]))
    reasoner = p.get("reasoner", {})
    for stage, seconds in reasoner.get("first_query_stages_s", {}).items():
        rows.append((f"reasoner first query: {stage}", f"{seconds * 1e3:.1f} ms", ""))
    for stage, seconds in reasoner.get("cached_query_stages_s", {}).items():
        rows.append((f"reasoner re-query: {stage}", f"{seconds * 1e3:.1f} ms", ""))
    for mode, value in reasoner.get("quantization", {}).items():
        figure = (f"prefill {value['prefill_s'] * 1e3:.1f} ms, LLM weights {value['llm_weight_bytes'] / 2**30:.2f} GiB"
                  if "prefill_s" in value else _why(value))
        rows.append((f"reasoner_quantization {mode}", figure, ""))
    targets = p.get("targets", {})
    for key, (_, what) in TARGET_RUNS.items():
        value = targets.get(key, {})
        if "ratio_to_1" in value:
            rows.append((f"{what} ({targets['arch']} bf16), per frame", f"{value['p50_ms']:.1f} ms "
                         f"({value['ratio_to_1']:.2f}x of 1)", TARGET_GOALS.get(key, "")))
    tiny = targets.get("tiny_random", {})
    for count in TARGET_GOALS_COUNTS:
        value = tiny.get(str(count), {})
        if "ratio_to_1" in value:
            rows.append((f"{count} targets (tiny-random {tiny['image_size']} px {tiny['precision']}), per frame",
                         f"{value['p50_ms']:.1f} ms ({value['ratio_to_1']:.2f}x of 1)", TARGET_GOALS[str(count)]))
    catch_ups = p.get("catch_ups", {})
    if "ratio" in catch_ups:
        rows.append((f"{catch_ups['answers']} answers' catch-ups ({catch_ups['arch']} bf16), together / one by one",
                     f"{catch_ups['together_p50_ms']:.0f} / {catch_ups['one_by_one_p50_ms']:.0f} ms "
                     f"({catch_ups['ratio']:.2f}x)", ""))
    for name, value in p.get("grounding_batch", {}).items():
        figure = (f"{value['batched_s'] * 1e3:.0f} / {value['separate_s'] * 1e3:.0f} ms ({value['ratio']:.2f}x)"
                  if "ratio" in value else _why(value))
        rows.append((f"batched query of {QUERY_BATCH} instructions ({name}), batched / separate", figure,
                     "<= 0.5x"))
    first = p.get("first_mask", {})
    if first.get("first_mask_ms") is not None:
        rows.append(("instruction -> first mask", f"{first['first_mask_ms']:.0f} ms", GOALS["instruction -> first mask"]))
    hot = p.get("hot_path", {})
    if "p99_ratio" in hot:
        rows.append(("hot path p50/p99, no query", f"{hot['no_query']['p50_ms']:.1f} / {hot['no_query']['p99_ms']:.1f} ms", ""))
        rows.append(("hot path p50/p99, query at 1 Hz",
                     f"{hot['query_1hz']['p50_ms']:.1f} / {hot['query_1hz']['p99_ms']:.1f} ms", ""))
        rows.append(("hot-path p99 with query / without", f"{hot['p99_ratio']:.2f}",
                     GOALS["hot-path p99 with query / without"]))
    deact = p.get("deactivate", {})
    if "returned_bytes" in deact:
        rows.append(("GPU memory returned by deactivate", f"{deact['returned_bytes'] / 2**30:.2f} GiB of "
                     f"{deact['allocated_active_bytes'] / 2**30:.2f} GiB", ""))
    checks = p.get("cuda_checks", {})
    if "compile_max_abs_logit_diff" in checks:
        rows.append(("compiled vs eager SAM-2 (tiny), max abs diff of logits / scores",
                     f"{checks['compile_max_abs_logit_diff']:.2e} / {checks['compile_max_abs_score_diff']:.2e}", ""))
        for mode in ("int8", "nf4"):
            rows.append((f"{mode} reasoner (tiny): within tolerance, identical after a round trip",
                         f"{checks[mode]['within_tolerance']}, {checks[mode]['round_trip_identical']}", "True, True"))
    for name, value in p.items():
        if isinstance(value, dict) and ("error" in value or "not_run" in value):
            rows.append((name, _why(value), ""))
    lines = ["| measurement | figure | goal |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def _why(value: dict) -> str:
    return f"not run: {value['not_run']}" if "not_run" in value else f"error: {value.get('error')}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--budget-s", type=float, default=450.0, help="time budget of the whole run (s)")
    p.add_argument("--parts", default=",".join(name for name, _ in PARTS), help="comma list of parts to run")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run every part on the CPU with tiny sizes (tests the script, measures nothing)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("device_check: CUDA is not available on this machine; the device check measures a GPU and "
              "refuses to run without one (--cpu-smoke tests its plumbing on the CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    sizes = SMOKE if args.cpu_smoke else FULL
    gpu = "cpu-smoke" if args.cpu_smoke else torch.cuda.get_device_name(device)
    slug = re.sub(r"[^a-z0-9]+", "_", gpu.lower()).strip("_")
    clock = Clock(args.budget_s)
    report = {"gpu": gpu, "date": dt.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
              "host": platform.node(), "image_size": sizes.image_size, "camera_hw": sizes.camera_hw, "parts": {},
              "part_s": {}}
    frames, mask = load_frames(sizes)
    state: dict = {}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out_dir / f"device_{slug}.json", args.out_dir / f"device_{slug}.md"
    wanted = args.parts.split(",")
    for name, part in PARTS:
        if name not in wanted:
            report["parts"][name] = {"not_run": "not asked for (--parts)"}
            continue
        print(f"{name} ({clock.left():.0f} s left)", flush=True)
        start = time.perf_counter()
        try:
            if clock.left() < 10:
                raise TimeoutError(f"time budget ({clock.left():.0f} s left)")
            with torch.inference_mode():
                report["parts"][name] = part(device, sizes, frames, mask, clock, state)
        except TimeoutError as exc:
            report["parts"][name] = {"not_run": str(exc)}
        except Exception as exc:  # written down; the next part still runs
            report["parts"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        report["part_s"][name] = time.perf_counter() - start
        json_path.write_text(json.dumps(report, indent=1, default=str))
        gc.collect()
    md_path.write_text(table(report))
    print(table(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
