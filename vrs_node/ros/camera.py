"""``vrs-camera``: publish ``sensor_msgs/Image`` frames on ``image`` from a camera, a video or a folder.

Sources (parameter ``source`` or the positional argument):

- an OpenCV device index (``0``, ``1``, ...): a live camera, paced by ``rate`` (0 = the device's
  reported frame rate, 30 Hz if it reports none);
- a video file (anything OpenCV's VideoCapture reads): paced by ``rate`` (0 = the video's own rate,
  30 Hz if it has none); ``loop`` starts it over at the end;
- a folder of frames: its ``*.jpg``/``*.jpeg``/``*.png`` files in sorted name order, paced by
  ``rate`` (0 = 30 Hz); ``loop`` starts it over at the end.

Each message gets ``header.stamp`` = the node clock at publish time (``use_sim_time`` applies),
``header.frame_id`` = ``frame_id``, ``encoding`` = ``rgb8`` or ``bgr8``, an unpadded ``step``. The
publisher uses sensor-data QoS (best effort, keep last 5) unless ``reliable`` is set. The topic is
relative (``image``), so ``--ros-args -r image:=/camera/image_raw`` or a launch remap moves it.

Every option is also a node parameter (so ``--ros-args -p rate:=5.0`` and launch files can set it);
a command-line option given explicitly wins over the parameter::

    vrs-camera sample/blackswan/JPEGImages --rate 10 --loop --ros-args -r image:=/camera/image_raw
    vrs-camera 0 --encoding bgr8 --frame-id usb_cam
    vrs-camera --ros-args -p source:=clip.mp4 -p limit:=100 -p reliable:=true

``wait_for_subscribers`` (``--wait-for-subscribers N``) holds the first frame until N subscriptions
are matched (e.g. the segmentation node is up). The node exits (code 0) after ``limit`` frames, at
the end of a non-looping source, or on SIGINT or SIGTERM. A source that cannot be opened, an empty
folder or an unreadable frame is one error log line and exit code 1.
"""

from __future__ import annotations

import argparse
import array
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own stderr chatter ("moov atom not found")
import cv2  # noqa: E402
import rclpy  # noqa: E402 (and the imports below)
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from vrs_node.ros.cli import ros_command
from vrs_node.ros.qos import RELIABLE_5

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
ENCODINGS = ("rgb8", "bgr8")
DEFAULT_RATE_HZ = 30.0


class SourceError(RuntimeError):
    """The source cannot be opened or read; the message says which and why."""


class FrameSource:
    """Frames as BGR ``uint8`` arrays from a device, a video file or a folder of images."""

    def __init__(self, source: str):
        self.source = source = str(source).strip()
        self.kind, self.native_rate, self._capture, self._files, self._index = "", 0.0, None, [], 0
        if source.isdigit():
            self.kind = "device"
            self._open_capture(int(source), f"camera device {source}")
        elif Path(source).is_dir():
            self.kind = "folder"
            self._files = sorted(p for p in Path(source).iterdir()
                                 if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
            if not self._files:
                raise SourceError(f"folder {source} has no {'/'.join(FRAME_SUFFIXES)} frames")
        elif Path(source).is_file():
            self.kind = "video"
            self._open_capture(source, f"video file {source}")
        else:
            raise SourceError(f"source {source!r} is not a device index, a video file or a folder "
                              "(no such file or directory)")

    def _open_capture(self, target, label: str) -> None:
        quiet = getattr(getattr(cv2, "utils", None), "logging", None)  # OpenCV's own backend chatter
        level = quiet.getLogLevel() if quiet else None
        if quiet:
            quiet.setLogLevel(quiet.LOG_LEVEL_SILENT)
        try:
            capture = cv2.VideoCapture(target)
        finally:
            if quiet:
                quiet.setLogLevel(level)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{label} cannot be opened by OpenCV")
        self._capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.native_rate = float(fps) if fps and 0 < fps < 1000 else 0.0

    def read(self):
        """The next BGR frame, or None at the end of the source. SourceError if a frame is unreadable."""
        if self._capture is not None:
            ok, frame = self._capture.read()
            return frame if ok else None
        if self._index >= len(self._files):
            return None
        path = self._files[self._index]
        self._index += 1
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise SourceError(f"frame {path} cannot be read as an image")
        return frame

    def rewind(self) -> bool:
        """Start over (video or folder); False for a device."""
        if self.kind == "folder":
            self._index = 0
            return True
        if self.kind == "video":
            return bool(self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0))
        return False

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def bgr_to_msg(frame, encoding: str, header: Header) -> Image:
    """An unpadded ``rgb8``/``bgr8`` Image of a BGR ``uint8`` (H, W, 3) array."""
    pixels = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if encoding == "rgb8" else frame
    height, width = pixels.shape[:2]
    msg = Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0, step=3 * width)
    data = array.array("B")
    data.frombytes(pixels.tobytes())
    msg.data = data  # an array.array is kept as is (no per-byte check, no second copy)
    return msg


class CameraNode(Node):
    """Publishes the frames of ``source`` on ``image`` at ``rate`` Hz; ``done`` once finished."""

    def __init__(self, **kwargs):
        super().__init__("vrs_camera", **kwargs)

        def desc(text, dynamic=False):
            return ParameterDescriptor(description=text, read_only=True, dynamic_typing=dynamic)

        # source and rate accept any type: "-p source:=0" / "-p rate:=10" parse as integers.
        self.declare_parameter("source", "0", desc("device index (e.g. 0), video file or folder of frames", True))
        self.declare_parameter("rate", 0.0, desc("publish rate in Hz; 0 = the video's/device's own (or 30)", True))
        self.declare_parameter("loop", False, desc("start the video/folder over at its end"))
        self.declare_parameter("limit", 0, desc("stop after this many frames (0 = no limit)"))
        self.declare_parameter("frame_id", "camera", desc("header.frame_id of the images"))
        self.declare_parameter("encoding", "rgb8", desc("image encoding: rgb8 or bgr8"))
        self.declare_parameter("reliable", False, desc("reliable QoS instead of sensor-data (best effort)"))
        self.declare_parameter("log_every", 100, desc("log progress every this many frames (0 = never)"))
        self.declare_parameter("wait_for_subscribers", 0, desc(
            "hold the first frame until this many subscriptions are matched (0 = start at once)"))
        get = lambda name: self.get_parameter(name).value  # noqa: E731
        self.loop, self.limit, self.frame_id = bool(get("loop")), int(get("limit")), str(get("frame_id"))
        self.encoding, self.log_every = str(get("encoding")), int(get("log_every"))
        self.wait_for_subscribers = int(get("wait_for_subscribers"))
        if self.encoding not in ENCODINGS:
            raise SourceError(f"encoding {self.encoding!r} is not one of {', '.join(ENCODINGS)}")
        try:
            rate = float(get("rate") or 0.0)
        except (TypeError, ValueError):
            raise SourceError(f"rate {get('rate')!r} is not a number") from None
        if not 0.0 <= rate <= 1000.0:
            raise SourceError(f"rate {rate} Hz is outside [0, 1000] (0 = the source's own rate)")
        self.frames = FrameSource(get("source"))
        self.rate = rate or self.frames.native_rate or DEFAULT_RATE_HZ
        qos = RELIABLE_5 if get("reliable") else qos_profile_sensor_data
        self.publisher = self.create_publisher(Image, "image", qos)
        self.published, self.done, self.error = 0, False, None
        self._first_published_at = None  # the rate is measured from the first frame, after any wait
        self.timer = self.create_timer(1.0 / self.rate, self._tick)
        self.get_logger().info(
            f"publishing {self.frames.kind} {self.frames.source} on {self.publisher.topic_name} at "
            f"{self.rate:g} Hz as {self.encoding} (frame_id {self.frame_id!r}, "
            f"{'reliable' if get('reliable') else 'sensor-data'} QoS"
            f"{', looping' if self.loop else ''}{f', limit {self.limit}' if self.limit else ''})")

    def _tick(self) -> None:
        if self.done or (not self.published and
                         self.publisher.get_subscription_count() < self.wait_for_subscribers):
            return
        try:
            frame = self.frames.read()
            if frame is None and self.loop and self.published and self.frames.rewind():
                frame = self.frames.read()
        except SourceError as exc:
            return self._finish(str(exc))
        if frame is None:
            return self._finish(None if self.published else f"{self.frames.kind} {self.frames.source} "
                                "gave no frame")
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        self.publisher.publish(bgr_to_msg(frame, self.encoding, header))
        self.published += 1
        if self._first_published_at is None:
            self._first_published_at = time.monotonic()
        if self.log_every and self.published % self.log_every == 0:
            elapsed = time.monotonic() - self._first_published_at
            rate = f" ({(self.published - 1) / elapsed:.1f} Hz)" if elapsed > 0 else ""
            self.get_logger().info(f"{self.published} frames published{rate}")
        if self.limit and self.published >= self.limit:
            self._finish(None)

    def _finish(self, error: str | None) -> None:
        self.done, self.error = True, error
        self.timer.cancel()
        if error is None:
            self.get_logger().info(f"done: {self.published} frames published")

    def destroy_node(self) -> None:
        self.frames.close()
        super().destroy_node()


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vrs-camera", description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="ROS arguments go after --ros-args (e.g. --ros-args -r image:=/camera/image_raw -p rate:=5.0).")
    parser.add_argument("source", nargs="?", help="device index (e.g. 0), video file or folder of JPEG/PNG frames")
    parser.add_argument("--rate", type=float, help="publish rate in Hz (default: the video's own, else 30)")
    parser.add_argument("--loop", action="store_true", default=None, help="start over at the end")
    parser.add_argument("--limit", type=int, help="stop after N frames (default: no limit)")
    parser.add_argument("--frame-id", help="header.frame_id (default: camera)")
    parser.add_argument("--encoding", choices=ENCODINGS, help="image encoding (default: rgb8)")
    parser.add_argument("--reliable", action="store_true", default=None,
                        help="reliable QoS instead of sensor-data QoS (best effort, depth 5)")
    parser.add_argument("--log-every", type=int, help="log progress every N frames (default: 100)")
    parser.add_argument("--wait-for-subscribers", type=int, metavar="N",
                        help="hold the first frame until N subscriptions are matched (default: 0)")
    return parser.parse_args(argv)


def main(args=None) -> int:
    """Console entry point ``vrs-camera``; ``args`` is an argv list like ``sys.argv`` (program first)."""
    argv = list(sys.argv if args is None else args)
    options = parse_args(remove_ros_args(argv)[1:])
    overrides = [Parameter(name, value=getattr(options, name)) for name in
                 ("source", "rate", "loop", "limit", "frame_id", "encoding", "reliable", "log_every",
                  "wait_for_subscribers")
                 if getattr(options, name) is not None]
    try:
        with ros_command(argv) as stop:
            node = None
            try:
                node = CameraNode(parameter_overrides=overrides)
                with stop.deferred():
                    while not node.done and stop.name is None:
                        rclpy.spin_once(node, timeout_sec=0.1)
                if node.error:
                    raise SourceError(node.error)
                node.publisher.wait_for_all_acked(Duration(seconds=1.0))  # reliable: let the last frames arrive
            except SourceError as exc:  # handled in the block: a half-built node must be gone before shutdown
                rclpy.logging.get_logger("vrs_camera").error(str(exc))
                return 1
            finally:
                if node is not None:
                    node.destroy_node()
    except KeyboardInterrupt:  # SIGINT or SIGTERM before the loop (vrs_node.ros.cli)
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
