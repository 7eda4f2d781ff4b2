"""The lifecycle variant, driven through ROS 2's own ``change_state``/``get_state`` services (what
``ros2 lifecycle set`` and lifecycle managers call): configure loads the models, activate starts
processing, deactivate stops it and gives the accelerator memory back, cleanup releases the models.

On this CPU-only machine the weights' move to host memory and the CUDA cache release are checked by
recording the calls (models moved to "cpu", ``release_accelerator_memory`` on the device); that the
memory is really returned on a GPU is not exercised here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from conftest import box_of, davis_sequence, ros_session
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from ros_harness import RELIABLE, frame_msg, spin_until
from sensor_msgs.msg import Image
from std_msgs.msg import String

import vrs_node.ros.node as node_module
from vrs_node.models.profiles import LoadedModels
from vrs_node.ros.node import VrsLifecycleNode


class Lifecycle:
    """A VrsLifecycleNode and a peer holding its change_state/get_state clients and topics."""

    def __init__(self, **params):
        params = {"image_size": 128, "mode": "sync", **params}
        self.node = VrsLifecycleNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.peer = rclpy.create_node("lifecycle_test_peer")
        self.change = self.peer.create_client(ChangeState, "/vrs_node/change_state")
        self.get = self.peer.create_client(GetState, "/vrs_node/get_state")
        self.image_pub = self.peer.create_publisher(Image, "image", qos_profile_sensor_data)
        self.prompt_pub = self.peer.create_publisher(String, "prompt", RELIABLE)
        self.masks, self.statuses, self.diagnostics = [], [], []
        self.peer.create_subscription(Image, "mask", self.masks.append, RELIABLE)
        self.peer.create_subscription(String, "status", lambda m: self.statuses.append(json.loads(m.data)), RELIABLE)
        self.peer.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, RELIABLE)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.executor.add_node(self.peer)
        self.spin_until(lambda: self.change.service_is_ready() and self.get.service_is_ready())

    def spin_until(self, condition, timeout_s=30.0):
        spin_until(self.executor, condition, timeout_s)

    def spin_for(self, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.executor.spin_once(timeout_sec=0.05)

    def call(self, client, request):
        future = client.call_async(request)
        self.spin_until(future.done)
        return future.result()

    def transition(self, transition_id) -> bool:
        return self.call(self.change, ChangeState.Request(transition=Transition(id=transition_id))).success

    @property
    def state(self) -> str:
        return self.call(self.get, GetState.Request()).current_state.label

    def last_diagnostic(self):
        count = len(self.diagnostics)
        self.spin_until(lambda: len(self.diagnostics) > count)
        return self.diagnostics[-1].status[0]

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.peer.destroy_node()


@pytest.fixture
def lifecycle():
    yield from ros_session(Lifecycle)


def test_transitions_load_start_stop_and_release(lifecycle, monkeypatch):
    moves, releases = [], []
    real_to = LoadedModels.to
    monkeypatch.setattr(LoadedModels, "to", lambda self, device: moves.append(str(device)) or real_to(self, device))
    monkeypatch.setattr(node_module, "release_accelerator_memory", lambda device: releases.append(str(device)))
    frames, masks, _ = davis_sequence("blackswan", 4)
    lc = lifecycle(instruction="the black swan")
    node = lc.node

    assert lc.state == "unconfigured" and node.models is None and node.engine is None
    assert not node.get_subscriptions_info_by_topic("/image"), "no camera input before activation"
    assert "unconfigured" in lc.last_diagnostic().message

    assert lc.transition(Transition.TRANSITION_CONFIGURE) and lc.state == "inactive"
    assert node.models is not None and node.engine is None, "configure loads the models, nothing runs"
    assert node.get_publishers_info_by_topic("/mask") and not node.get_subscriptions_info_by_topic("/image")

    assert lc.transition(Transition.TRANSITION_ACTIVATE) and lc.state == "active"
    assert moves == ["cpu"], "activate puts the weights on the device"
    assert node.engine.instruction.text == "the black swan", "the instruction parameter is applied"
    lc.spin_until(lambda: lc.image_pub.get_subscription_count() > 0)
    lc.image_pub.publish(frame_msg(frames[0], 0))
    lc.spin_until(lambda: len(lc.masks) == 1 and any("frame_index" in st for st in lc.statuses))
    frame_status = next(st for st in lc.statuses if "frame_index" in st)
    assert frame_status["status"] == "tracking" and lc.masks[0].header == frame_msg(frames[0], 0).header
    assert any(st.get("event") == "query" for st in lc.statuses), "the instruction was grounded"

    engine = node.engine
    assert lc.transition(Transition.TRANSITION_DEACTIVATE) and lc.state == "inactive"
    assert node.engine is None and engine.stats.processed == 1
    assert not any(t.is_alive() for t in engine._workers), "the engine's threads are stopped"
    assert moves == ["cpu", "cpu"] and releases[-1] == "cpu", "weights to host memory, cache released"
    assert not node.get_subscriptions_info_by_topic("/image")
    assert "inactive" in lc.last_diagnostic().message
    lc.image_pub.publish(frame_msg(frames[1], 1))
    lc.spin_for(0.5)
    assert len(lc.masks) == 1, "an inactive node publishes no mask"

    assert lc.transition(Transition.TRANSITION_ACTIVATE)
    assert node.engine is not engine and node.engine.stats.pushed == 0, "a fresh engine"
    lc.prompt_pub.publish(String(data=json.dumps({"box": box_of(masks[2])})))
    lc.spin_until(lambda: node.engine.prompt_pending)
    lc.spin_until(lambda: lc.image_pub.get_subscription_count() > 0)
    lc.image_pub.publish(frame_msg(frames[2], 2))
    lc.spin_until(lambda: len(lc.masks) == 2)
    assert lc.last_diagnostic().level == DiagnosticStatus.OK

    assert lc.transition(Transition.TRANSITION_DEACTIVATE)
    assert lc.transition(Transition.TRANSITION_CLEANUP) and lc.state == "unconfigured"
    assert node.models is None and not node.get_publishers_info_by_topic("/mask")
    assert lc.transition(Transition.TRANSITION_CONFIGURE) and node.models is not None, "configurable again"


def test_a_failed_configure_is_reported_and_can_be_retried(lifecycle, tmp_path):
    lc = lifecycle(model_profile="sam2.1-hiera-t", sam2_checkpoint=str(tmp_path / "missing.pt"))
    assert not lc.transition(Transition.TRANSITION_CONFIGURE)
    assert lc.state == "unconfigured" and lc.node.models is None
    status = lc.last_diagnostic()
    assert status.level == DiagnosticStatus.ERROR and "missing.pt" in status.message
    assert not lc.node.get_publishers_info_by_topic("/mask"), "outputs closed again"


def test_vrs_lifecycle_node_configures_and_activates_itself(tmp_path):
    """The console entry point in its own process: active without a lifecycle manager."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    exe = Path(sys.executable).parent / "vrs-lifecycle-node"
    log = (tmp_path / "node.log").open("w")
    # a name of its own: the in-process lifecycle nodes of the tests above were /vrs_node in this domain
    proc = subprocess.Popen([str(exe), "--ros-args", "-p", "image_size:=128", "-r", "__node:=vrs_autostart"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    rclpy.init()
    peer = rclpy.create_node("autostart_peer")
    try:
        client = peer.create_client(GetState, "/vrs_autostart/get_state")
        executor = SingleThreadedExecutor()
        executor.add_node(peer)
        deadline = time.time() + 60
        label = None
        while label != "active":
            assert time.time() < deadline and proc.poll() is None, \
                (f"last state {label!r}, service ready {client.service_is_ready()}", (tmp_path / "node.log").read_text())
            if client.service_is_ready():
                future = client.call_async(GetState.Request())
                executor.spin_until_future_complete(future, timeout_sec=5)
                label = future.result().current_state.label if future.done() else None
            executor.spin_once(timeout_sec=0.2)
    finally:
        peer.destroy_node()
        rclpy.shutdown()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "node.log").read_text()
    assert "active: processing images" in (tmp_path / "node.log").read_text()
