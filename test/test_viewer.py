"""vrs-view: the console entry in a subprocess fed by an in-process publisher, and its ROS-free parts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import rclpy
from conftest import REPO, davis_sequence
from rclpy.duration import Duration
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from vrs_node.io.image import ns_to_stamp, rgb_to_msg
from vrs_node.ros.viewer import RateMeter, VideoSink, annotate

RELIABLE_5 = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)  # as vrs-node publishes overlay/mask


def headless_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def start_viewer(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "vrs_node.ros.viewer", *args], cwd=REPO,
                            env=env or headless_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def publisher(ros_nodes, topic, qos=RELIABLE_5):
    node = rclpy.create_node(f"viewer_test_pub_{len(ros_nodes)}")
    ros_nodes.append(node)
    return node.create_publisher(Image, topic, qos)


def feed(pub, process, msgs):
    """Publish ``msgs`` once ``process`` subscribes to ``pub``'s topic; all acknowledged."""
    deadline = time.time() + 15
    while pub.get_subscription_count() < 1:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "vrs-view never subscribed"
        time.sleep(0.02)
    for msg in msgs:  # at most 5 per run: the reliable depth-5 histories can never drop one
        pub.publish(msg)
    assert pub.wait_for_all_acked(Duration(seconds=5))


def run_viewer(ros_nodes, topic, msgs, *args):
    """Run vrs-view on ``topic`` (no display), publish ``msgs`` to it; (exit code, stdout, stderr)."""
    pub = publisher(ros_nodes, topic)
    process = start_viewer(topic, *args)
    try:
        feed(pub, process, msgs)
        out, err = process.communicate(timeout=15)
    finally:
        process.kill()
    return process.returncode, out, err


def rgb_msg(rgb, i=0):
    return rgb_to_msg(rgb, Header(stamp=ns_to_stamp(1_700_000_000_000_000_000 + i * 100_000_000), frame_id="cam"))


def solid(color, size=(64, 48)):
    return np.full((size[1], size[0], 3), color, np.uint8)


def read_video(path):
    """The frames of a video as RGB arrays."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def diff(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def lines_with(text, output):
    return [line for line in output.splitlines() if text in line]


def test_records_n_davis_frames_to_mp4(ros_nodes, tmp_path):
    frames = davis_sequence("blackswan", 41)[0][::10]  # 5 frames far enough apart to tell apart
    out = tmp_path / "overlay.mp4"
    rc, stdout, stderr = run_viewer(ros_nodes, "/viewer_test/overlay", [rgb_msg(f, i) for i, f in enumerate(frames)],
                                    "--limit", "5", "--no-window", "--out", str(out), "--fps", "12")
    assert rc == 0, stderr
    assert stdout.strip() == f"vrs-view: 5 frames received, 0 skipped, 5 written to {out}", stdout
    assert "5/5" in stderr and "frame/s" in stderr  # the tqdm bar
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    capture.release()
    video = read_video(out)
    assert len(video) == 5
    for i, frame in enumerate(video):
        assert frame.shape == (480, 854, 3)
        errors = [diff(frame, sent) for sent in frames]
        assert errors[i] < 6.0, errors  # lossy mp4v, but the same picture, in RGB order
        assert errors[i] == min(errors), errors  # and in the order sent


def test_malformed_frames_are_logged_skipped_and_do_not_stop_recording(ros_nodes, tmp_path):
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    wrong_encoding = Image(height=48, width=64, encoding="16UC1", step=128, data=bytes(64 * 48 * 2))
    truncated = rgb_msg(solid((255, 255, 255)))
    truncated.data = truncated.data[:100]
    msgs = [rgb_msg(solid(colors[0])), wrong_encoding, rgb_msg(solid(colors[1])), truncated, rgb_msg(solid(colors[2]))]
    out = tmp_path / "mask.mp4"
    rc, stdout, stderr = run_viewer(ros_nodes, "/viewer_test/bad", msgs,
                                    "--limit", "3", "--no-window", "--out", str(out))
    assert rc == 0, stderr
    assert stdout.strip() == f"vrs-view: 5 frames received, 2 skipped, 3 written to {out}", stdout
    skipped = lines_with("skipped frame", stderr)
    assert len(skipped) == 1, stderr  # the second bad frame comes within the 5 s throttle
    assert "[WARN]" in skipped[0] and "skipped frame 2 (1 so far): unsupported image encoding '16UC1'" in skipped[0]
    assert "Traceback" not in stderr
    video = read_video(out)
    assert [frame.shape for frame in video] == [(48, 64, 3)] * 3
    for frame, color in zip(video, colors):
        np.testing.assert_allclose(frame.reshape(-1, 3).mean(axis=0), color, atol=8)


def test_frames_of_another_size_are_resized_to_the_first(ros_nodes, tmp_path):
    split = solid((240, 20, 20), (128, 96))
    split[:, 64:] = (20, 20, 240)  # left half red, right half blue
    msgs = [rgb_msg(solid((20, 200, 20))), rgb_msg(split), rgb_msg(solid((200, 200, 20), (32, 24)))]
    out = tmp_path / "sizes.mp4"
    rc, stdout, stderr = run_viewer(ros_nodes, "/viewer_test/sizes", msgs,
                                    "--limit", "3", "--no-window", "--out", str(out))
    assert rc == 0, stderr
    assert stdout.strip() == f"vrs-view: 3 frames received, 0 skipped, 3 written to {out}", stdout
    resized = lines_with("resized", stderr)
    assert len(resized) == 1, stderr  # said once, for two resized frames
    assert "a 128x96 frame was resized to the video's 64x48" in resized[0]
    video = read_video(out)
    assert [frame.shape for frame in video] == [(48, 64, 3)] * 3
    assert diff(video[1], cv2.resize(split, (64, 48), interpolation=cv2.INTER_AREA)) < 6.0
    np.testing.assert_allclose(video[1][8:40, 4:28].reshape(-1, 3).mean(axis=0), (240, 20, 20), atol=8)
    np.testing.assert_allclose(video[1][8:40, 36:60].reshape(-1, 3).mean(axis=0), (20, 20, 240), atol=8)
    np.testing.assert_allclose(video[2].reshape(-1, 3).mean(axis=0), (200, 200, 20), atol=8)


def test_ctrl_c_finalises_the_video_and_a_qos_mismatch_is_explained(ros_nodes, tmp_path):
    best_effort = publisher(ros_nodes, "/viewer_test/live", qos_profile_sensor_data)  # e.g. vrs-camera's default
    pub = publisher(ros_nodes, "/viewer_test/live")
    out = tmp_path / "live.mp4"
    process = start_viewer("/viewer_test/live", "--out", str(out))
    try:
        feed(pub, process, [rgb_msg(solid((40 * i, 100, 100)), i) for i in range(3)])
        deadline = time.time() + 10
        while not out.exists() and time.time() < deadline:  # the writer opens on the first frame
            time.sleep(0.05)
        time.sleep(0.5)  # acknowledged = delivered; let the callbacks run
        assert best_effort.get_subscription_count() == 0  # never matched
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert stdout.strip() == f"vrs-view: 3 frames received, 0 skipped, 3 written to {out}", stdout
    assert len(read_video(out)) == 3
    mismatch = lines_with("incompatible QoS", stderr)
    assert len(mismatch) == 1 and "(RELIABILITY)" in mismatch[0] and "add --best-effort" in mismatch[0], stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("args, env, message", [
    ([], {}, "nothing to do: no display (DISPLAY and WAYLAND_DISPLAY are unset) and no --out FILE.mp4"),
    (["--no-window"], {"DISPLAY": ":99"}, "nothing to do: --no-window was given and no --out FILE.mp4"),
    # pip's OpenCV (Qt, X11 only) would abort the process on a dead DISPLAY: it must be asked first
    (["--ros-args", "-r", "__node:=viewer"], {"DISPLAY": ":97", "WAYLAND_DISPLAY": "wayland-9"},
     "nothing to do: no X server answers on DISPLAY=':97' and no --out FILE.mp4"),
    (["--out", "OUT/video.txt"], {}, "video.txt: the name must end in .mp4/.mov/.m4v/.mkv/.avi"),
    (["--out", "OUT/missing/video.mp4"], {}, "missing/video.mp4: folder OUT/missing does not exist"),
])
def test_nothing_to_do_or_unusable_out_is_one_error_line_and_exit_code_1(tmp_path, args, env, message):
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    process = start_viewer("/viewer_test/none", *args, env=headless_env(**env))
    stdout, stderr = process.communicate(timeout=15)
    assert process.returncode == 1, stdout + stderr
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "[ERROR]" in lines[0] and message.replace("OUT", str(tmp_path)) in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_rate_meter_and_annotation():
    meter = RateMeter(window=3)
    assert [meter.tick(t) for t in (10.0, 10.1, 10.2, 10.5)] == pytest.approx([0.0, 10.0, 10.0, 2 / 0.4])
    frame = solid((0, 0, 0), (320, 240))
    shown = annotate(frame, 1_700_000_000_250_000_000, 9.96)
    assert frame.max() == 0  # not modified in place
    ys, xs = np.nonzero(shown.max(axis=2))
    assert shown.shape == frame.shape and ys.max() < 40 and xs.min() < 20  # text in the top-left corner
    assert not np.array_equal(shown, annotate(frame, 1_700_000_000_250_000_000, 12.0))  # the fps is drawn


def test_video_sink_without_frames_writes_nothing(tmp_path):
    sink = VideoSink(tmp_path / "empty.mp4", 10.0)
    sink.close()
    assert sink.written == 0 and sink.size is None and list(tmp_path.iterdir()) == []
