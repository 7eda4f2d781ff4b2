"""Launch files through test/launch_shim.py: declared arguments, and the argv each Node gets, fed to
the real nodes in-process (rcl parses the ``--ros-args``: params files, remaps, node name, namespace).
"""

from __future__ import annotations

import json
import sys
import time

import pytest
import rclpy
import yaml
from conftest import DAVIS, REPO
from launch_shim import evaluate, launch_shim
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from vrs_node.ros.camera import CameraNode
from vrs_node.ros.node import VrsLifecycleNode, VrsNode

VRS_LAUNCH = REPO / "launch" / "vrs.launch.py"
DEMO_LAUNCH = REPO / "launch" / "camera_demo.launch.py"
CONFIG = REPO / "config" / "vrs_node.yaml"
SMALL = [Parameter("image_size", value=128)]  # tiny models build faster; not set by any launch file


def launch(path, tmp_path, **arguments):
    with launch_shim():
        return evaluate(path, arguments, tmp_dir=tmp_path)


def vrs_node(ros_nodes, cmd, overrides=SMALL):
    node = VrsNode(cli_args=cmd.ros_args, parameter_overrides=list(overrides))
    ros_nodes.append(node)
    return node


def params(node, *names):
    return {name: node.get_parameter(name).value for name in names}


def test_shim_is_only_installed_inside_the_block(tmp_path):
    with launch_shim():
        import launch_ros.actions  # noqa: F401
    assert "launch_ros.actions" not in sys.modules and "launch" not in sys.modules
    with pytest.raises(ValueError, match="not declared"):
        launch(VRS_LAUNCH, tmp_path, imgae="/typo")


def test_vrs_launch_declares_its_arguments(tmp_path):
    result = launch(VRS_LAUNCH, tmp_path)
    defaults = {name: arg.default for name, arg in result.arguments.items()}
    assert defaults == {"namespace": "vrs", "image": "/camera/image_raw", "image_reliability": "best_effort",
                        "image_transport": "raw",
                        "lifecycle": "false", "autostart": "true", "model_profile": "tiny-random",
                        "device": "auto", "instruction": "", "vrshq_checkpoint": "", "reasoner": "local",
                        "params_file": str(CONFIG)}
    assert [n.executable for n in result.nodes] == ["vrs_node"], "the plain node unless lifecycle:=true"
    cmd = result.node("vrs_node")
    assert cmd.argv[:6] == ["vrs_node", "--ros-args",
                            "-p", "qos_overrides./camera/image_raw.subscription.reliability:=best_effort",
                            "-p", "qos_overrides./camera/image_raw/compressed.subscription.reliability:=best_effort"]
    assert cmd.argv[6:11] == ["--ros-args", "-r", "__node:=vrs_node", "-r", "__ns:=/vrs"]
    assert cmd.argv[11:13] == ["--params-file", str(CONFIG)]
    assert cmd.argv[-2:] == ["-r", "image:=/camera/image_raw"]
    assert cmd.additional_env == {"OMP_WAIT_POLICY": "PASSIVE"}
    # The dict parameters go to a YAML keyed by the node's full name, as launch_ros writes it.
    written = yaml.safe_load(open(cmd.argv[cmd.argv.index("--params-file", 13) + 1]))
    assert written == {"/vrs/vrs_node": {"ros__parameters": {
        "model_profile": "tiny-random", "device": "auto", "image_transport": "raw", "instruction": "",
        "vrshq_checkpoint": "", "reasoner": "local"}}}


def test_vrs_launch_lifecycle_variant(ros_nodes, tmp_path):
    result = launch(VRS_LAUNCH, tmp_path, lifecycle="true", autostart="false", image_transport="compressed")
    assert [n.executable for n in result.nodes] == ["vrs_lifecycle_node"]
    cmd = result.node("vrs_lifecycle_node")
    assert cmd.parameters[-1] == {"autostart": False}
    node = VrsLifecycleNode(cli_args=cmd.ros_args, parameter_overrides=list(SMALL))
    ros_nodes.append(node)
    assert node.get_fully_qualified_name() == "/vrs/vrs_node"
    assert params(node, "autostart", "image_transport") == {"autostart": False, "image_transport": "compressed"}
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    (info,) = node.get_subscriptions_info_by_topic("/camera/image_raw/compressed")
    assert info.node_namespace == "/vrs"
    with pytest.raises(ValueError, match="lifecycle:=maybe not in"):
        launch(VRS_LAUNCH, tmp_path, lifecycle="maybe")


def test_vrs_launch_defaults_give_a_node_with_the_config_values(ros_nodes, tmp_path):
    node = vrs_node(ros_nodes, launch(VRS_LAUNCH, tmp_path).node("vrs_node"))
    assert node.get_fully_qualified_name() == "/vrs/vrs_node"
    config = yaml.safe_load(CONFIG.read_text())["/**"]["ros__parameters"]
    config["image_size"] = 128  # the test's override
    assert params(node, *config) == config
    assert node.engine is not None and node.model_error is None
    assert node.resolve_topic_name("image") == "/camera/image_raw"
    assert node.resolve_topic_name("mask") == "/vrs/mask"
    subscribers = node.get_subscriptions_info_by_topic("/camera/image_raw")
    assert [(s.node_name, s.node_namespace) for s in subscribers] == [("vrs_node", "/vrs")]


def test_vrs_launch_arguments_change_the_node(ros_nodes, tmp_path):
    params_file = tmp_path / "mine.yaml"
    params_file.write_text(yaml.dump({"/**": {"ros__parameters": {
        "image_size": 96, "window_frames": 7, "mode": "sync", "model_profile": "ignored-by-launch-dict"}}}))
    cmd = launch(VRS_LAUNCH, tmp_path, image="/robot/cam", instruction="the cup", namespace="perception",
                 device="cpu", params_file=str(params_file)).node("vrs_node")
    node = vrs_node(ros_nodes, cmd, overrides=[])
    assert node.get_fully_qualified_name() == "/perception/vrs_node"
    assert params(node, "instruction", "device", "model_profile", "image_size", "window_frames", "mode") == {
        "instruction": "the cup", "device": "cpu", "model_profile": "tiny-random", "image_size": 96,
        "window_frames": 7, "mode": "sync"}
    assert node.engine.instruction is not None and node.engine.instruction.text == "the cup"
    assert node.resolve_topic_name("image") == "/robot/cam"
    assert node.resolve_topic_name("status") == "/perception/status"
    assert [s.node_name for s in node.get_subscriptions_info_by_topic("/robot/cam")] == ["vrs_node"]
    assert node.get_subscriptions_info_by_topic("/camera/image_raw") == []


def test_camera_demo_declares_its_arguments_and_two_nodes(tmp_path):
    result = launch(DEMO_LAUNCH, tmp_path)
    defaults = {name: arg.default for name, arg in result.arguments.items()}
    expected = {"source": str(REPO / "sample" / "blackswan" / "JPEGImages"), "rate": "10.0", "loop": "true",
                "frame_id": "camera", "image": "/camera/image_raw", "namespace": "vrs", "instruction": "",
                "model_profile": "tiny-random", "device": "auto"}
    assert {k: defaults[k] for k in expected} == expected
    assert {arg.file for arg in result.arguments.values()} == {"camera_demo.launch.py", "vrs.launch.py"}
    assert [n.executable for n in result.nodes] == ["vrs-camera", "vrs_node", "vrs-view"]
    camera = result.node("vrs-camera")
    assert camera.argv[:4] == ["vrs-camera", "--ros-args", "-r", "__node:=vrs_camera"]
    assert camera.argv[-2:] == ["-r", "image:=/camera/image_raw"]
    assert camera.parameters == [{"source": expected["source"], "rate": 10.0, "loop": True, "frame_id": "camera",
                                  "reliable": True}]
    assert "qos_overrides./camera/image_raw.subscription.reliability:=reliable" in result.node("vrs_node").argv
    assert result.node("vrs-view").argv == ["vrs-view", "overlay", "--ros-args", "-r", "__ns:=/vrs"]
    assert [n.executable for n in launch(DEMO_LAUNCH, tmp_path, view="false").nodes] == ["vrs-camera", "vrs_node"]
    # source:=0 stays the string "0" (a device index), not the integer launch would make of it.
    assert launch(DEMO_LAUNCH, tmp_path, source="0").node("vrs-camera").parameters[0]["source"] == "0"


def test_camera_demo_nodes_get_the_arguments_and_are_connected(ros_nodes, tmp_path):
    frames = DAVIS / "blackswan" / "JPEGImages"
    result = launch(DEMO_LAUNCH, tmp_path, source=str(frames), rate="20", loop="false", image="/robot/cam",
                    instruction="the black swan", model_profile="tiny-random", device="cpu", frame_id="cam0")
    camera = CameraNode(cli_args=result.node("vrs-camera").ros_args,
                        parameter_overrides=[Parameter("limit", value=3), Parameter("wait_for_subscribers", value=1)])
    ros_nodes.append(camera)
    assert params(camera, "source", "rate", "loop", "frame_id") == {
        "source": str(frames), "rate": 20.0, "loop": False, "frame_id": "cam0"}
    assert camera.rate == 20.0 and camera.frames.kind == "folder"
    assert camera.publisher.topic_name == "/robot/cam"
    node = vrs_node(ros_nodes, result.node("vrs_node"), overrides=SMALL + [Parameter("mode", value="sync")])
    assert params(node, "instruction", "device", "model_profile") == {
        "instruction": "the black swan", "device": "cpu", "model_profile": "tiny-random"}
    assert node.resolve_topic_name("image") == "/robot/cam"
    (subscription,) = node.get_subscriptions_info_by_topic("/robot/cam")
    assert subscription.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    assert camera.publisher.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    # End to end: the camera's frames reach the segmentation node, which reports on status.
    peer = rclpy.create_node("launch_test_peer")
    ros_nodes.append(peer)
    statuses = []
    peer.create_subscription(String, "/vrs/status", lambda m: statuses.append(json.loads(m.data)),
                             QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    executor = SingleThreadedExecutor()
    for n in (camera, node, peer):
        executor.add_node(n)
    deadline = time.time() + 30
    while not (camera.done and len([s for s in statuses if "stamp_ns" in s]) >= 3):
        assert time.time() < deadline, f"camera published {camera.published}, statuses {statuses}"
        executor.spin_once(timeout_sec=0.05)
    executor.shutdown()
    assert camera.published == 3 and camera.error is None
    frame_statuses = [s for s in statuses if "stamp_ns" in s and s.get("event") != "query"]
    assert len(frame_statuses) >= 3 and all(s["frame_id"] == "cam0" for s in frame_statuses)
