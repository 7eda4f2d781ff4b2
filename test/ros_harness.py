"""The in-process ROS 2 test harness: a VrsNode beside a peer node that publishes frames, prompts
and targets commands and collects masks, instance masks and statuses, spun by one executor in the
test's thread."""

from __future__ import annotations

import json
import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from vrs_node.io.image import ns_to_stamp, rgb_to_msg, stamp_to_ns
from vrs_node.ros.node import VrsNode
from vrs_node.ros.qos import LATCHED

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def spin_until(executor, condition, timeout_s=30.0):
    """Spin ``executor`` until ``condition()`` holds; AssertionError after ``timeout_s``."""
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, "timed out waiting on the ROS graph"
        executor.spin_once(timeout_sec=0.05)


class Harness:
    """A VrsNode plus a test node publishing frames, prompts and targets commands and collecting
    masks, instance masks and statuses."""

    def __init__(self, **params):
        params = {"image_size": 128, "mode": "sync", **params}
        self.node = VrsNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.peer = rclpy.create_node("vrs_test_peer")
        # Frames go out the way the node subscribes: best effort unless its override says reliable.
        image_qos = RELIABLE if params.get("qos_overrides./image.subscription.reliability") == "reliable" \
            else qos_profile_sensor_data
        if params.get("image_transport") == "compressed":
            self.image_pub = self.peer.create_publisher(CompressedImage, "image/compressed", image_qos)
        else:
            self.image_pub = self.peer.create_publisher(Image, "image", image_qos)
        self.prompt_pub = self.peer.create_publisher(String, "prompt", RELIABLE)
        self.targets_pub = self.peer.create_publisher(String, "targets", LATCHED)
        self.masks, self.instance_masks, self.statuses = [], [], []
        self.peer.create_subscription(Image, "mask", self.masks.append, RELIABLE)
        self.peer.create_subscription(Image, "instance_mask", self.instance_masks.append, RELIABLE)
        self.peer.create_subscription(String, "status", lambda m: self.statuses.append(json.loads(m.data)),
                                      RELIABLE)
        self.reset_client = self.peer.create_client(Trigger, "reset")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.executor.add_node(self.peer)
        self.spin_until(lambda: self.image_pub.get_subscription_count() > 0
                        and self.prompt_pub.get_subscription_count() > 0
                        and self.targets_pub.get_subscription_count() > 0
                        and self.node.mask_pub.get_subscription_count() > 0
                        and self.node.instance_pub.get_subscription_count() > 0)

    def spin_until(self, condition, timeout_s=30.0):
        spin_until(self.executor, condition, timeout_s)

    def send_frame(self, msg):
        """Publish one frame and wait for its status (lock-step, so no frame is dropped)."""
        count, stamp = len(self.statuses), stamp_to_ns(msg.header.stamp)
        self.image_pub.publish(msg)
        mine = lambda: [s for s in self.statuses[count:] if s.get("stamp_ns") == stamp]  # noqa: E731
        self.spin_until(mine)
        return mine()[0]

    def send_targets(self, command: dict | str) -> dict:
        """Publish one targets command and wait for its reply on ``status`` (one at a time: the
        topic keeps only the last message)."""
        count = len(self.statuses)
        self.targets_pub.publish(String(data=command if isinstance(command, str) else json.dumps(command)))
        replies = lambda: [s for s in self.statuses[count:] if s.get("event") == "targets"]  # noqa: E731
        self.spin_until(replies)
        return replies()[0]

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.peer.destroy_node()


def frame_msg(image, i):
    header = Header(stamp=ns_to_stamp(1_700_000_000_000_000_000 + i * 33_333_333), frame_id=f"cam_{i % 3}")
    return rgb_to_msg(image, header)
