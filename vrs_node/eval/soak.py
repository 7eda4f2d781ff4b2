"""``python -m vrs_node.eval.soak FRAMES`` (``scripts/soak.sh FRAMES``): a long run of the engine,
failed on growth.

What runs: the ROS-free :class:`~vrs_node.core.engine.StreamingEngine` in ``sync`` mode over the
models the node loads for a profile (``tiny-random`` at 128 px by default), on synthetic camera
frames (a bright disc moving over a textured background, ``--width`` x ``--height``, a fresh array
per frame as a camera driver delivers them) stamped at a nominal ``--fps`` (30). The run alternates
segments of ``--segment`` frames: a box prompt around the disc, then an instruction (one of a few
texts in turn) re-queried every ``--period-s`` (1 s) of stamp time, i.e. every 30 frames at 30 fps.
Stamp time, not wall time: the schedule does not depend on the machine's speed, and in ``sync``
mode a due query runs inside ``push``, so the run is reproducible.

Sampled every ``--sample-every`` frames, at the reference frame and at the end: RSS (``VmRSS``),
the target's memory bank (:meth:`MultiTargetTracker.state_size`: entries and tensor bytes), the
frame window (frames held) and its per-frame feature cache (entries), and the engine's counters.

The run fails (exit status 1; 2 for unusable arguments) when, at any sample:

- RSS(end) / RSS(at ``--reference-frame``, 1,000) > ``--max-rss-ratio`` (1.05);
- window frames > ``window_frames``; cached features > ``window_frames`` x 3 (the SAM-2
  features, the CLIP-336 embedding and the MLLM tokens of a frame);
- bank entries > ``max_cond_frames`` + the tracker's recent-memory depth (``keep_non_cond``);
- bank bytes > that entry bound x the bytes per entry (shared positional encoding included) at the
  first sample with a target (every entry has the same tensors at a fixed resolution);
- any frame or query failed (``stats.errors`` or ``stats.query_errors`` > 0).

A tqdm bar on stderr shows the progress and the RSS; at the end a table of samples (the first, the
reference, tenths of the run and the last), a table of bounds, and ``PASS`` or ``FAIL: <reasons>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from vrs_node.core.config import PipelineConfig
from vrs_node.core.engine import StreamingEngine
from vrs_node.core.pipeline import build_pipeline
from vrs_node.core.prompts import PointsPrompt
from vrs_node.models.profiles import get_profile, load_models

FEATURE_KEYS = 3
"""Features a frame can cache in the window: SAM-2 features, CLIP-336 embedding, MLLM tokens."""
INSTRUCTIONS = ("the bright disc", "the moving ball", "the round white object")
MIB = 1 << 20


@dataclass(frozen=True)
class Sample:
    """The state after ``frame`` frames were processed."""

    frame: int
    rss_bytes: int
    bank_entries: int
    bank_bytes: int
    window_frames: int
    window_features: int
    queries: int
    query_errors: int
    errors: int


@dataclass(frozen=True)
class Bounds:
    """What no sample may exceed (see the module docstring)."""

    max_rss_ratio: float
    window_frames: int
    window_features: int
    bank_entries: int


def rss_bytes() -> int:
    """Resident set size of this process (``VmRSS`` of /proc/self/status)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def frame_at(index: int, width: int, height: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Synthetic frame ``index`` (H x W x 3 uint8) and the box of its disc: the disc travels on a
    Lissajous path over a fixed texture, so every frame differs and the run never repeats exactly."""
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (xs * 255 // max(width - 1, 1)).astype(np.uint8)
    image[..., 1] = (ys * 255 // max(height - 1, 1)).astype(np.uint8)
    image[..., 2] = ((xs // 16 + ys // 16) % 2 * 80 + 40).astype(np.uint8)
    radius = max(min(width, height) // 8, 2)
    cx = width / 2 + (width / 2 - radius - 1) * np.sin(index * 0.031)
    cy = height / 2 + (height / 2 - radius - 1) * np.sin(index * 0.047 + 1.0)
    image[(xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2] = 255
    return image, (cx - radius, cy - radius, cx + radius, cy + radius)


def build_engine(profile: str, image_size: int, window_frames: int, max_cond_frames: int,
                 period_s: float) -> StreamingEngine:
    """A sync engine over ``profile``'s models on the CPU, built the way the node builds it."""
    models = load_models(get_profile(profile), "cpu", image_size=image_size)
    if models.grounding is None:
        raise ValueError(f"profile {profile!r} has no language models: the soak needs instructions")
    return build_pipeline(models, PipelineConfig(mode="sync", window_frames=window_frames,
                                                 max_cond_frames=max_cond_frames, period_s=period_s))


def sample(engine: StreamingEngine, frame: int) -> Sample:
    entries, nbytes = engine.target_tracker.state_size()
    stats = engine.stats
    return Sample(frame, rss_bytes(), entries, nbytes, len(engine.window), engine.window.feature_count(),
                  stats.queries, stats.query_errors, stats.errors)


def bounds_of(engine: StreamingEngine, max_rss_ratio: float) -> Bounds:
    """The bounds the engine's configuration implies (module docstring)."""
    tracker = engine.target_tracker  # the soak follows one instruction: one target's memory
    return Bounds(max_rss_ratio, engine.config.window_frames, engine.config.window_frames * FEATURE_KEYS,
                  tracker.max_cond_frames + tracker.keep_non_cond)


def check(samples: list[Sample], bounds: Bounds, reference_frame: int) -> tuple[list[str], list[tuple]]:
    """(failures, rows of the bounds table: quantity, worst observed, bound, ok) of a run's samples;
    ``samples`` must include the one at ``reference_frame`` and end with the last frame's."""
    reference = next(s for s in samples if s.frame == reference_frame)
    last = samples[-1]
    with_target = next((s for s in samples if s.bank_entries), None)
    per_entry = with_target.bank_bytes / with_target.bank_entries if with_target is not None else 0.0
    rows = [
        (f"RSS(end) / RSS({reference_frame})", last.rss_bytes / reference.rss_bytes, bounds.max_rss_ratio),
        ("window frames", max(s.window_frames for s in samples), bounds.window_frames),
        ("window cached features", max(s.window_features for s in samples), bounds.window_features),
        ("memory bank entries", max(s.bank_entries for s in samples), bounds.bank_entries),
        ("memory bank bytes", max(s.bank_bytes for s in samples), bounds.bank_entries * per_entry),
        ("frame errors", last.errors, 0),
        ("query errors", last.query_errors, 0),
    ]
    table = [(name, worst, bound, worst <= bound) for name, worst, bound in rows]
    return [f"{name} {worst:.4g} > {bound:.4g}" for name, worst, bound, ok in table if not ok], table


def run(engine: StreamingEngine, frames: int, args: argparse.Namespace) -> tuple[list[Sample], float]:
    """Drive ``engine`` for ``frames`` frames (module docstring); (samples, wall seconds)."""
    frame_ns = round(1e9 / args.fps)
    samples: list[Sample] = []
    started = time.perf_counter()
    with tqdm(total=frames, unit="frame", desc="soak", file=sys.stderr, mininterval=1.0) as bar:
        for i in range(frames):
            image, box = frame_at(i, args.width, args.height)
            segment, first_of_segment = divmod(i, args.segment)
            if first_of_segment == 0 and segment % 2 == 0:
                engine.set_prompt(PointsPrompt(box=box))
            elif first_of_segment == 0:
                engine.set_instruction(INSTRUCTIONS[(segment // 2) % len(INSTRUCTIONS)])
            engine.push(image, i * frame_ns, "soak")
            done = i + 1
            if done % args.sample_every == 0 or done in (args.reference_frame, frames):
                samples.append(sample(engine, done))
                bar.set_postfix(rss_mib=f"{samples[-1].rss_bytes / MIB:.1f}", queries=samples[-1].queries)
            bar.update()
    return samples, time.perf_counter() - started


def report(samples: list[Sample], table: list[tuple], failures: list[str], reference_frame: int,
           wall_s: float) -> str:
    """The summary: samples (first, reference, tenths of the run, last), bounds, verdict."""
    last = samples[-1].frame
    wanted = [samples[0].frame, reference_frame] + [last * k // 10 for k in range(1, 11)]
    shown = sorted({next(s for s in samples if s.frame >= frame) for frame in wanted}, key=lambda s: s.frame)
    lines = [f"{last} frames in {wall_s:.0f} s ({wall_s / last * 1e3:.1f} ms/frame)", "",
             f"{'frame':>7} {'RSS MiB':>9} {'bank':>5} {'bank KiB':>9} {'window':>7} {'features':>9} "
             f"{'queries':>8} {'q.errors':>9} {'errors':>7}"]
    lines += [f"{s.frame:>7} {s.rss_bytes / MIB:>9.1f} {s.bank_entries:>5} {s.bank_bytes / 1024:>9.1f} "
              f"{s.window_frames:>7} {s.window_features:>9} {s.queries:>8} {s.query_errors:>9} {s.errors:>7}"
              for s in shown]
    lines += ["", f"{'quantity':<28} {'worst':>12} {'bound':>12}  ok"]
    lines += [f"{name:<28} {worst:>12.4g} {bound:>12.4g}  {'yes' if ok else 'NO'}" for name, worst, bound, ok in table]
    lines += ["", "PASS" if not failures else "FAIL: " + "; ".join(failures)]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="soak", description="Drive the engine for FRAMES frames (a prompt, then an instruction re-queried "
                                 "every period, in turn) and fail on growth of RSS, memory bank, window or caches "
                                 "(exit 1; 2 for unusable arguments).")
    parser.add_argument("frames", type=int, help="frames to process (more than --reference-frame)")
    parser.add_argument("--profile", default="tiny-random", help="model profile with language models (tiny-random)")
    parser.add_argument("--size", type=int, default=128, help="SAM-2 input size in pixels (128)")
    parser.add_argument("--width", type=int, default=320, help="camera frame width (320)")
    parser.add_argument("--height", type=int, default=240, help="camera frame height (240)")
    parser.add_argument("--fps", type=float, default=30.0, help="nominal frame rate of the stamps (30)")
    parser.add_argument("--period-s", type=float, default=1.0, help="re-query period in stamp seconds (1)")
    parser.add_argument("--segment", type=int, default=250, help="frames per prompt / instruction segment (250)")
    parser.add_argument("--window-frames", type=int, default=PipelineConfig.window_frames,
                        help="engine window (the engine's default, %(default)s)")
    parser.add_argument("--max-cond-frames", type=int, default=PipelineConfig.max_cond_frames,
                        help="conditioning frames (the node's default, %(default)s)")
    parser.add_argument("--sample-every", type=int, default=100, help="frames between samples (100)")
    parser.add_argument("--reference-frame", type=int, default=1000, help="the RSS reference sample (1000)")
    parser.add_argument("--max-rss-ratio", type=float, default=1.05, help="largest RSS(end)/RSS(reference) (1.05)")
    args = parser.parse_args(argv)
    if not 0 < args.reference_frame < args.frames:
        parser.error(f"FRAMES ({args.frames}) must be more than --reference-frame ({args.reference_frame}) > 0")
    for name in ("segment", "sample_every", "width", "height"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.fps <= 0 or args.period_s <= 0:
        parser.error("--fps and --period-s must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        engine = build_engine(args.profile, args.size, args.window_frames, args.max_cond_frames, args.period_s)
    except ValueError as err:
        print(f"soak: {err}", file=sys.stderr)
        return 2
    samples, wall_s = run(engine, args.frames, args)
    failures, table = check(samples, bounds_of(engine, args.max_rss_ratio), args.reference_frame)
    print(report(samples, table, failures, args.reference_frame, wall_s))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
