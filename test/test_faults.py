"""Injected faults: the node survives each one and reports it on ``status`` and ``/diagnostics``.

- the reasoner raises mid-query (a ``torch.cuda.OutOfMemoryError`` in the MLLM prefill, an
  exception in its frame stage): reported, tracking goes on, retried at the next trigger (the next
  period; the lost-target trigger when no target was ever found);
- the SAM-2 image encoder raises on one frame: an error for that frame only;
- the camera publisher disappears and comes back: frames and masks resume without a restart;
- a query takes 10x its usual time: the tracking path keeps publishing at its rate meanwhile;
- ``kill -9`` of a ``vrs-node`` process and a restart: the new process follows the latched
  instruction without it being sent again; the time to its first mask with the target is printed
  (measured here, and as the node reports it on ``/diagnostics``).

Faults are injected by replacing a model method on the live node's objects (in-process tests) or by
signals (the process test). No timing is a pass/fail threshold: the slow-query test compares the
tracking path's rate during the slow query with its rate just before it.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
import torch
from conftest import box_of, davis_sequence, grounding_engine
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from ros_harness import RELIABLE, frame_msg
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from vrs_node.core.queries import TRIGGER_INSTRUCTION, TRIGGER_LOST, TRIGGER_PERIOD, QueryReport
from vrs_node.core.results import STATUS_GROUNDING, STATUS_TRACKING, EngineStats
from vrs_node.io.image import image_msg_to_rgb, ns_to_stamp, rgb_to_msg, stamp_to_ns
from vrs_node.models.prompt import clean_instruction
from vrs_node.ros.diagnostics import OK, WARN, HealthMonitor
from vrs_node.ros.qos import LATCHED
from vrs_node.ros.status import context as status_context

BASE_NS = 1_700_000_000_000_000_000
OOM_TEXT = "CUDA out of memory. Tried to allocate 20.00 GiB (injected)"


def small_frames(count):
    """DAVIS blackswan frames at half size (427 x 240) and the first frame's box."""
    frames, masks, _ = davis_sequence("blackswan", count)
    half = [cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA) for f in frames]
    return half, [v / 2 for v in box_of(masks[0])]


def stamped(image, stamp_ns):
    return rgb_to_msg(image, Header(stamp=ns_to_stamp(stamp_ns), frame_id="cam"))


def watch_diagnostics(h):
    """The list the node's /diagnostics arrays are appended to, as (level, message, values)."""
    reports = []
    h.peer.create_subscription(DiagnosticArray, "/diagnostics", lambda m: reports.append(
        (int.from_bytes(m.status[0].level, "little"), m.status[0].message,
         {kv.key: kv.value for kv in m.status[0].values})), RELIABLE)
    return reports


def drive_until(h, reports, condition, send, timeout_s=60.0):
    """Send frames lock-step (``send()`` sends one) until a diagnostics report received from now
    on satisfies ``condition(level, message, values)``; returns that report."""
    start, deadline = len(reports), time.monotonic() + timeout_s
    while True:
        hits = [r for r in reports[start:] if condition(*r)]
        if hits:
            return hits[0]
        assert time.monotonic() < deadline, f"no such diagnostics report; got {reports[start:]}"
        send()


def frame_statuses(statuses):
    return [s for s in statuses if "frame_index" in s]


def query_events(statuses):
    return [(s["trigger"], s["status"]) for s in statuses if s.get("event") == "query"]


def test_an_out_of_memory_error_mid_query_is_reported_tracking_goes_on_and_it_is_retried(ros):
    """The first periodic query dies of a CUDA OOM in the MLLM prefill (after the CLIP anchor and
    frame-token stages ran); the target of the first query is kept, the query event and
    /diagnostics report the error, and the next period's query succeeds."""
    frames, _ = small_frames(8)
    h = ros(instruction="the black swan", period_s=1.0, lost_after_frames=0)
    reports = watch_diagnostics(h)
    mllm = h.node.engine.grounder.mllm
    real_prefill, calls = mllm.prefill, []

    def prefill(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError(OOM_TEXT)
        return real_prefill(*args, **kwargs)

    mllm.prefill = prefill
    stamps = itertools.count(BASE_NS, 1_000_000)  # 1 ms apart: no period passes unless we jump
    images = itertools.cycle(frames)

    def send(stamp=None):
        return h.send_frame(stamped(next(images), next(stamps) if stamp is None else stamp))

    assert send()["status"] == STATUS_TRACKING
    oom_stamp = BASE_NS + 1_000_000_000
    assert send(oom_stamp)["status"] == STATUS_TRACKING, "the target of the first query is kept"
    stamps = itertools.count(oom_stamp + 1_000_000, 1_000_000)
    assert query_events(h.statuses) == [("instruction", "grounded"), ("period", "error")]
    event = [s for s in h.statuses if s.get("event") == "query"][-1]
    assert "OutOfMemoryError" in event["reason"] and "retried" in event["reason"]
    level, message, values = drive_until(h, reports, lambda level, message, values: "OutOfMemoryError" in message,
                                          send)
    assert level == WARN and "(period)" in message and "retried at the next trigger" in message
    assert OOM_TEXT in values["last_query_error"] and values["query_errors"] == "1"
    assert values["frame_errors"] == "0" and values["target_present"] == "true"

    send(oom_stamp + 1_000_000_000)  # the next period: the query runs again
    stamps = itertools.count(oom_stamp + 1_001_000_000, 1_000_000)
    assert query_events(h.statuses) == [("instruction", "grounded"), ("period", "error"), ("period", "grounded")]
    level, message, values = drive_until(h, reports, lambda level, message, values: level == OK, send)
    assert message == STATUS_TRACKING and values["last_query_error"] == "" and values["query_errors"] == "1"
    assert len(calls) == 3
    assert all(s["status"] == STATUS_TRACKING for s in frame_statuses(h.statuses))
    assert (h.statuses[-1]["errors"], h.statuses[-1]["query_errors"]) == (0, 1)


def test_a_failed_first_query_is_retried_by_the_lost_target_trigger():
    """No period (period_s=0): the frames waiting for a grounding after a failed query count as
    frames without the target, so the lost-target trigger retries it."""
    frames, _ = small_frames(7)
    engine, reports = grounding_engine(period_s=0, lost_after_frames=3, window_frames=6)
    real_frame_tokens, calls = engine.grounder.mllm.frame_tokens, []

    def frame_tokens(images):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("reasoner failed mid-query (injected)")
        return real_frame_tokens(images)

    engine.grounder.mllm.frame_tokens = frame_tokens
    engine.set_instruction("the black swan")
    results = [engine.push(image, i * 33_333_333) for i, image in enumerate(frames)]
    assert [(q.trigger, q.error) for q in reports] == [
        (TRIGGER_INSTRUCTION, "RuntimeError: reasoner failed mid-query (injected)"), (TRIGGER_LOST, None)]
    assert [r.status for r in results] == [STATUS_GROUNDING] * 3 + [STATUS_TRACKING] * 4
    assert all("reasoner failed" in r.reason for r in results[:3])
    assert engine.stats.query_errors == 1 and engine.stats.errors == 0


def test_an_encoder_failure_fails_that_frame_only(ros):
    """Live mode: the SAM-2 image encoder raises a CUDA OOM on the 4th frame. That frame's status
    (by its stamp) is an error with the reason and its mask is empty; the tracking thread lives
    on, the next frames are tracked, and /diagnostics counts the failed frame in its period."""
    frames, box = small_frames(6)
    h = ros(mode="live")
    reports = watch_diagnostics(h)
    h.prompt_pub.publish(String(data=json.dumps({"box": box})))
    h.spin_until(lambda: h.node.engine.prompt_pending)
    tracker = h.node.engine.tracker
    real_encode, calls = tracker.encode_frame, []

    def encode_frame(frame):
        calls.append(1)
        if len(calls) == 4:
            raise torch.cuda.OutOfMemoryError(OOM_TEXT)
        return real_encode(frame)

    tracker.encode_frame = encode_frame
    statuses = [h.send_frame(frame_msg(image, i)) for i, image in enumerate(frames)]
    failed = stamp_to_ns(frame_msg(frames[3], 3).header.stamp)
    assert [s["status"] for s in statuses] == ["tracking"] * 3 + ["error"] + ["tracking"] * 2
    assert statuses[3]["stamp_ns"] == failed and OOM_TEXT in statuses[3]["reason"]
    h.spin_until(lambda: len(h.masks) == len(frames))
    masks = {stamp_to_ns(m.header.stamp): image_msg_to_rgb(m).any() for m in h.masks}
    assert not masks.pop(failed) and all(masks.values()), "an empty mask for the failed frame only"
    assert h.node.engine.stats.errors == 1

    count = len(reports)
    h.spin_until(lambda: len(reports) > count)  # a period closed after the failed frame
    failing = [r for r in reports if r[2]["frame_errors"] != "0"]
    assert len(failing) == 1
    level, message, values = failing[0]
    assert level == WARN and values["frame_errors"] == "1" and str(failed) in message and OOM_TEXT in message
    more = itertools.count(len(frames))

    def send():
        i = next(more)
        h.send_frame(frame_msg(frames[i % len(frames)], i))

    level, message, values = drive_until(h, reports, lambda level, message, values: level == OK, send)
    assert message == STATUS_TRACKING and values["frame_errors"] == "0"
    assert values["last_frame_error"].startswith(f"stamp {failed}: OutOfMemoryError")


def test_the_camera_publisher_can_vanish_and_come_back(ros):
    """The camera's publisher is destroyed: /diagnostics says no image arrives and that no
    publisher is left; a new publisher (another node) appears and masks resume, no restart."""
    frames, box = small_frames(6)
    h = ros(mode="live")
    reports = watch_diagnostics(h)
    h.prompt_pub.publish(String(data=json.dumps({"box": box})))
    h.spin_until(lambda: h.node.engine.prompt_pending)
    assert [h.send_frame(frame_msg(frames[i], i))["status"] for i in range(3)] == ["tracking"] * 3
    h.peer.destroy_publisher(h.image_pub)
    h.spin_until(lambda: reports and reports[-1][2]["image_publishers"] == "0" and reports[-1][0] == WARN)
    assert "no image received" in reports[-1][1] and "0 publishers" in reports[-1][1]

    camera = rclpy.create_node("vrs_test_camera_again")
    try:
        h.executor.add_node(camera)
        h.image_pub = camera.create_publisher(Image, "image", qos_profile_sensor_data)
        h.spin_until(lambda: h.image_pub.get_subscription_count() > 0)
        masks_before = len(h.masks)
        assert [h.send_frame(frame_msg(frames[i], i))["status"] for i in range(3, 6)] == ["tracking"] * 3
        h.spin_until(lambda: len(h.masks) == masks_before + 3)
        assert [stamp_to_ns(m.header.stamp) for m in h.masks[-3:]] == \
            [stamp_to_ns(frame_msg(frames[i], i).header.stamp) for i in range(3, 6)]
        count = len(reports)
        h.spin_until(lambda: len(reports) > count)
        assert reports[-1][2]["image_publishers"] == "1"
    finally:
        h.executor.remove_node(camera)
        camera.destroy_node()


def test_a_query_ten_times_slower_leaves_the_hot_path_alone(ros):
    """Live mode, frames sent at 10 Hz stamped with the wall clock: the first periodic query (5 s
    after the first) sleeps 9x the first query's time (2 s at least) before running. Meanwhile the
    tracking path keeps publishing processed frames at its rate of before (the ratio of the two
    rates is checked, with a wide margin for a noisy machine), none of them waiting for a grounding,
    /diagnostics shows the query running, and its status event shows its latency."""
    frames, _ = small_frames(10)
    h = ros(mode="live", instruction="the black swan", period_s=5.0, lost_after_frames=0)
    reports = watch_diagnostics(h)
    received = []  # (monotonic time, status)
    h.peer.create_subscription(String, "status", lambda m: received.append((time.monotonic(), json.loads(m.data))),
                               RELIABLE)
    grounder = h.node.engine.grounder
    real_ground, starts, ends = grounder.ground_many, [], []

    def ground(window, instructions):
        starts.append(time.monotonic())
        if len(starts) == 2:  # the first periodic query: 10x the first query's time, at least 2 s
            time.sleep(max(9 * (ends[0] - starts[0]), 2.0))
        try:
            return real_ground(window, instructions)
        finally:
            ends.append(time.monotonic())

    grounder.ground_many = ground
    deadline = time.monotonic() + 120
    for i in itertools.count():
        answered = sum(s.get("event") == "query" for _, s in received)  # reported after its catch-up
        if len(ends) >= 2 and time.monotonic() > ends[1] + 1.0 and answered >= 2:
            break
        assert time.monotonic() < deadline, f"queries {len(starts)} started, {len(ends)} ended"
        h.image_pub.publish(stamped(frames[i % len(frames)], time.time_ns()))
        next_frame = time.monotonic() + 0.1
        while time.monotonic() < next_frame:
            h.executor.spin_once(timeout_sec=max(next_frame - time.monotonic(), 0.0))

    processed = [(t, s) for t, s in received if "frame_index" in s]
    base_start = next(t for t, s in processed if s["status"] == STATUS_TRACKING)  # the first query answered
    slow_start, slow_end = starts[1], ends[1]
    base = [s for t, s in processed if base_start <= t < slow_start]
    during = [s for t, s in processed if slow_start <= t < slow_end]
    ratio = (len(during) / (slow_end - slow_start)) / (len(base) / (slow_start - base_start))
    latency = lambda rows: float(np.median([s["latency_ms"] for s in rows]))  # noqa: E731
    print(f"\nfirst query {ends[0] - starts[0]:.2f} s, slow query {slow_end - slow_start:.2f} s; frames/s "
          f"before {len(base) / (slow_start - base_start):.2f}, during {len(during) / (slow_end - slow_start):.2f} "
          f"(ratio {ratio:.2f}); hot-path p50 before {latency(base):.0f} ms, during {latency(during):.0f} ms")
    assert len(base) >= 5 and ratio >= 0.5, "the tracking path slowed down while the query ran"
    assert not {s["status"] for s in during} & {STATUS_GROUNDING, "error"}, "no frame waits for the query"
    queries = [s for _, s in received if s.get("event") == "query"]
    assert [(q["trigger"], q["status"]) for q in queries[:2]] == [("instruction", "grounded"), ("period", "grounded")]
    assert queries[1]["latency_ms"] >= 5 * queries[0]["latency_ms"]
    running = [float(v["query_running_s"]) for _, _, v in reports if v["query_running_s"]]
    assert running and max(running) > 0, "/diagnostics shows the query in progress"


def test_kill_9_and_restart_resumes_from_the_latched_instruction(ros_nodes, tmp_path):
    """A vrs-node process follows an instruction published once (latched); it is killed with
    SIGKILL and started again: the new process gets the instruction from the still-living
    publisher, grounds it, and publishes masks with the target. The time from the restart to the
    first such mask is printed, next to the node's own figure on /diagnostics."""
    frames, _ = small_frames(10)
    instruction = "the black swan"
    peer = rclpy.create_node("kill_restart_test")
    ros_nodes.append(peer)
    image_pub = peer.create_publisher(Image, "/kr/image", qos_profile_sensor_data)
    instruction_pub = peer.create_publisher(String, "/kr/instruction", LATCHED)
    statuses, reports = [], []
    peer.create_subscription(String, "/kr/status", lambda m: statuses.append(json.loads(m.data)), RELIABLE)
    peer.create_subscription(DiagnosticArray, "/diagnostics", lambda m: reports.append(
        {kv.key: kv.value for kv in m.status[0].values}), RELIABLE)
    executor = SingleThreadedExecutor()
    executor.add_node(peer)
    images = itertools.cycle(frames)
    processes = []

    def start_node(run):
        with open(tmp_path / f"vrs-node-{run}.log", "w") as log:
            processes.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "vrs-node"), "--ros-args",
                 "-p", "model_profile:=tiny-random", "-p", "image_size:=64", "-p", "period_s:=0.0",
                 "-r", "image:=/kr/image", "-r", "mask:=/kr/mask", "-r", "status:=/kr/status",
                 "-r", "instruction:=/kr/instruction", "-r", "prompt:=/kr/prompt"],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}))
        return processes[-1]

    def stream_until(condition, what, timeout_s=120.0):
        """Publish a frame every 0.1 s (stamped now) until ``condition()``."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert processes[-1].poll() is None, \
                f"vrs-node exited: {(tmp_path / f'vrs-node-{len(processes) - 1}.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}; statuses: {statuses[-3:]}"
            image_pub.publish(stamped(next(images), time.time_ns()))
            next_frame = time.monotonic() + 0.1
            while time.monotonic() < next_frame:
                executor.spin_once(timeout_sec=max(next_frame - time.monotonic(), 0.0))

    tracking = lambda: any(s.get("status") == STATUS_TRACKING and "frame_index" in s for s in statuses)  # noqa: E731
    try:
        instruction_pub.publish(String(data=instruction))  # once, before any node runs: latched
        first = start_node(0)
        stream_until(tracking, "the first process's first mask with the target")
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=20) == -signal.SIGKILL
        drained = time.monotonic() + 1.0  # take what the killed process had sent before clearing
        while time.monotonic() < drained:
            executor.spin_once(timeout_sec=0.05)
        statuses.clear()
        reports.clear()
        restarted_at = time.monotonic()
        start_node(1)
        stream_until(tracking, "the restarted process's first mask with the target")
        measured_s = time.monotonic() - restarted_at
        stream_until(lambda: any(r["time_to_first_target_s"] for r in reports), "the restarted node's diagnostics")
        reported_s = float(next(r["time_to_first_target_s"] for r in reports if r["time_to_first_target_s"]))
        print(f"\nrestart after kill -9: first mask with the target {measured_s:.2f} s after the process started "
              f"(the node reports {reported_s:.2f} s after its start, imports excluded)")
        assert query_events(statuses)[0] == ("instruction", "grounded"), "the latched instruction was grounded"
        assert all(s["instruction"] == instruction for s in frame_statuses(statuses) if s["status"] == STATUS_TRACKING)
        assert 0 < reported_s < measured_s
    finally:
        executor.shutdown()
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_diagnostics_count_errors_per_period_across_an_engine_restart():
    """A re-activated lifecycle node has a new engine whose counters start at 0 again: the period's
    counts are its own (no negative count, no failed frames made up), and a failed query stops
    counting once the instruction is another one."""
    monitor = HealthMonitor("tiny-random", "cpu")
    monitor.report(EngineStats(pushed=50, processed=50, dropped=4, errors=5), None, None)
    health = monitor.report(EngineStats(pushed=3, processed=3), None, None)
    assert (health.values["frame_errors"], health.values["dropped"]) == ("0", "0")
    assert float(health.values["input_rate_hz"]) > 0
    assert health.level == OK and health.message == "receiving images"

    monitor.on_query(QueryReport(clean_instruction("the swan"), TRIGGER_PERIOD, None, "RuntimeError: boom", 0.1, False))
    health = monitor.report(EngineStats(pushed=6, processed=6, query_errors=1), "the swan", None)
    assert health.level == WARN and "RuntimeError: boom" in health.message
    stats = EngineStats(pushed=9, processed=9, query_errors=1, superseded=2, catchup_frames=7, prepared_catchup_frames=5)
    health = monitor.report(stats, "the water", None)
    assert health.level == OK and health.values["last_query_error"] == "" and health.values["query_errors"] == "1"
    assert health.values["superseded"] == "2" and health.values["reasoner"] == "local"
    assert (health.values["catchup_frames"], health.values["prepared_catchup_frames"]) == ("7", "5")
    fields = status_context("tiny-random", "cpu", "fp32", stats, "the water")
    assert (fields["catchup_frames"], fields["prepared_catchup_frames"], fields["superseded"]) == (7, 5, 2)
    remote = {"namespace": "/gpu", "connected": False, "consecutive_failures": 2, "timeouts": 2,
              "last_fault": "no response within reasoner_timeout_s = 5 s"}
    health = monitor.report(EngineStats(pushed=12, processed=12), "the water", None, reasoner=remote)
    assert health.level == WARN and health.message.startswith("reasoner /gpu: no response within")
    assert (health.values["reasoner"], health.values["reasoner_timeouts"]) == ("remote:/gpu", "2")
