"""In-process ROS 2 test: DAVIS frames published on ``image``, one mask back per processed frame."""

from __future__ import annotations

import json
import time

import numpy as np
import rclpy
from conftest import HeldCall, box_of, davis_sequence, failed_queries
from rclpy.parameter import Parameter
from ros_harness import RELIABLE, frame_msg
from std_msgs.msg import String
from std_srvs.srv import Trigger

from vrs_node.io.image import image_msg_to_rgb, stamp_to_ns
from vrs_node.ros.cli import STOP_WAIT_S
from vrs_node.ros.node import VrsNode



def test_one_mask_per_frame_with_the_input_header(ros):
    frames, masks, _ = davis_sequence("blackswan", 20)
    h = ros()
    sent = []
    h.send_frame(frame_msg(frames[0], 0))
    assert h.statuses[-1]["status"] == "no_prompt"
    h.prompt_pub.publish(String(data=json.dumps({"box": box_of(masks[0])})))
    h.spin_until(lambda: h.node.engine.prompt_pending)
    for i, image in enumerate(frames):
        msg = frame_msg(image, i)
        sent.append(msg.header)
        status = h.send_frame(msg)
        assert status["model_profile"] == "tiny-random"
    h.spin_until(lambda: len(h.masks) == len(frames) + 1)
    received = h.masks[1:]
    assert [(m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) for m in received] == \
        [(s.stamp.sec, s.stamp.nanosec, s.frame_id) for s in sent]
    for m in received:
        assert (m.encoding, m.height, m.width) == ("mono8", 480, 854)
        assert set(np.unique(image_msg_to_rgb(m))) <= {0, 255}
    assert all(s["status"] == "tracking" for s in h.statuses[1:])
    assert h.statuses[-1]["processed"] == len(frames) + 1


def test_bad_images_and_prompts_are_reported_and_the_node_keeps_running(ros):
    frames, masks, _ = davis_sequence("blackswan", 3)
    h = ros()
    h.prompt_pub.publish(String(data="{not json"))
    h.spin_until(lambda: h.statuses and "not JSON" in h.statuses[-1]["reason"])
    h.prompt_pub.publish(String(data=json.dumps({"box": [10, 10, 5, 20]})))
    h.spin_until(lambda: "x0 < x1" in h.statuses[-1]["reason"])
    bad = frame_msg(frames[0], 0)
    bad.encoding = "16UC1"
    assert "16UC1" in h.send_frame(bad)["reason"]
    truncated = frame_msg(frames[0], 1)
    truncated.data = truncated.data[:1000]
    assert h.send_frame(truncated)["status"] == "error"
    h.prompt_pub.publish(String(data=json.dumps({"points": [[400, 250]], "labels": [1]})))
    h.spin_until(lambda: h.node.engine.prompt_pending)
    status = h.send_frame(frame_msg(frames[2], 2))
    assert status["status"] == "tracking"
    h.spin_until(lambda: len(h.masks) == 1)
    assert stamp_to_ns(h.masks[0].header.stamp) == stamp_to_ns(frame_msg(frames[2], 2).header.stamp)
    future = h.reset_client.call_async(Trigger.Request())
    h.spin_until(future.done)
    assert future.result().success
    assert h.send_frame(frame_msg(frames[2], 3))["status"] == "no_prompt"


def test_missing_checkpoint_is_reported_not_fatal(ros, tmp_path):
    frames, _, _ = davis_sequence("blackswan", 1)
    h = ros(model_profile="sam2.1-hiera-t", sam2_checkpoint=str(tmp_path / "missing.pt"))
    assert h.node.engine is None
    status = h.send_frame(frame_msg(frames[0], 0))
    assert status["status"] == "error" and "missing.pt" in status["reason"]


def test_packaged_parameter_file_matches_the_declared_parameters(ros):
    import yaml

    from conftest import REPO

    path = REPO / "config" / "vrs_node.yaml"
    values = yaml.safe_load(path.read_text())["/**"]["ros__parameters"]
    node = VrsNode(cli_args=["--ros-args", "--params-file", str(path), "-p", "image_size:=128"])
    try:
        builtin = {"use_sim_time", "start_type_description_service"}  # rclpy's own
        declared = {n for n in node._parameters if not n.startswith("qos_overrides.")} - builtin
        assert declared == set(values), "config/vrs_node.yaml and the node's parameters differ"
        for name, value in values.items():
            expected = 128 if name == "image_size" else value
            assert node.get_parameter(name).value == expected, name
        assert node.engine is not None
    finally:
        node.destroy_node()


def test_latched_instruction_reaches_a_late_node_and_every_frame_gets_a_mask(ros):
    from vrs_node.ros.qos import LATCHED

    frames, _, _ = davis_sequence("blackswan", 8)
    rclpy_node = rclpy.create_node("vrs_test_instructor")
    try:
        pub = rclpy_node.create_publisher(String, "instruction", LATCHED)
        pub.publish(String(data="the black swan [SEG]"))  # published before the node exists
        h = ros(period_s=0.0)
        h.executor.add_node(rclpy_node)
        h.spin_until(lambda: h.node.engine.instruction is not None)
        assert h.node.engine.instruction.text == "the black swan [ seg]"
        for i, image in enumerate(frames):
            h.send_frame(frame_msg(image, i))
        h.spin_until(lambda: len(h.masks) == len(frames))
        frame_statuses = [s for s in h.statuses if s.get("event") != "query"]
        queries = [s for s in h.statuses if s.get("event") == "query"]
        assert [s["status"] for s in frame_statuses] == ["tracking"] * len(frames)
        assert all(s["instruction"] == "the black swan [ seg]" for s in frame_statuses)
        assert len(queries) == 1 and queries[0]["trigger"] == "instruction" and queries[0]["status"] == "grounded"
        assert set(queries[0]["timings_ms"]) == {"clip_anchor", "mllm_frame_tokens", "mllm_prefill", "tks"}
        assert all(np.asarray(image_msg_to_rgb(m)).any() for m in h.masks)
    finally:
        rclpy_node.destroy_node()


def test_instruction_and_schedule_parameters_at_runtime(ros):
    frames, _, _ = davis_sequence("blackswan", 2)
    h = ros()
    node = h.node
    refused = node.set_parameters([Parameter("instruction", value="    ")])[0]
    assert not refused.successful and "empty" in refused.reason
    assert node.engine.instruction is None
    assert node.set_parameters([Parameter("instruction", value="the swan")])[0].successful
    assert node.engine.instruction.text == "the swan"
    assert node.set_parameters([Parameter("period_s", value=2.5)])[0].successful
    assert node.engine.config.period_s == 2.5
    assert not node.set_parameters([Parameter("period_s", value=-1.0)])[0].successful
    assert not node.set_parameters([Parameter("lost_after_frames", value=-3)])[0].successful
    assert node.engine.config.period_s == 2.5 and node.engine.config.lost_after_frames == 15
    assert h.send_frame(frame_msg(frames[0], 0))["status"] == "tracking"
    assert node.set_parameters([Parameter("instruction", value="")])[0].successful
    assert node.engine.instruction is None
    assert h.send_frame(frame_msg(frames[1], 1))["status"] == "no_prompt"


def test_a_profile_without_language_refuses_instructions_with_a_reason(ros):
    h = ros(model_profile="hiera-t-512-random")
    result = h.node.set_parameters([Parameter("instruction", value="the swan")])[0]
    assert not result.successful and "no grounder" in result.reason


def test_image_reliability_is_overridable_with_qos_overrides(ros):
    from rclpy.qos import ReliabilityPolicy, qos_profile_sensor_data

    def image_reliability(*overrides):
        node = VrsNode(cli_args=["--ros-args", "-p", "image_size:=128", *overrides])
        try:
            (info,) = node.get_subscriptions_info_by_topic("/image")
            return info.qos_profile.reliability
        finally:
            node.destroy_node()

    assert image_reliability() == ReliabilityPolicy.BEST_EFFORT
    assert image_reliability("-p", "qos_overrides./image.subscription.reliability:=reliable") == \
        ReliabilityPolicy.RELIABLE
    assert qos_profile_sensor_data.reliability == ReliabilityPolicy.BEST_EFFORT, \
        "the override must not leak into rclpy's shared profile"


def test_diagnostics_report_rates_latency_and_health(ros):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    frames, masks, _ = davis_sequence("blackswan", 4)
    h = ros()
    reports = []
    h.peer.create_subscription(DiagnosticArray, "/diagnostics", reports.append, RELIABLE)
    h.spin_until(lambda: reports)  # a period without images: WARN
    (idle,) = reports[-1].status
    assert idle.level == DiagnosticStatus.WARN and "no image" in idle.message
    h.prompt_pub.publish(String(data=json.dumps({"box": box_of(masks[0])})))
    h.spin_until(lambda: h.node.engine.prompt_pending)
    count = len(reports)
    for i, image in enumerate(frames):
        h.send_frame(frame_msg(image, i))
    h.spin_until(lambda: len(reports) > count)
    (status,) = reports[-1].status
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.OK and status.message == "tracking"
    assert status.hardware_id == "cpu" and values["model_profile"] == "tiny-random" and values["device"] == "cpu"
    assert float(values["input_rate_hz"]) > 0 and float(values["processed_rate_hz"]) > 0
    assert values["dropped"] == "0" and values["target_present"] == "true"
    assert 0 < float(values["hot_path_latency_p50_ms"]) <= float(values["hot_path_latency_max_ms"])


def test_diagnostics_say_error_when_the_model_failed(ros, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    h = ros(model_profile="sam2.1-hiera-t", sam2_checkpoint=str(tmp_path / "missing.pt"))
    reports = []
    h.peer.create_subscription(DiagnosticArray, "/diagnostics", reports.append, RELIABLE)
    h.spin_until(lambda: reports)
    (status,) = reports[-1].status
    assert status.level == DiagnosticStatus.ERROR and "missing.pt" in status.message


def prompt_statuses(h, count):
    """The ``"event": "prompt"`` statuses received after the first ``count`` statuses."""
    return [s for s in h.statuses[count:] if s.get("event") == "prompt"]


def track_first_frames(h, frames, masks, n):
    """Prompt with the first ground-truth box and send ``n`` frames: each must be tracked."""
    h.prompt_pub.publish(String(data=json.dumps({"box": box_of(masks[0])})))
    h.spin_until(lambda: h.node.engine.prompt_pending)
    for i in range(n):
        assert h.send_frame(frame_msg(frames[i], i))["status"] == "tracking"


def test_the_two_crash_reproductions_are_refused_and_the_node_keeps_publishing(ros):
    """Issue 11: a deeply nested prompt and a label that does not fit int32 crashed the node."""
    frames, masks, _ = davis_sequence("blackswan", 4)
    h = ros()
    track_first_frames(h, frames, masks, 2)
    count = len(h.statuses)
    h.prompt_pub.publish(String(data='{"box": ' + "[" * 100000 + "]" * 100000 + "}"))
    h.prompt_pub.publish(String(data='{"points": [[1,2]], "labels": [1e20], "stamp_ns": 42}'))
    h.spin_until(lambda: len(prompt_statuses(h, count)) == 2)
    deep, overflow = prompt_statuses(h, count)
    assert deep["status"] == "error" and deep["reason"] == "prompt refused: prompt is longer than 65536 bytes"
    assert deep["stamp_ns"] is None
    assert overflow["status"] == "error" and overflow["stamp_ns"] == 42
    assert overflow["reason"] == "prompt refused: labels must be the JSON integers 0 (negative) or 1 (positive), got 1e+20"
    assert not h.node.engine.prompt_pending, "a refused prompt changes nothing"
    for i in (2, 3):  # the target is kept and every frame still gets its mask with its stamp
        assert h.send_frame(frame_msg(frames[i], i))["status"] == "tracking"
    h.spin_until(lambda: len(h.masks) == 4)
    assert [stamp_to_ns(m.header.stamp) for m in h.masks[2:]] == \
        [stamp_to_ns(frame_msg(frames[i], i).header.stamp) for i in (2, 3)]
    assert h.masks[-1].height == 480 and np.asarray(image_msg_to_rgb(h.masks[-1])).any()


def test_a_prompt_is_checked_against_the_window_and_the_image_at_once(ros):
    frames, masks, _ = davis_sequence("blackswan", 4)
    h = ros(max_prompt_points=2)
    track_first_frames(h, frames, masks, 2)
    held = stamp_to_ns(frame_msg(frames[1], 1).header.stamp)
    refused = [({"box": [10, 10, 50, 50], "stamp_ns": held + 1},
                f"prompt refused: no frame with stamp {held + 1} ns in the window (held: stamps "),
               ({"points": [[-50, 9000]], "labels": [1], "stamp_ns": held},
                "prompt refused: point 0 [-50, 9000] is outside the 854x480 image"),
               ({"box": [900, 500, 1000, 600]}, "prompt refused: box [900, 500, 1000, 600] is outside the 854x480 image"),
               ({"points": [[1, 1], [2, 2], [3, 3]], "labels": [1, 1, 0]},
                "prompt refused: prompt has 3 points; at most 2 (parameter max_prompt_points)")]
    count = len(h.statuses)
    for prompt, _ in refused:
        h.prompt_pub.publish(String(data=json.dumps(prompt)))
    h.spin_until(lambda: len(prompt_statuses(h, count)) == len(refused))  # at once: no frame in between
    for status, (prompt, reason) in zip(prompt_statuses(h, count), refused):
        assert status["status"] == "error" and status["reason"].startswith(reason)
        assert status["stamp_ns"] == prompt.get("stamp_ns")
    assert not h.node.engine.prompt_pending
    assert h.send_frame(frame_msg(frames[2], 2))["status"] == "tracking", "the target is kept"
    count = len(h.statuses)
    h.prompt_pub.publish(String(data=json.dumps({"box": [-1e30, -1e30, 1e30, 1e30]})))
    h.spin_until(lambda: prompt_statuses(h, count))
    (clipped,) = prompt_statuses(h, count)
    assert clipped["status"] == "accepted" and clipped["notice"] == \
        "box [-1e+30, -1e+30, 1e+30, 1e+30] clipped to [0, 0, 854, 480], its part inside the 854x480 image"
    assert h.node.engine.prompt_pending
    assert h.send_frame(frame_msg(frames[3], 3))["status"] in ("tracking", "target_absent")


def test_a_prompt_before_any_frame_is_checked_on_the_frame_it_lands_on(ros):
    frames, _, _ = davis_sequence("blackswan", 2)
    h = ros()
    h.prompt_pub.publish(String(data=json.dumps({"points": [[900, 10]], "labels": [1]})))
    h.spin_until(lambda: h.node.engine.prompt_pending)
    status = h.send_frame(frame_msg(frames[0], 0))
    assert status["status"] == "error" and "point 0 [900, 10] is outside the 854x480 image" in status["reason"]
    assert h.send_frame(frame_msg(frames[1], 1))["status"] == "no_prompt"


def test_images_above_max_image_pixels_are_refused_and_the_node_keeps_publishing(ros):
    from test_image import png_bytes
    from test_ros_io import jpeg_msg

    frames, _, _ = davis_sequence("blackswan", 2)
    h = ros(image_transport="compressed")
    bomb = jpeg_msg(frames[0], 0)
    bomb.format, bomb.data = "png", png_bytes(10_000, 10_000)
    status = h.send_frame(bomb)
    assert status["status"] == "error" and status["reason"] == (
        "image refused: compressed image (format 'png') is 10000x10000 = 100000000 pixels; the limit is "
        "16000000 (parameter max_image_pixels)")
    assert h.send_frame(jpeg_msg(frames[1], 1))["status"] == "no_prompt"
    h.spin_until(lambda: len(h.masks) == 1)
    assert stamp_to_ns(h.masks[0].header.stamp) == stamp_to_ns(jpeg_msg(frames[1], 1).header.stamp)


def test_max_image_pixels_applies_to_raw_images(ros):
    frames, _, _ = davis_sequence("blackswan", 1)
    h = ros(max_image_pixels=854 * 480 - 1)
    assert "854x480 = 409920 pixels; the limit is 409919" in h.send_frame(frame_msg(frames[0], 0))["reason"]
    assert h.send_frame(frame_msg(frames[0][:240], 1))["status"] == "no_prompt"


def test_precision_parameter_runs_bf16_and_a_bad_value_is_reported(ros):
    frames, masks, _ = davis_sequence("blackswan", 2)
    h = ros(precision="bf16")
    assert h.node.models.precision == "bf16" and h.node.models.tracker_options["autocast_dtype"] is not None
    h.prompt_pub.publish(String(data=json.dumps({"box": box_of(masks[0])})))
    h.spin_until(lambda: h.node.engine.prompt_pending)
    status = h.send_frame(frame_msg(frames[0], 0))
    assert (status["status"], status["precision"]) == ("tracking", "bf16")
    bad = ros(precision="fp16")
    assert bad.node.engine is None
    status = bad.send_frame(frame_msg(frames[1], 1))
    assert status["status"] == "error" and "precision must be one of" in status["reason"]


def test_two_targets_on_the_targets_topic_give_an_instance_mask_a_status_list_and_diagnostics(ros):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter

    frames, masks, _ = davis_sequence("blackswan", 3)
    h = ros()
    diagnostics = []
    h.peer.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, RELIABLE)
    h.send_frame(frame_msg(frames[0], 0))
    first = h.send_targets({"op": "add", "box": list(box_of(masks[0]))})
    second = h.send_targets({"op": "add", "box": [600, 10, 840, 120], "id": 4})
    assert (first["status"], first["ids"], second["ids"]) == ("accepted", [1], [4])
    assert second["targets"] == [{"id": 1, "label": "box"}, {"id": 4, "label": "box"}]
    assert second["model_profile"] == "tiny-random"  # the status context
    refused = h.send_targets({"op": "remove", "id": 9})
    assert refused["status"] == "error" and refused["op"] == "remove"
    assert refused["reason"].startswith("targets command refused: ") and "9" in refused["reason"]
    assert h.send_targets("{not json")["reason"].startswith("targets command refused: targets command is not JSON")
    msg = frame_msg(frames[1], 1)
    status = h.send_frame(msg)
    assert [t["id"] for t in status["targets"]] == [1, 4] and {t["label"] for t in status["targets"]} == {"box"}
    assert set(status["targets"][0]) == {"id", "label", "present", "object_score", "box", "area",
                                         "grounded_stamp_ns", "status", "reason"}
    h.spin_until(lambda: len(h.instance_masks) == 2 and len(h.masks) == 2)
    instance, union = h.instance_masks[-1], h.masks[-1]
    assert (instance.encoding, instance.height, instance.width) == ("mono8", 480, 854)
    assert instance.header == msg.header
    ids = image_msg_to_rgb(instance)[:, :, 0]
    assert {1, 4} <= set(np.unique(ids).tolist()) <= {0, 1, 4}
    assert np.array_equal(ids > 0, image_msg_to_rgb(union)[:, :, 0] > 0)
    for t in status["targets"]:
        assert t["area"] == int(np.count_nonzero(ids == t["id"])) > 0, "its area is its pixels in the instance mask"
    h.send_frame(frame_msg(frames[2], 2))  # both tracked from memory: one call (conditioned together)
    expected = {("targets", "2"), ("tracking_calls", "1")}
    h.spin_until(lambda: any(expected <= {(kv.key, kv.value) for kv in d.status[0].values} for d in diagnostics))
    # The instructions parameter replaces every target; a refusal fails the set and changes nothing.
    result = h.node.set_parameters([Parameter("instructions", value=["the black swan", "the water"])])[0]
    assert result.successful and h.node.engine.target_labels() == {1: "the black swan", 2: "the water"}
    result = h.node.set_parameters([Parameter("instructions", value=["the cup", "  "])])[0]
    assert not result.successful and "instructions[1]: instruction refused: the instruction is empty" in result.reason
    assert h.node.engine.target_labels() == {1: "the black swan", 2: "the water"}
    assert h.node.get_parameter("instructions").value == ["the black swan", "the water"]
    h.spin_until(lambda: any(s.get("event") == "targets" and s["status"] == "error" and "instructions[1]" in s["reason"]
                             for s in h.statuses))
    assert h.node.set_parameters([Parameter("instructions", value=[])])[0].successful
    assert h.node.engine.target_labels() == {}


def test_destroying_the_node_during_a_query_waits_at_most_stop_wait_s(ros):
    """A query held inside the grounder when the node is destroyed: destroy_node returns after about
    STOP_WAIT_S (not the engine's default 10 s), leaving the query to end on its own; a command
    then exits through safe_exit_code (test_cli)."""
    frames = davis_sequence("blackswan", 1)[0]
    h = ros(mode="live")
    h.node.engine.grounder.ground_many = held = HeldCall(failed_queries)
    try:
        assert h.node.set_parameters([Parameter("instruction", value="the black swan")])[0].successful
        h.send_frame(frame_msg(frames[0], 0))
        assert held.inside.wait(30)
        started = time.monotonic()
        h.node.destroy_node()
        waited = time.monotonic() - started
    finally:
        held.release.set()
    assert STOP_WAIT_S - 0.5 < waited < STOP_WAIT_S + 5, waited
    assert h.node.engine is None
