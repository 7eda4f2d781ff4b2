"""vrs-camera: frames from a folder (in-process node) and a video (the console entry in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import rclpy
from conftest import DAVIS, REPO
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from vrs_node.io.image import image_msg_to_rgb, stamp_to_ns
from vrs_node.ros.camera import CameraNode

FRAMES = DAVIS / "blackswan" / "JPEGImages"


def spin_until(executor, condition, timeout_s=15.0):
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, "timed out"
        executor.spin_once(timeout_sec=0.05)


def folder_of(tmp_path, count):
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted(FRAMES.glob("*.jpg"))[:count]:
        (folder / path.name).symlink_to(path)
    assert len(list(folder.iterdir())) == count, f"DAVIS sample missing: {FRAMES}"
    return folder


def test_folder_frames_in_order_with_increasing_stamps(ros_nodes, tmp_path):
    folder = folder_of(tmp_path, 4)
    (folder / "notes.txt").write_text("not a frame")
    camera = CameraNode(cli_args=["--ros-args", "-r", "image:=/cam/image_raw", "-p", "rate:=50",
                                  "-p", f"source:={folder}", "-p", "frame_id:=cam0", "-p", "encoding:=bgr8"],
                        parameter_overrides=[Parameter("wait_for_subscribers", value=1)])
    peer = rclpy.create_node("camera_test_peer")
    ros_nodes += [camera, peer]
    received = []
    peer.create_subscription(Image, "/cam/image_raw", received.append, qos_profile_sensor_data)
    assert camera.publisher.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    executor = SingleThreadedExecutor()
    executor.add_node(camera)
    executor.add_node(peer)
    spin_until(executor, lambda: camera.done)
    spin_until(executor, lambda: len(received) == 4, timeout_s=2)
    assert camera.published == 4 and camera.error is None and camera.rate == 50.0
    expected = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.glob("*.jpg"))]
    for msg, rgb in zip(received, expected):
        assert (msg.encoding, msg.height, msg.width, msg.step, msg.header.frame_id) == \
            ("bgr8", 480, 854, 854 * 3, "cam0")
        np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)
    stamps = [stamp_to_ns(m.header.stamp) for m in received]
    assert stamps == sorted(set(stamps))
    assert 0.5 * 3 / 50 < (stamps[-1] - stamps[0]) / 1e9 < 1.0  # paced at ~50 Hz, stamped at publish time
    assert abs(stamps[-1] - time.time_ns()) < 5e9


def test_loop_and_limit(ros_nodes, tmp_path):
    camera = CameraNode(parameter_overrides=[Parameter(k, value=v) for k, v in dict(
        source=str(folder_of(tmp_path, 2)), rate=100.0, loop=True, limit=5).items()])
    ros_nodes.append(camera)
    executor = SingleThreadedExecutor()
    executor.add_node(camera)
    spin_until(executor, lambda: camera.done)
    assert camera.published == 5 and camera.error is None


def run_camera(*args, timeout=20):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "vrs_node.ros.camera", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_video_file_through_the_console_entry(ros_nodes, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    assert writer.isOpened()
    for i in range(8):
        writer.write(np.full((48, 64, 3), (30 * i, 100, 200 - 20 * i), np.uint8))
    writer.release()
    peer = rclpy.create_node("camera_video_peer")
    ros_nodes.append(peer)
    received = []
    peer.create_subscription(Image, "/video/image", received.append,
                             QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    process = subprocess.Popen(
        [sys.executable, "-m", "vrs_node.ros.camera", str(video), "--limit", "5", "--reliable", "--log-every", "2",
         "--wait-for-subscribers", "1", "--ros-args", "-r", "image:=/video/image", "-p", "frame_id:=vid"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    executor = SingleThreadedExecutor()
    executor.add_node(peer)
    try:
        spin_until(executor, lambda: len(received) == 5 or process.poll() is not None)
        output, _ = process.communicate(timeout=10)
    finally:
        process.kill()
    executor.spin_once(timeout_sec=0.2)
    assert process.returncode == 0, output
    assert len(received) == 5, output
    assert "at 25 Hz" in output and "4 frames published" in output and "done: 5 frames published" in output
    for i, msg in enumerate(received):
        assert (msg.encoding, msg.height, msg.width, msg.header.frame_id) == ("rgb8", 48, 64, "vid")
        mean = image_msg_to_rgb(msg).reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, (200 - 20 * i, 100, 30 * i), atol=6)  # RGB of the BGR written
    stamps = [stamp_to_ns(m.header.stamp) for m in received]
    assert stamps == sorted(set(stamps))


@pytest.mark.parametrize("args, message", [
    (["/no/such/source"], "'/no/such/source' is not a device index, a video file or a folder"),
    (["EMPTY"], "has no .jpg/.jpeg/.png frames"),
    (["BROKEN"], "cannot be opened by OpenCV"),
    (["--ros-args", "-p", "source:=99"], "camera device 99 cannot be opened"),
    (["FRAMES", "--ros-args", "-p", "encoding:=mono8"], "encoding 'mono8' is not one of rgb8, bgr8"),
])
def test_bad_source_is_one_error_line_and_exit_code_1(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    replace = {"EMPTY": str(tmp_path / "empty"), "BROKEN": str(tmp_path / "broken.mp4"), "FRAMES": str(FRAMES)}
    result = run_camera(*[replace.get(a, a) for a in args])
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(errors) == 1 and "[ERROR]" in errors[0] and message in errors[0], errors
