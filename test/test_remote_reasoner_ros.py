"""The reasoner in its own process over DDS (``vrs-node`` with ``reasoner:=remote:<namespace>``).

1. Two processes: ``vrs-reasoner`` as a console script, a ``VrsNode`` tracker in this process.
   The remote grounding equals a local grounding on the same weights and frames (SEG, TAK, TAK',
   keyframe, keyframe mask).
2. Four processes: ``vrs-camera`` -> ``vrs-reasoner`` + two ``vrs-node`` trackers with different
   instructions, sharing it. Each tracker publishes a mask per processed frame and gets only its
   own answers; ``kill -9`` of the reasoner mid-stream: both keep publishing and report the loss;
   a restarted reasoner: both re-ground.

One machine, Fast DDS, random tiny-model weights: this proves the plumbing and the equivalence,
not segmentation quality.
"""

from __future__ import annotations

import json
import signal
import time

import cv2
import numpy as np
import pytest
import rclpy
from conftest import davis_sequence
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_harness import frame_msg
from sensor_msgs.msg import Image
from std_msgs.msg import String
from test_multiprocess import logs_on_failure, spawn  # noqa: F401 -- spawn is a fixture

from vrs_node.core.frames import SAM2_KEY, FrameWindow
from vrs_node.core.pipeline import build_pipeline
from vrs_node.core.remote_reasoner import RemoteGrounder
from vrs_node.io.image import stamp_to_ns
from vrs_node.models.profiles import get_profile, load_models
from vrs_node.models.prompt import clean_instruction
from vrs_node.ros.node import VrsLifecycleNode, VrsNode
from vrs_node.ros.params import reasoner_namespace

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def reasoner_args(namespace: str, image_topic: str) -> list[str]:
    return ["--ros-args", "-r", f"__ns:={namespace}", "-r", f"image:={image_topic}",
            "-p", "model_profile:=tiny-random", "-p", "image_size:=128",
            "-p", f"qos_overrides.{image_topic}.subscription.reliability:=reliable"]


@pytest.fixture(scope="module")
def frames():
    return [f[::4, ::4].copy() for f in davis_sequence("blackswan", 4)[0]]


def test_a_remote_grounding_over_dds_equals_the_local_one(ros, spawn, tmp_path, frames):  # noqa: F811
    with logs_on_failure(tmp_path):
        reasoner = spawn("vrs-reasoner", *reasoner_args("/eq", "/image"))
        h = ros(reasoner="remote:/eq", mode="live", **{"qos_overrides./image.subscription.reliability": "reliable"})
        assert h.node.models.grounding is None, "a tracker with a remote reasoner loads SAM-2 only"
        h.spin_until(lambda: h.node._link.reachable() and h.image_pub.get_subscription_count() == 2, 120)
        assert reasoner.poll() is None
        grounder, recorded = h.node.engine.grounder, []
        ground_many = grounder.ground_many
        grounder.ground_many = lambda window, instructions: recorded.append(ground_many(window, instructions)) \
            or recorded[-1]
        msgs = [frame_msg(image, i) for i, image in enumerate(frames)]
        for msg in msgs:
            h.send_frame(msg)
        time.sleep(1.0)  # reliable delivery: the reasoner holds the same frames by now
        h.node.set_parameters([Parameter("instruction", value="the black swan")])
        h.spin_until(lambda: any(s.get("event") == "query" for s in h.statuses), 120)
    (query,) = [s for s in h.statuses if s.get("event") == "query"]
    assert query["status"] == "grounded" and query["applied"], query
    assert query["reasoner"]["mode"] == "remote" and query["reasoner"]["connected"], query["reasoner"]
    (remote,) = recorded[0]

    models = load_models(get_profile("tiny-random"), image_size=128)
    local = build_pipeline(models)
    window = FrameWindow(len(frames))
    for msg, image in zip(msgs, frames):
        frame = window.append(image, stamp_to_ns(msg.header.stamp), msg.header.frame_id)
        window.set_feature(frame.index, SAM2_KEY, local.tracker.encode_frame(frame))
    (want,) = local.grounder.ground_many(window, [clean_instruction("the black swan")])
    assert remote.keyframe_stamp_ns == want.keyframe_stamp_ns == query["keyframe_stamp_ns"]
    for got, expected in [(remote.tokens.seg, want.tokens.seg), (remote.tokens.tak, want.tokens.tak),
                          (remote.token, want.token)]:
        np.testing.assert_allclose(got.cpu().numpy(), expected.float().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(remote.tks_object_scores, want.tks_object_scores, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(remote.mask, want.mask)


@pytest.mark.parametrize("value, namespace", [
    ("local", None), ("remote:/gpu", "/gpu"), ("remote:gpu/rack_2", "/gpu/rack_2"), ("remote:/", "/"), ("remote:", "/")])
def test_the_reasoner_parameter_names_where_the_reasoner_runs(value, namespace):
    assert reasoner_namespace(value) == namespace


@pytest.mark.parametrize("value", ["cloud", "", "remote:/1gpu", "remote:a//b", "remote:/gpu-1", "Local"])
def test_a_reasoner_parameter_of_another_form_is_refused_at_start(ros_nodes, value):
    with pytest.raises(ValueError, match="parameter reasoner must be 'local' or 'remote:<namespace>'"):
        VrsNode(parameter_overrides=[Parameter("reasoner", value=value), Parameter("image_size", value=64)])


def test_without_a_reasoner_frames_keep_coming_and_the_fault_is_reported(ros, frames):
    h = ros(reasoner="remote:/nobody", reasoner_timeout_s=1.0)
    assert h.node._link.requests_topic == "/nobody/vrs_reasoner/requests"
    diagnostics = []
    h.peer.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, RELIABLE)
    h.node.set_parameters([Parameter("instruction", value="the black swan")])
    statuses = [h.send_frame(frame_msg(image, i)) for i, image in enumerate(frames)]
    assert [s["status"] for s in statuses] == ["grounding"] * len(frames)
    assert "no reasoner is listening" in statuses[-1]["targets"][0]["reason"], statuses[-1]
    link = statuses[-1]["reasoner"]
    assert link["mode"] == "remote" and link["namespace"] == "/nobody" and not link["connected"]
    assert link["unreachable"] == 1 and link["requests"] == 0 and link["consecutive_failures"] == 1
    errors = [s for s in h.statuses if s.get("event") == "query"]
    assert errors and errors[0]["status"] == "error" and "ReasonerUnavailable" in errors[0]["reason"]
    warned = lambda: any(d.status[0].level == b"\x01" and "reasoner /nobody" in d.status[0].message  # noqa: E731
                         for d in diagnostics)
    for i in range(len(frames), len(frames) + 40):  # frames keep coming: a period with images warns of the reasoner
        if warned():
            break
        h.send_frame(frame_msg(frames[i % len(frames)], i))
        time.sleep(0.1)
    assert warned(), [d.status[0].message for d in diagnostics]
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    assert values["reasoner"] == "remote:/nobody" and values["reasoner_connected"] == "false"


def test_a_lifecycle_tracker_opens_its_link_on_activate_and_closes_it_on_deactivate(ros_nodes):
    node = VrsLifecycleNode(parameter_overrides=[Parameter("reasoner", value="remote:/lc"),
                                                 Parameter("image_size", value=64)])
    ros_nodes.append(node)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.models.grounding is None and node._link is None
    for _ in range(2):  # activate, deactivate, and again
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        link = node._link
        assert isinstance(node.engine.grounder, RemoteGrounder) and link.requests_topic == "/lc/vrs_reasoner/requests"
        assert node.count_subscribers("/lc/vrs_reasoner/responses") == 1
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node._link is None and not link._spinner.thread.is_alive()
        assert node.count_subscribers("/lc/vrs_reasoner/responses") == 0


def camera_folder(path, count=40):
    """``count`` small DAVIS frames as PNG files (the camera loops over them)."""
    path.mkdir()
    for i, image in enumerate(davis_sequence("blackswan", count)[0]):
        cv2.imwrite(str(path / f"{i:05d}.png"), cv2.cvtColor(image[::4, ::4], cv2.COLOR_RGB2BGR))
    return path


def tracker_args(namespace: str, instruction: str) -> list[str]:
    return ["--ros-args", "-r", f"__ns:={namespace}", "-r", "image:=/mt/image", "-p", "model_profile:=tiny-random",
            "-p", "image_size:=64", "-p", "reasoner:=remote:/shared", "-p", "reasoner_timeout_s:=2.0",
            "-p", "period_s:=1.0", "-p", f"instruction:={instruction}",
            "-p", "qos_overrides./mt/image.subscription.reliability:=reliable"]


def test_two_trackers_share_a_reasoner_and_outlive_it(ros_nodes, spawn, tmp_path):  # noqa: F811
    with logs_on_failure(tmp_path, chars=4000):
        run_two_trackers(ros_nodes, spawn, tmp_path)


def run_two_trackers(ros_nodes, spawn, tmp_path):  # noqa: F811
    instructions = {"a": "the black swan", "b": "the water"}
    reasoner = spawn("vrs-reasoner", *reasoner_args("/shared", "/mt/image"))
    trackers = {k: spawn("vrs-node", *tracker_args(f"/mt/{k}", text)) for k, text in instructions.items()}
    camera = spawn("vrs-camera", str(camera_folder(tmp_path / "frames")), "--rate", "5", "--loop", "--reliable",
                   "--wait-for-subscribers", "3", "--ros-args", "-r", "image:=/mt/image")
    peer = rclpy.create_node("remote_reasoner_test")
    ros_nodes.append(peer)
    statuses = {k: [] for k in instructions}
    masks = {k: [] for k in instructions}
    for k in instructions:
        peer.create_subscription(String, f"/mt/{k}/status", lambda m, k=k: statuses[k].append(json.loads(m.data)),
                                 RELIABLE)
        peer.create_subscription(Image, f"/mt/{k}/mask", lambda m, k=k: masks[k].append(stamp_to_ns(m.header.stamp)),
                                 RELIABLE)
    executor = SingleThreadedExecutor()
    executor.add_node(peer)

    def spin_until(condition, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        while not condition():
            for name, process in [("camera", camera), *trackers.items()]:
                assert process.poll() is None, f"{name} exited ({process.returncode}) before {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: " + ", ".join(
                f"{k}: {len(masks[k])} masks, {len(queries(k))} queries" for k in instructions)
            executor.spin_once(timeout_sec=0.05)

    def queries(k, since=0):
        return [s for s in statuses[k][since:] if s.get("event") == "query"]

    def grounded(k, since=0):
        return [q for q in queries(k, since) if q["status"] == "grounded" and q["applied"]]

    try:
        spin_until(lambda: all(grounded(k) and len(masks[k]) >= 10 for k in instructions), 240, "both grounded")
        for k, text in instructions.items():  # only its own answers
            assert {q["instruction"] for q in queries(k)} == {text}
            link = statuses[k][-1]["reasoner"]
            assert link["refused"] == 0 and link["late"] == 0 and link["mode"] == "remote", link
        reasoner.send_signal(signal.SIGKILL)
        reasoner.wait(10)
        before = {k: (len(masks[k]), len(statuses[k])) for k in instructions}
        spin_until(lambda: all(any(s.get("reasoner", {}).get("consecutive_failures", 0) > 0
                                   for s in statuses[k][before[k][1]:]) for k in instructions), 90,
                   "both trackers to report the reasoner lost")
        spin_until(lambda: all(len(masks[k]) >= before[k][0] + 10 for k in instructions), 60,
                   "masks while the reasoner is down")
        for k in instructions:
            failed = [q for q in queries(k, before[k][1]) if q["status"] == "error"]
            assert failed and "Reasoner" in failed[0]["reason"], queries(k, before[k][1])
        restarted = {k: len(statuses[k]) for k in instructions}
        reasoner = spawn("vrs-reasoner", *reasoner_args("/shared", "/mt/image"))
        spin_until(lambda: all(grounded(k, restarted[k]) for k in instructions), 180, "both re-grounded")
        for k, text in instructions.items():
            assert statuses[k][-1]["reasoner"]["connected"] and grounded(k, restarted[k])[0]["instruction"] == text
        for k, process in trackers.items():
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0, f"tracker {k} did not exit cleanly"
        spin_until_quiet = time.monotonic() + 1.0
        while time.monotonic() < spin_until_quiet:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
    for k in instructions:  # a mask per processed frame, once this peer's mask subscription matched
        processed = [s["stamp_ns"] for s in statuses[k] if "stamp_ns" in s and "frame_index" in s]
        missing = set(processed) - set(masks[k])
        assert processed and set(masks[k]) <= set(processed) and all(m < min(masks[k]) for m in missing), missing
