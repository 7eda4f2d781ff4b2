#!/usr/bin/env python3
"""Benchmark: the reasoner in another process (issue 15) against the in-process one.

Two parts, one invocation (profile ``tiny-random``, DAVIS-2016 ``blackswan`` frames downscaled by
``--stride``, random weights: cost only, never quality), on a 2-core CPU machine:

* **Hot path with a concurrent query, local vs remote**: a live engine fed at ``--rate`` Hz for
  ``--frames`` frames; an instruction with ``period_s`` = one frame period, so a query is always
  due; the grounding thread at ``--grounding-nice`` (catch-ups are prepared on it). Cases
  (``torch.set_num_threads`` = the cores the process may use; every thread of the
  process is pinned, ``/proc/self/task``):

  - ``baseline_2cores``: a box prompt, no queries, the process on both cores;
  - ``local``: the instruction, the in-process reasoner, the process on both cores (the in-process
    deployment: the grounding thread shares the cores with tracking);
  - ``baseline``: a box prompt, no queries, the process on core 0;
  - ``remote``: the instruction, the tracker (this process, SAM-2 only) on core 0, ``vrs-reasoner``
    on core 1 (``taskset -c 1``) over ROS 2 on this machine; each frame is published (reliable,
    its stamp in the header) on the reasoner's camera topic just before ``engine.push``.

  Per case: frames processed and dropped, queries answered / failed, catch-up frames (of which
  prepared on the grounding thread), p50 / p99 of the per-frame
  latency (push -> result, the first ``--skip`` processed frames left out as warm-up), and the
  ratios local p99 / baseline_2cores p99 and remote p99 / baseline p99 (issue 15's goal: remote
  <= 1.5x).
* **A remote query over a local one**: the same static window of ``--window`` encoded frames,
  caches warm (``--warmup`` queries first), ``--repeats`` queries each: the local
  ``Grounder.ground_many`` (this process on core 1, where the reasoner runs) against
  ``RemoteGrounder.ground_many`` over the link (this process on core 0, the reasoner on core 1,
  holding the same frames); medians, the overhead, and the serialisation of one answer alone
  (``Response.to_json`` + ``response_from_json``) and its size.

Writes ``--out`` (JSON) and the reasoner's log beside it (``<out>.reasoner.log``); prints a table.
"""

from __future__ import annotations

import os

# Before rclpy and torch are imported: a private, local-only DDS domain for this run (the reasoner
# subprocess gets the same environment), and OpenMP threads that sleep when idle (as the tests
# run the console scripts) so an idle pool does not spin on the other process's core.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(10 + os.getpid() % 90)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
import torch  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import box_of, davis_sequence  # noqa: E402

from vrs_node.core.config import PipelineConfig  # noqa: E402
from vrs_node.core.frames import SAM2_KEY, FrameWindow  # noqa: E402
from vrs_node.core.grounder import Grounder, GrounderConfig  # noqa: E402
from vrs_node.core.pipeline import build_pipeline  # noqa: E402
from vrs_node.core.prompts import PointsPrompt  # noqa: E402
from vrs_node.core.reasoner_protocol import Answer, Response, response_from_json  # noqa: E402
from vrs_node.core.tracker import StreamingTracker  # noqa: E402
from vrs_node.io.image import ns_to_stamp, rgb_to_msg  # noqa: E402
from vrs_node.models.profiles import get_profile, load_models  # noqa: E402
from vrs_node.models.prompt import clean_instruction  # noqa: E402
from vrs_node.ros.remote import RemoteReasonerLink  # noqa: E402

INSTRUCTION = "the black swan"
NAMESPACE = "/bench_remote"
IMAGE_TOPIC = f"{NAMESPACE}/image"
FRAME_ID = "bench_cam"
BIN = Path(sys.executable).parent
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
REASONER_STAGES = ("clip_anchor", "mllm_frame_tokens", "mllm_prefill")
"""The stages an answer's timings say the reasoner ran (TDA is folded into the tracker's ``tks``)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=2.0,
                   help="frames pushed per second (hot path; the default leaves the tracker some idle time)")
    p.add_argument("--grounding-nice", type=int, default=PipelineConfig().grounding_nice,
                   help="the engine's grounding_nice (the grounding thread's niceness above the tracking thread's)")
    p.add_argument("--frames", type=int, default=120, help="frames pushed per hot-path case")
    p.add_argument("--skip", type=int, default=2, help="first processed frames of a case left out (warm-up)")
    p.add_argument("--stride", type=int, default=2, help="DAVIS frames downscaled by [::stride, ::stride]")
    p.add_argument("--window", type=int, default=8, help="encoded frames of the static window (query latency)")
    p.add_argument("--warmup", type=int, default=3, help="queries run before the timed ones")
    p.add_argument("--repeats", type=int, default=15, help="timed queries, local and remote each")
    p.add_argument("--reasoner-window", type=int, default=64,
                   help="the reasoner's window_frames (holds every frame the tracker's window may name)")
    p.add_argument("--timeout-s", type=float, default=10.0, help="the link's reasoner_timeout_s")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "remote.json")
    return p.parse_args(argv)


def pin(cores: set[int]) -> None:
    """Every thread of this process on ``cores`` (threads started later inherit it), and torch's
    intra-op threads as many as the cores."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass
    torch.set_num_threads(len(cores))


def ms(seconds: float) -> float:
    return seconds * 1e3


class Reasoner:
    """``vrs-reasoner`` on core 1, this process's camera publisher and the tracker's link to it."""

    def __init__(self, args, log_path: Path):
        self.log = open(log_path, "w")
        cmd = ["taskset", "-c", "1", str(BIN / "vrs-reasoner"), "--ros-args", "-r", f"__ns:={NAMESPACE}",
               "-r", f"image:={IMAGE_TOPIC}", "-p", "model_profile:=tiny-random", "-p", "image_size:=128",
               "-p", f"window_frames:={args.reasoner_window}",
               "-p", f"qos_overrides.{IMAGE_TOPIC}.subscription.reliability:=reliable"]
        self.process = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.node = rclpy.create_node("bench_remote_tracker")
        self.camera = self.node.create_publisher(Image, IMAGE_TOPIC, RELIABLE)
        self.link = RemoteReasonerLink(self.node, NAMESPACE, args.timeout_s)

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Seconds until the reasoner listens on its request and image topics."""
        started = time.monotonic()
        while not (self.link.reachable() and self.camera.get_subscription_count() >= 1):
            if self.process.poll() is not None:
                raise RuntimeError(f"vrs-reasoner exited with {self.process.returncode}; see {self.log.name}")
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"vrs-reasoner not ready after {timeout_s:.0f} s; see {self.log.name}")
            time.sleep(0.1)
        return time.monotonic() - started

    def publish(self, image: np.ndarray, stamp_ns: int) -> None:
        self.camera.publish(rgb_to_msg(image, Header(stamp=ns_to_stamp(stamp_ns), frame_id=FRAME_ID)))

    def close(self) -> None:
        try:
            self.link.close()
            self.node.destroy_node()
        finally:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            self.log.close()


def hot_case(name, cores, models, frames, box, args, instruction=False, reasoner=None):
    """One live run: p50/p99 of the per-frame latency, drops, queries."""
    pin(cores)
    results, reports = [], []
    period = 1.0 / args.rate
    engine = build_pipeline(models, PipelineConfig(mode="live", period_s=period if instruction else 0,
                                                   grounding_nice=args.grounding_nice),
                            on_result=results.append, on_query=reports.append,
                            remote_grounder=reasoner.link.grounder if reasoner is not None else None)
    if instruction:
        engine.set_instruction(INSTRUCTION)
    else:
        engine.set_prompt(PointsPrompt(box=box))
    base = time.time_ns()  # stamps of their own: the reasoner drops a frame whose stamp it holds
    started = time.perf_counter()
    try:
        for i in range(args.frames):
            image, stamp = frames[i % len(frames)], base + int(i * period * 1e9)
            if reasoner is not None:
                reasoner.publish(image, stamp)
            engine.push(image, stamp, FRAME_ID)
            time.sleep(max(0.0, started + (i + 1) * period - time.perf_counter()))
        time.sleep(1.0)
    finally:
        engine.close()
    latencies = [r.latency_s for r in results][args.skip:]
    out = {"cores": sorted(cores), "torch_threads": len(cores), "processed": engine.stats.processed,
           "dropped": engine.stats.dropped, "queries": len(reports),
           "answered": sum(q.error is None for q in reports), "failed": sum(q.error is not None for q in reports),
           "p50_s": float(np.percentile(latencies, 50)), "p99_s": float(np.percentile(latencies, 99)),
           "latencies_s": latencies, "query_latencies_s": [q.latency_s for q in reports],
           "query_errors": sorted({q.error for q in reports if q.error is not None})[:5],
           "catchup_frames": engine.stats.catchup_frames,
           "prepared_catchup_frames": engine.stats.prepared_catchup_frames, "superseded": engine.stats.superseded,
           "query_stages_median_s": stage_medians([q.grounding for q in reports if q.grounding is not None])}
    if reasoner is not None:
        out["remote_stats"] = asdict(engine.grounder.stats)
    print(f"  {name}: processed {out['processed']}, dropped {out['dropped']}, queries {out['answered']}/"
          f"{out['failed']}, catch-up frames {out['catchup_frames']} ({out['prepared_catchup_frames']} prepared), "
          f"p50 {ms(out['p50_s']):.0f} ms, "
          f"p99 {ms(out['p99_s']):.0f} ms, query stages (median ms) "
          f"{ {k: round(ms(v)) for k, v in out['query_stages_median_s'].items()} }", flush=True)
    return out


def stage_medians(groundings) -> dict[str, float]:
    """Median seconds per stage of the answered queries (``reasoner_roundtrip``: remote only)."""
    keys = sorted({k for g in groundings for k in g.timings_s})
    return {k: statistics.median(g.timings_s[k] for g in groundings if k in g.timings_s) for k in keys}


def static_window(tracker, frames, base):
    """A window of ``frames`` stamped 30 FPS apart from ``base``, each with its SAM-2 features."""
    window = FrameWindow(len(frames))
    for i, image in enumerate(frames):
        frame = window.append(image, base + i * 33_333_333, FRAME_ID)
        window.set_feature(frame.index, SAM2_KEY, tracker.encode(frame.image))
    return window


def timed(fn, warmup, repeats):
    """All seconds of ``repeats`` calls after ``warmup`` untimed ones, and the last result."""
    for _ in range(warmup):
        fn()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def as_answer(reasoning) -> Answer:
    """A local reasoning as the protocol's answer (what the reasoner sends back)."""
    def array(t):
        return t.detach().to(device="cpu", dtype=torch.float32).numpy()
    stamps = {f.index: f.stamp_ns for f in reasoning.dense}
    return Answer(instruction=reasoning.instruction.text, anchor_ns=stamps[reasoning.anchor],
                  dense_ns=[f.stamp_ns for f in reasoning.dense], sparse_ns=[], seg=array(reasoning.tokens.seg),
                  tak=array(reasoning.tokens.tak), tak_prime=array(reasoning.token),
                  tda_weights=array(reasoning.tda_weights), timings_s=dict(reasoning.timings_s))


def query_latency(models_all, models_tracker, frames, reasoner, args):
    instruction = clean_instruction(INSTRUCTION)
    frames = frames[:args.window]
    out = {"window_frames": len(frames), "warmup": args.warmup, "repeats": args.repeats}

    pin({1})  # where the remote reasoner runs
    g = models_all.grounding
    tracker = StreamingTracker(models_all.sam2, models_all.transform, **models_all.tracker_options)
    grounder = Grounder(g.mllm, g.tokenizer, g.anchor_scorer, tracker, GrounderConfig(), g.special_ids)
    window = static_window(tracker, frames, time.time_ns())
    locals_ = []
    local_times, local = timed(lambda: locals_.append(grounder.ground_many(window, [instruction])[0])
                               or locals_[-1:], args.warmup, args.repeats)
    out["local_s"] = local_times
    out["local_tks_median_s"] = statistics.median(x.timings_s["tks"] for x in locals_[args.warmup:])
    out["local_stages_s"] = local[0].timings_s

    response = Response("bench/serialisation", 1, results=[as_answer(grounder.reason_many(window, [instruction])[0])])
    text = response.to_json()
    out["answer_bytes"] = len(text.encode())
    out["dense_frames"] = len(local[0].dense_frames)
    ser, _ = timed(lambda: response_from_json(response.to_json()), 5, max(args.repeats, 50))
    out["serialisation_s"] = ser

    pin({0})
    rtracker = StreamingTracker(models_tracker.sam2, models_tracker.transform, **models_tracker.tracker_options)
    rwindow = static_window(rtracker, frames, time.time_ns())
    for frame in rwindow.snapshot():
        reasoner.publish(frame.image, frame.stamp_ns)
    time.sleep(1.0)  # reliable delivery: the reasoner holds the same frames by now
    remote_grounder = reasoner.link.grounder(rtracker)
    answers = []
    remote_times, remote = timed(lambda: answers.append(remote_grounder.ground_many(rwindow, [instruction])[0])
                                 or answers[-1:], args.warmup, args.repeats)
    answers = answers[args.warmup:]
    # The round trip less the reasoner's own stages: transport, (de)serialisation, queueing.
    reasoner_s = [sum(v for k, v in a.timings_s.items() if k in REASONER_STAGES) for a in answers]
    out["roundtrip_s"] = [a.timings_s["reasoner_roundtrip"] for a in answers]
    out["reasoner_compute_s"] = reasoner_s
    out["transport_median_s"] = statistics.median(a.timings_s["reasoner_roundtrip"] - r
                                                  for a, r in zip(answers, reasoner_s))
    out["remote_tks_median_s"] = statistics.median(a.timings_s["tks"] for a in answers)
    out["remote_s"] = remote_times
    out["remote_stages_s"] = remote[0].timings_s
    out["remote_stats"] = asdict(remote_grounder.stats)
    out["same_keyframe_stamp_offset"] = (remote[0].keyframe_stamp_ns - rwindow.snapshot()[0].stamp_ns
                                         == local[0].keyframe_stamp_ns - window.snapshot()[0].stamp_ns)
    out["local_median_s"] = statistics.median(local_times)
    out["remote_median_s"] = statistics.median(remote_times)
    out["overhead_s"] = out["remote_median_s"] - out["local_median_s"]
    out["overhead_pct"] = 100 * out["overhead_s"] / out["local_median_s"]
    out["serialisation_median_s"] = statistics.median(ser)
    return out


def table(report) -> str:
    hot, q = report["hot_path"], report["query"]
    lines = ["| case | cores (tracker / reasoner) | processed / dropped | queries answered / failed | catch-up frames "
             "(prepared) | p50 ms | p99 ms | p99 ratio |", "|---|---|---|---|---|---|---|---|"]
    where = {"baseline_2cores": "0,1 / -", "local": "0,1 (shared)", "baseline": "0 / -", "remote": "0 / 1"}
    ratio = {"local": report["ratios"]["local_p99_over_baseline_2cores"],
             "remote": report["ratios"]["remote_p99_over_baseline"]}
    for name in ("baseline_2cores", "local", "baseline", "remote"):
        r = hot[name]
        lines.append(f"| {name} | {where[name]} | {r['processed']} / {r['dropped']} | {r['answered']} / {r['failed']} "
                     f"| {r['catchup_frames']} ({r['prepared_catchup_frames']}) | {ms(r['p50_s']):.0f} "
                     f"| {ms(r['p99_s']):.0f} | "
                     + (f"{ratio[name]:.2f}×" if name in ratio else "1 (ref.)") + " |")
    for name in ("local", "remote"):
        stages = ", ".join(f"{k} {ms(v):.0f}" for k, v in hot[name]["query_stages_median_s"].items())
        lines.append(f"\n{name}: query stages during the run, median ms: {stages}")
    lines += ["", "| query ({} frames, warm, {} repeats) | median ms |".format(q["window_frames"], q["repeats"]),
              "|---|---|",
              f"| local `Grounder.ground_many` (core 1) | {ms(q['local_median_s']):.1f} |",
              f"| remote `RemoteGrounder.ground_many` (tracker core 0, reasoner core 1) | "
              f"{ms(q['remote_median_s']):.1f} |",
              f"| overhead remote − local | {ms(q['overhead_s']):+.1f} ({q['overhead_pct']:+.0f} %) |",
              f"| of the remote: round trip less the reasoner's stages (transport, JSON, queueing) | "
              f"{ms(q['transport_median_s']):.1f} |",
              f"| TKS (tracker side): local / remote | {ms(q['local_tks_median_s']):.0f} / "
              f"{ms(q['remote_tks_median_s']):.0f} |",
              f"| one answer: `to_json` + `response_from_json` ({q['answer_bytes']:,} bytes) | "
              f"{ms(q['serialisation_median_s']):.2f} |"]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    images, masks, _ = davis_sequence("blackswan", 16)
    s = args.stride
    frames = [f[::s, ::s].copy() for f in images]
    box = box_of(masks[0][::s, ::s])
    profile = get_profile("tiny-random")
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "frame_hw": list(frames[0].shape[:2]),
              "ros_domain_id": os.environ["ROS_DOMAIN_ID"], "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
              "args": {k: str(v) for k, v in vars(args).items()}, "hot_path": {}}
    with torch.inference_mode():
        models_all = load_models(profile)
        print("hot path, 2 cores", flush=True)
        report["hot_path"]["baseline_2cores"] = hot_case("baseline_2cores", {0, 1}, models_all, frames, box, args)
        report["hot_path"]["local"] = hot_case("local", {0, 1}, models_all, frames, box, args, instruction=True)
    rclpy.init()
    reasoner = None
    try:
        pin({0})
        models_tracker = load_models(profile, parts="tracker")
        reasoner = Reasoner(args, args.out.with_suffix(".reasoner.log"))
        report["reasoner_ready_s"] = reasoner.wait_ready()
        print(f"reasoner ready after {report['reasoner_ready_s']:.1f} s", flush=True)
        with torch.inference_mode():
            print("hot path, tracker on core 0", flush=True)
            report["hot_path"]["baseline"] = hot_case("baseline", {0}, models_tracker, frames, box, args)
            report["hot_path"]["remote"] = hot_case("remote", {0}, models_tracker, frames, box, args,
                                                    instruction=True, reasoner=reasoner)
            print("query latency", flush=True)
            report["query"] = query_latency(models_all, models_tracker, frames, reasoner, args)
        report["reasoner_alive_at_end"] = reasoner.process.poll() is None
    finally:
        if reasoner is not None:
            reasoner.close()
        rclpy.try_shutdown()
    hot = report["hot_path"]
    report["ratios"] = {"local_p99_over_baseline_2cores": hot["local"]["p99_s"] / hot["baseline_2cores"]["p99_s"],
                        "remote_p99_over_baseline": hot["remote"]["p99_s"] / hot["baseline"]["p99_s"],
                        "remote_p99_over_baseline_2cores": hot["remote"]["p99_s"] / hot["baseline_2cores"]["p99_s"]}
    args.out.write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
