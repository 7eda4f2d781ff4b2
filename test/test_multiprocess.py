"""Three processes over DDS: ``vrs-camera`` plays a DAVIS video, ``vrs-node`` segments it, this test listens.

The console scripts run as installed in the venv, each in its own process; this test's rclpy node
sends a box prompt, records the camera's frames on ``image``, injects bad images on the same topic
mid-stream, and collects ``mask`` and ``status``. Checked: one mask per camera frame, in order,
with the frame's stamp and frame_id; an error status, and no mask, per malformed image; a frame of
another resolution gets a mask of its own size and the target is kept; the node is alive at the
end and exits with code 0 on SIGINT.

Unlike a deployment: one machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, a per-run domain),
the one DDS implementation the pip wheels ship (Fast DDS), reliable QoS on ``image`` with a queue
that holds the whole clip and the node in ``sync`` mode, so that no frame may be lost (a deployment
runs ``live``, latest frame only), and random tiny-model weights (masks prove the plumbing, not
segmentation quality).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
from conftest import DAVIS, REPO, box_of, davis_sequence
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from vrs_node.io.image import ns_to_stamp, rgb_to_msg, stamp_to_ns

SEQUENCES = ("blackswan", "car-shadow", "kite-surf", "motocross-jump")  # 180 frames, 854x480
FRAMES, WIDTH, HEIGHT = 200, 854, 480
RATE_HZ = 8.0  # the node (64 px: ~85-120 ms a frame) keeps up on 2 CPU cores beside the camera and this test
INJECT_AFTER_MASKS = (60, 120)  # bad images go out once this many masks are in
CAMERA_FRAME_ID = "mp_cam"
RELIABLE = QoSProfile(depth=400, reliability=ReliabilityPolicy.RELIABLE)  # deeper than the clip
BIN = Path(sys.executable).parent  # the venv the tests run in, with its console scripts

Mask = namedtuple("Mask", "stamp frame_id layout values")


def davis_video(path):
    """An MJPG video of FRAMES DAVIS frames: the four sequences one after the other, then again."""
    jpgs = [p for name in SEQUENCES for p in sorted((DAVIS / name / "JPEGImages").glob("*.jpg"))]
    assert len(jpgs) == 180, f"DAVIS sample incomplete under {DAVIS}"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for jpg in itertools.islice(itertools.cycle(jpgs), FRAMES):
        writer.write(cv2.imread(str(jpg)))
    writer.release()
    capture, read_back = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        read_back += 1
    capture.release()
    assert read_back == FRAMES, f"OpenCV read back {read_back} of the {FRAMES} frames written"
    return path


@pytest.fixture
def spawn(tmp_path):
    """Start a console script of the venv, output to ``tmp_path/<name>.log``; killed after the test."""
    processes = []

    def start(name, *args):
        with open(tmp_path / f"{name}.log", "w") as log:
            processes.append(subprocess.Popen(
                [str(BIN / name), *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}))
        return processes[-1]

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@contextlib.contextmanager
def logs_on_failure(tmp_path, chars=3000):
    """A failing assertion inside gets the tails of the processes' logs added to its message."""
    try:
        yield
    except AssertionError as exc:
        tails = "".join(f"\n--- {log.name} ---\n{log.read_text()[-chars:]}" for log in sorted(tmp_path.glob("*.log")))
        exc.args = (f"{exc}{tails}",)
        raise


def bad_images():
    """Two batches of (message, word its refusal reason must contain). The malformed ones have stamps
    of 1 000 000 + i s; the last message, a valid frame at half resolution, has None for a word."""
    rgb = davis_sequence("blackswan", 1)[0][0]
    stamps = itertools.count(1_000_000 * 10**9, 10**9)

    def image(pixels=rgb, **fields):
        msg = rgb_to_msg(pixels, Header(stamp=ns_to_stamp(next(stamps)), frame_id="injected"))
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg

    return ([(image(step=3 * WIDTH - 6), "step=2556 is shorter than one row"),
             (image(encoding="yuv422_fancy"), "unsupported image encoding 'yuv422_fancy'")],
            [(image(height=0, data=[]), "no pixels"),
             (image(data=rgb.tobytes()[:1000]), "truncated"),
             (image(np.ascontiguousarray(rgb[::2, ::2])), None)])


def test_camera_video_to_node_to_masks_with_bad_images_injected(ros_nodes, spawn, tmp_path):
    with logs_on_failure(tmp_path):
        run_and_check(ros_nodes, spawn, tmp_path)


def run_and_check(ros_nodes, spawn, tmp_path):
    video = davis_video(tmp_path / "davis.avi")
    node = spawn("vrs-node", "--ros-args", "-p", "model_profile:=tiny-random", "-p", "mode:=sync",
                 "-p", "image_size:=64", "-r", "image:=/mp/image", "-r", "mask:=/mp/mask",
                 "-r", "status:=/mp/status", "-r", "prompt:=/mp/prompt",
                 "-p", "qos_overrides./mp/image.subscription.reliability:=reliable",
                 "-p", f"qos_overrides./mp/image.subscription.depth:={RELIABLE.depth}")
    # Holds its first frame until two subscribers match: the node and this test (subscribing below).
    camera = spawn("vrs-camera", str(video), "--rate", str(RATE_HZ), "--limit", str(FRAMES), "--reliable",
                   "--wait-for-subscribers", "2", "--frame-id", CAMERA_FRAME_ID, "--ros-args", "-r", "image:=/mp/image")
    peer = rclpy.create_node("multiprocess_test")
    ros_nodes.append(peer)
    images, masks, statuses = [], [], []

    def on_mask(msg):
        counts = np.bincount(np.frombuffer(msg.data, np.uint8), minlength=256)
        masks.append(Mask(stamp_to_ns(msg.header.stamp), msg.header.frame_id,
                          (msg.encoding, msg.height, msg.width, msg.step), set(np.flatnonzero(counts).tolist())))

    peer.create_subscription(Image, "/mp/mask", on_mask, RELIABLE)
    peer.create_subscription(String, "/mp/status", lambda m: statuses.append(json.loads(m.data)), RELIABLE)
    prompt_pub = peer.create_publisher(String, "/mp/prompt", RELIABLE)
    bad_pub = peer.create_publisher(Image, "/mp/image", RELIABLE)
    executor = SingleThreadedExecutor()
    executor.add_node(peer)

    def spin_until(condition, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert node.poll() is None, f"vrs-node exited ({node.returncode}) before {what}"
            assert time.monotonic() < deadline, \
                f"timed out waiting for {what}: {len(images)} images, {len(masks)} masks, {len(statuses)} statuses"
            executor.spin_once(timeout_sec=0.05)

    try:
        spin_until(lambda: prompt_pub.get_subscription_count() and bad_pub.get_subscription_count()
                   and peer.count_publishers("/mp/mask") and peer.count_publishers("/mp/status"), 60, "vrs-node")
        prompt_pub.publish(String(data=json.dumps({"box": box_of(davis_sequence("blackswan", 1)[1][0])})))
        assert prompt_pub.wait_for_all_acked(Duration(seconds=10)), "vrs-node did not get the prompt"
        # Subscribing only now lets the camera start once the node holds the prompt. This node's
        # own bad images arrive here too.
        peer.create_subscription(Image, "/mp/image", lambda m: images.append(stamp_to_ns(m.header.stamp)),
                                 RELIABLE)
        injected = {}  # stamp_ns -> (message, reason word or None)
        for after, batch in zip(INJECT_AFTER_MASKS, bad_images()):
            spin_until(lambda: len(masks) >= after, 60, f"{after} masks")
            for msg, word in batch:
                if word is None:  # a valid frame, stamped now: in the camera's timeline
                    msg.header.stamp = peer.get_clock().now().to_msg()
                bad_pub.publish(msg)
                injected[stamp_to_ns(msg.header.stamp)] = (msg, word)
        spin_until(lambda: camera.poll() is not None, 60, "the camera's end")
        assert camera.returncode == 0
        assert f"done: {FRAMES} frames published" in (tmp_path / "vrs-camera.log").read_text()
        spin_until(lambda: len(images) == FRAMES + len(injected) and len(masks) > FRAMES
                   and {s.get("stamp_ns") for s in statuses} >= set(images), 60, "a mask and a status per image")
        assert node.poll() is None
        node.send_signal(signal.SIGINT)
        assert node.wait(timeout=20) == 0
    finally:
        executor.shutdown()

    frames = [stamp for stamp in images if stamp not in injected]
    assert len(set(frames)) == FRAMES and frames == sorted(frames)
    camera_masks = [m for m in masks if m.stamp not in injected]
    assert [m.stamp for m in camera_masks] == frames
    for m in camera_masks:
        assert (m.frame_id, m.layout) == (CAMERA_FRAME_ID, ("mono8", HEIGHT, WIDTH, WIDTH)) and m.values <= {0, 255}
    order = [s.get("stamp_ns") for s in statuses]
    status_of = {s["stamp_ns"]: s for s in statuses if "stamp_ns" in s}
    assert [status_of[stamp]["status"] for stamp in frames] == ["tracking"] * FRAMES
    for stamp, (msg, word) in injected.items():
        status, mine = status_of[stamp], [m for m in masks if m.stamp == stamp]
        assert status["frame_id"] == "injected"
        if word is None:  # another resolution: processed, target kept, a mask of its size, a notice
            assert status["status"] == "tracking", status
            assert [(m.layout, m.values <= {0, 255}) for m in mine] == \
                [(("mono8", msg.height, msg.width, msg.width), True)]
            following = next(s for s in order[order.index(stamp) + 1:] if s in frames)
            changed = [s["stamp_ns"] for s in statuses if "resolution changed" in s.get("notice", "")]
            assert changed == [stamp, following]
        else:
            assert status["status"] == "error" and word in status["reason"], status
            assert mine == []
    last_injected = max(order.index(stamp) for stamp in injected)
    assert len([s for s in order[last_injected + 1:] if s in frames]) >= 20, "frames stopped after the bad images"
    assert {k: statuses[-1][k] for k in ("pushed", "processed", "dropped", "errors")} == {
        "pushed": FRAMES + 1, "processed": FRAMES + 1, "dropped": 0, "errors": 0}
    assert "Traceback" not in (tmp_path / "vrs-node.log").read_text()
