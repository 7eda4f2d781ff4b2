"""In-process ROS 2 tests of the node's inputs and outputs beyond raw images and masks: the
``image/compressed`` transport, the ``overlay`` output (computed only while subscribed), the
incompatible-QoS report, and hostile streams (stamps going back, resolution changes, a burst)."""

from __future__ import annotations

import json
import logging
import time

import cv2
import numpy as np
from conftest import box_of, davis_sequence
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from ros_harness import RELIABLE, frame_msg
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

import vrs_node.ros.interface as interface_module
from vrs_node.io.image import image_msg_to_rgb, overlay_mask, stamp_to_ns
from vrs_node.io.overlay import overlay_instances
from vrs_node.ros.node import VrsNode


def jpeg_msg(image, i, quality=90):
    header = frame_msg(image[:1, :1], i).header
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return CompressedImage(header=header, format="jpeg", data=data.tobytes())


def prompt_box(h, mask):
    h.prompt_pub.publish(String(data=json.dumps({"box": box_of(mask)})))
    h.spin_until(lambda: h.node.engine.prompt_pending)


def test_compressed_transport_decodes_jpeg_and_reports_corrupt_data(ros):
    frames, masks, _ = davis_sequence("blackswan", 3)
    h = ros(image_transport="compressed")
    assert h.node.get_subscriptions_info_by_topic("/image/compressed")
    assert not h.node.get_subscriptions_info_by_topic("/image"), "one transport at a time"
    prompt_box(h, masks[0])
    for i in range(2):
        assert h.send_frame(jpeg_msg(frames[i], i))["status"] == "tracking"
    h.spin_until(lambda: len(h.masks) == 2)
    assert [(m.height, m.width) for m in h.masks] == [(480, 854)] * 2
    assert [stamp_to_ns(m.header.stamp) for m in h.masks] == \
        [stamp_to_ns(frame_msg(frames[i], i).header.stamp) for i in range(2)]
    corrupt = jpeg_msg(frames[2], 2)
    corrupt.data = corrupt.data[:200]
    status = h.send_frame(corrupt)
    assert status["status"] == "error" and "does not decode" in status["reason"]
    empty = jpeg_msg(frames[2], 3)
    empty.data = b""
    assert "has no data" in h.send_frame(empty)["reason"]
    assert h.send_frame(jpeg_msg(frames[2], 4))["status"] == "tracking"


def test_jpeg_is_decoded_reduced_unless_the_overlay_is_subscribed(ros, monkeypatch):
    """A JPEG goes to the engine decoded at the smallest scale covering SAM-2's input (854 x 480 at
    S = 128: 1/2) with the camera size from its header; the mask is at camera size; while the
    overlay has a subscriber the JPEG is decoded in full for it (no resolution change either way);
    a result of a reduced decode gets no overlay."""
    frames, masks, _ = davis_sequence("blackswan", 3)
    h = ros(image_transport="compressed")
    pushed, results = [], []
    push = h.node.engine.push
    monkeypatch.setattr(h.node.engine, "push", lambda image, *args: pushed.append((image.shape, args[-1]))
                        or results.append(push(image, *args)) or results[-1])
    prompt_box(h, masks[0])
    status = h.send_frame(jpeg_msg(frames[0], 0))
    assert pushed == [((240, 427, 3), (480, 854))] and status["status"] == "tracking"
    overlays = []
    h.peer.create_subscription(Image, "overlay", overlays.append, RELIABLE)
    h.spin_until(lambda: h.node.overlay_pub.get_subscription_count() > 0)
    status = h.send_frame(jpeg_msg(frames[1], 1))
    assert pushed[1] == ((480, 854, 3), (480, 854)) and "notice" not in status
    h.spin_until(lambda: len(h.masks) == 2 and len(overlays) == 1)
    assert [(m.height, m.width) for m in h.masks] == [(480, 854)] * 2
    assert (overlays[0].height, overlays[0].width) == (480, 854)
    blended = []
    monkeypatch.setattr(interface_module, "overlay_instances", lambda *a: blended.append(1) or overlay_instances(*a))
    h.node._publish_result(results[0])  # decoded reduced, published while the overlay is subscribed
    h.spin_until(lambda: len(h.masks) == 3)
    assert blended == [] and len(overlays) == 1


def test_compressed_topic_follows_the_image_remap(ros_nodes):
    node = VrsNode(cli_args=["--ros-args", "-p", "image_size:=128", "-p", "image_transport:=compressed",
                             "-r", "image:=/cam/image_raw"])
    ros_nodes.append(node)
    (info,) = node.get_subscriptions_info_by_topic("/cam/image_raw/compressed")
    assert info.topic_type == "sensor_msgs/msg/CompressedImage"


def test_invalid_transport_or_mode_is_refused_at_startup(ros_nodes):
    core_handlers = list(logging.getLogger("vrs_node").handlers)
    for name, value in (("image_transport", "theora"), ("mode", "fast")):
        try:
            VrsNode(parameter_overrides=[Parameter(name, value=value)])
        except ValueError as exc:
            assert f"parameter {name} must be one of" in str(exc) and value in str(exc)
        else:
            raise AssertionError(f"{name}={value} was accepted")
    assert logging.getLogger("vrs_node").handlers == core_handlers, "a refused node left its log forwarding behind"


def test_overlay_is_computed_only_while_subscribed(ros, monkeypatch):
    frames, masks, _ = davis_sequence("blackswan", 4)
    calls = []
    monkeypatch.setattr(interface_module, "overlay_instances", lambda *a: calls.append(1) or overlay_instances(*a))
    h = ros()
    prompt_box(h, masks[0])
    h.send_frame(frame_msg(frames[0], 0))
    assert calls == [], "no subscriber: no overlay work"
    overlays = []
    h.peer.create_subscription(Image, "overlay", overlays.append, RELIABLE)
    h.spin_until(lambda: h.node.overlay_pub.get_subscription_count() > 0)
    statuses = [h.send_frame(frame_msg(frames[i], i)) for i in (1, 2)]
    h.spin_until(lambda: len(overlays) == 2 and len(h.masks) == 3 and len(h.instance_masks) == 3)
    assert len(calls) == 2
    for i, (overlay, mask, instance, status) in enumerate(zip(overlays, h.masks[1:], h.instance_masks[1:], statuses), 1):
        assert overlay.encoding == "rgb8" and overlay.header == frame_msg(frames[i], i).header
        (target,) = status["targets"]
        assert (target["id"], target["label"]) == (1, "box") and target["box"] is not None
        drawn = image_msg_to_rgb(overlay)
        expected = overlay_instances(frames[i], image_msg_to_rgb(instance)[:, :, 0], [(1, "box", tuple(target["box"]))])
        assert np.array_equal(drawn, expected)
        single = overlay_mask(frames[i], image_msg_to_rgb(mask)[:, :, 0] > 0)
        assert not np.array_equal(single, frames[i]), "the mask is visible in the overlay"
        same = (drawn == single).all(axis=2)
        assert 0.95 < same.mean() < 1, "one target looks as the single-target overlay, plus its label"


def test_incompatible_qos_is_reported_with_the_fix(ros):
    h = ros(**{"qos_overrides./image.subscription.reliability": "reliable"})
    best_effort = h.peer.create_publisher(Image, "image", qos_profile_sensor_data)
    h.spin_until(lambda: any("incompatible QoS" in s.get("reason", "") for s in h.statuses))
    report = next(s for s in h.statuses if "incompatible QoS" in s.get("reason", ""))
    assert report["status"] == "error" and "/image (RELIABILITY)" in report["reason"]
    assert "qos_overrides./image.subscription.reliability:=best_effort" in report["reason"]
    assert "vrs-camera --reliable" in report["reason"]
    assert best_effort.get_subscription_count() == 0


def test_a_mask_subscriber_asking_for_transient_local_is_told_how_to_fix_it(ros):
    from rclpy.qos import DurabilityPolicy

    h = ros()
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    h.peer.create_subscription(Image, "mask", lambda _: None, latched)
    h.spin_until(lambda: any("incompatible QoS on /mask" in s.get("reason", "") for s in h.statuses))
    report = next(s for s in h.statuses if "incompatible QoS on /mask" in s.get("reason", ""))
    assert "DURABILITY" in report["reason"] and "subscribe volatile to /mask" in report["reason"]


def test_stamps_going_back_and_resolution_changes_are_reported_and_tracking_goes_on(ros):
    frames, masks, _ = davis_sequence("blackswan", 6)
    h = ros()
    prompt_box(h, masks[0])
    sent = [(0, 0), (1, 61), (2, 62), (0, 0), (1, 1)]  # (frame, stamp number): a bag looping 2 s in
    statuses = [h.send_frame(frame_msg(frames[f], k)) for f, k in sent]
    assert [("notice" in s) for s in statuses] == [False, False, False, True, False]
    assert "time jumped back" in statuses[3]["notice"] and statuses[3]["time_jumps"] == 1
    small = cv2.resize(frames[5], (427, 240))
    status = h.send_frame(frame_msg(small, 5))
    assert "resolution changed from 854x480 to 427x240" in status["notice"]
    assert status["resolution_changes"] == 1
    h.spin_until(lambda: len(h.masks) == 6)
    assert all(s["status"] == "tracking" for s in statuses + [status])
    assert [stamp_to_ns(m.header.stamp) for m in h.masks] == [s["stamp_ns"] for s in statuses + [status]]
    assert (h.masks[-1].height, h.masks[-1].width) == (240, 427)


def test_a_burst_far_above_camera_rate_keeps_the_node_publishing_and_bounded(ros):
    frames, masks, _ = davis_sequence("blackswan", 8)
    h = ros(mode="live", window_frames=4)
    prompt_box(h, masks[0])
    burst = [frame_msg(frames[i % 8], i) for i in range(300)]
    started = time.perf_counter()
    for msg in burst:  # as fast as rclpy publishes, with the executor spinning in between
        h.image_pub.publish(msg)
        h.executor.spin_once(timeout_sec=0)
    publish_s = time.perf_counter() - started
    engine = h.node.engine
    h.spin_until(lambda: engine.stats.pushed and engine.stats.processed + engine.stats.dropped == engine.stats.pushed,
                 timeout_s=60)
    assert len(engine.window) <= 4 and engine.window.feature_count() <= 4
    assert engine.stats.dropped > 0 and engine.stats.errors == 0
    h.spin_until(lambda: len(h.masks) == engine.stats.processed)
    after = frame_msg(frames[0], 1000)
    h.image_pub.publish(after)
    h.spin_until(lambda: stamp_to_ns(h.masks[-1].header.stamp) == stamp_to_ns(after.header.stamp))
    print(f"burst: 300 frames published in {publish_s:.2f} s, {engine.stats.pushed} pushed, "
          f"{engine.stats.processed} processed, {engine.stats.dropped} dropped")



def test_core_log_records_reach_the_ros_logger_once(ros_nodes, capfd):
    import logging

    root_handler = logging.StreamHandler()  # as a library calling logging.basicConfig() would add
    logging.getLogger().addHandler(root_handler)
    try:
        node = VrsNode(parameter_overrides=[Parameter("image_size", value=128)])
        ros_nodes.append(node)
        capfd.readouterr()
        logging.getLogger("vrs_node.core.engine").warning("grounding 'x' failed: a test record")
        lines = [line for line in capfd.readouterr().err.splitlines() if "a test record" in line]
        assert len(lines) == 1 and "[WARN]" in lines[0] and "[vrs_node]" in lines[0], lines
    finally:
        logging.getLogger().removeHandler(root_handler)
