"""``vrs-view``: show a ``sensor_msgs/Image`` topic in a window and/or record it to a video.

Why: a pip-installed ROS 2 (``ros-kilted-rclpy`` and friends, see ``requirements.txt``) has no
``rqt_image_view`` and no ``ros2`` CLI, so without this there is no way to look at the node's
``overlay``/``mask`` output or at a camera topic. ``vrs-view`` needs only rclpy and OpenCV.

It subscribes to TOPIC and, for every frame (any encoding ``vrs_node.io.image.image_msg_to_rgb``
decodes: rgb8, bgr8, rgba8, bgra8, mono8):

- shows it in an OpenCV window titled with the (resolved) topic, the header stamp and the
  received frame rate written on it, when a display is available (``DISPLAY`` or
  ``WAYLAND_DISPLAY`` set; with OpenCV's Qt backend, pip's default, an X server must answer on
  ``DISPLAY``: without one, Qt would abort the process) and ``--no-window`` is not given; ``q``
  or Esc (or closing the window) quits;
- with ``--out FILE`` (``.mp4``, ``.mov``, ``.m4v``, ``.mkv`` or ``.avi``; overwritten if it exists),
  writes it, as received and without the text, to an MPEG-4 (``mp4v``) video at ``--fps`` frames
  per second (default 10: one video frame per received frame, so the video's timing is not the
  topic's). The video gets the size of the first frame; later frames of another size are resized
  to it (logged once). MPEG-4 needs even sizes: an odd width or height loses its last column or
  row. A tqdm bar on stderr counts the frames written.

A frame that does not decode (an unsupported encoding such as ``16UC1``, truncated data) is logged
(at most every 5 s) and skipped. ``--limit N`` exits after N decoded frames; Ctrl-C (SIGINT) and
SIGTERM exit too; all with code 0, the video finalised and one summary line (frames received,
skipped, written, path) on stdout. With no display (or ``--no-window``) and no ``--out`` there is
nothing to do: one error line and exit code 1, as for an unusable ``--out``::

    vrs-view /vrs/overlay                                  # watch the segmentation live
    vrs-view /vrs/overlay --out overlay.mp4                # record it (and watch, if there is a display)
    vrs-view /vrs/mask --out mask.mp4 --limit 300 --no-window --fps 30
    vrs-view image --best-effort --ros-args -r image:=/camera/image_raw   # a camera topic

QoS: by default the subscription is reliable, keep last 5 - what ``vrs-node`` publishes ``mask``
and ``overlay`` with - so frames are not lost on the wire (only a viewer more than 5 frames behind
skips some). ``--best-effort`` uses sensor-data QoS (best effort, keep last 5) instead: it is
required for a best-effort publisher such as ``vrs-camera`` without ``--reliable`` (a reliable
subscription never matches one; ``vrs-view`` logs that mismatch with this hint) and works with any
publisher, at the price of dropped frames - many of them: with Fast DDS on one machine, best-effort
frames of a megabyte are mostly lost (2 of 40 854x480 rgb8 frames at 20 Hz arrived, against 40 of
40 reliable), so for a camera prefer ``vrs-camera --reliable`` and the default here. ``vrs-node``
computes ``overlay`` only while it has a subscriber: ``vrs-view`` on it is what turns it on.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import sys
import time
from collections import deque
from pathlib import Path

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own stderr chatter
import cv2  # noqa: E402
import numpy as np  # noqa: E402 (and the imports below)
import rclpy
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import qos_policy_name_from_kind, qos_profile_sensor_data
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image
from tqdm import tqdm

from vrs_node.io.image import ImageConversionError, image_msg_to_rgb, stamp_to_ns
from vrs_node.ros.cli import ros_command
from vrs_node.ros.qos import RELIABLE_5

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".avi")
QUIT_KEYS = (ord("q"), 27)  # q, Esc
BAD_FRAME_LOG_PERIOD_S = 5.0


class ViewerError(RuntimeError):
    """Nothing useful can be done (no output, unusable ``--out``); the message says why."""


# ---------------------------------------------------------------- ROS-free part


class RateMeter:
    """Frames per second over the last ``window`` arrivals (0 until there are two)."""

    def __init__(self, window: int = 30):
        self._times = deque(maxlen=window)

    def tick(self, now: float | None = None) -> float:
        """Record one arrival (at ``now``, default the monotonic clock) and return the rate."""
        self._times.append(time.monotonic() if now is None else now)
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


def annotate(bgr: np.ndarray, stamp_ns: int, fps: float) -> np.ndarray:
    """A copy of a BGR frame with ``stamp <s>  <fps> fps`` written in its top-left corner."""
    text = f"stamp {stamp_ns / 1e9:.3f}  {fps:.1f} fps"
    scale = max(0.5, bgr.shape[1] / 1280)
    thickness = max(1, round(1.5 * scale))
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    margin = int(6 * scale)
    out = bgr.copy()
    cv2.rectangle(out, (0, 0), (width + 2 * margin, height + baseline + 2 * margin), (0, 0, 0), cv2.FILLED)
    cv2.putText(out, text, (margin, margin + height), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                thickness, cv2.LINE_AA)
    return out


def check_video_path(path: Path) -> None:
    """ViewerError unless ``path`` has a known video suffix and an existing folder."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ViewerError(f"--out {path}: the name must end in {'/'.join(VIDEO_SUFFIXES)}")
    if not path.parent.is_dir():
        raise ViewerError(f"--out {path}: folder {path.parent} does not exist")


class VideoSink:
    """BGR frames into an ``mp4v`` video at ``fps``, opened on the first frame with its size."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = Path(path), fps
        self.size = None  # (width, height) of the video, once open
        self.written = 0
        self._writer = None

    def write(self, bgr: np.ndarray) -> bool:
        """Append one frame, resized to the video's size if it differs; True if it was resized."""
        height, width = bgr.shape[:2]
        if self._writer is None:
            self._open((width, height))
        resized = (width, height) != self.size
        if resized:
            shrink = width * height > self.size[0] * self.size[1]
            bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        self._writer.write(bgr)
        self.written += 1
        return resized

    def _open(self, size: tuple[int, int]) -> None:
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
        if not writer.isOpened():
            raise ViewerError(f"OpenCV cannot open {self.path} to write an mp4v video "
                              f"({size[0]}x{size[1]} at {self.fps:g} fps)")
        self._writer, self.size = writer, size

    def close(self) -> None:
        """Finalise the video (a no-op if no frame came)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class Window:
    """An OpenCV window titled ``title``; ``closed()`` polls q/Esc and the close button."""

    def __init__(self, title: str):
        self.title, self._shown = title, False
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        except cv2.error as exc:  # e.g. opencv-python-headless: no GUI backend
            reason = str(exc).strip().splitlines()[-1]
            raise ViewerError(f"OpenCV cannot open a window ({reason}); use --no-window --out FILE.mp4") from None

    def show(self, bgr: np.ndarray) -> None:
        if not self._shown:
            cv2.resizeWindow(self.title, bgr.shape[1], bgr.shape[0])
        cv2.imshow(self.title, bgr)
        self._shown = True

    def closed(self) -> bool:
        """Process window events for 1 ms; True once q/Esc was pressed or the window was closed."""
        key = cv2.waitKey(1) & 0xFF
        return key in QUIT_KEYS or (self._shown and not self._visible())

    def close(self) -> None:
        if self._visible():  # not after its close button: OpenCV has destroyed it and would raise
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)  # let the GUI backend actually remove it

    def _visible(self) -> bool:
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:  # Qt: closing the last window with its button also drops OpenCV's GUI receiver
            return False


# ---------------------------------------------------------------- ROS part


class ViewerNode(Node):
    """Subscribes to ``topic``; each decoded frame goes to ``window`` and ``sink`` (either may be None)."""

    def __init__(self, topic: str, best_effort: bool, limit: int, show: bool, sink: VideoSink | None):
        super().__init__(f"vrs_view_{os.getpid()}")  # several viewers may run at once
        self.limit, self.sink = limit, sink
        qos = copy.copy(qos_profile_sensor_data) if best_effort else RELIABLE_5
        self.subscription = self.create_subscription(
            Image, topic, self._on_image, qos,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos))
        self.window = Window(self.subscription.topic_name) if show else None
        self.received = self.skipped = self.frames = 0
        self.done = False
        self.meter = RateMeter()
        outputs = (["showing it in a window"] if show else []) + \
            ([f"recording it to {sink.path} at {sink.fps:g} fps"] if sink else [])
        self.get_logger().info(
            f"subscribed to {self.subscription.topic_name} ({'sensor-data' if best_effort else 'reliable'} QoS): "
            f"{' and '.join(outputs)}{f', stopping after {limit} frames' if limit else ''}")
        self.bar = tqdm(total=limit or None, unit="frame", desc=sink.path.name, file=sys.stderr,
                        dynamic_ncols=True) if sink else None

    def _on_image(self, msg: Image) -> None:
        self.received += 1
        try:
            rgb = image_msg_to_rgb(msg)
        except ImageConversionError as exc:
            self.skipped += 1
            self.get_logger().warning(f"skipped frame {self.received} ({self.skipped} so far): {exc}",
                                      throttle_duration_sec=BAD_FRAME_LOG_PERIOD_S)
            return
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        fps = self.meter.tick()
        if self.window:
            self.window.show(annotate(bgr, stamp_to_ns(msg.header.stamp), fps))
        if self.sink:
            self._record(bgr)
        self.frames += 1
        self.done = bool(self.limit) and self.frames >= self.limit

    def _record(self, bgr: np.ndarray) -> None:
        if self.sink.write(bgr):
            height, width = bgr.shape[:2]
            self.get_logger().warning(
                f"a {width}x{height} frame was resized to the video's {self.sink.size[0]}x{self.sink.size[1]} "
                "(logged once; every frame of another size than the first is resized)", once=True)
        self.bar.update()

    def _on_incompatible_qos(self, event) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        hint = "; the publisher is best effort (e.g. vrs-camera without --reliable): add --best-effort" \
            if policy == "RELIABILITY" else ""
        self.get_logger().error(f"incompatible QoS with a publisher of {self.subscription.topic_name} "
                                f"({policy}): no frames from it{hint}", once=True)

    def finish(self) -> str:
        """Close the bar, the video and the window; return the summary line."""
        if self.bar is not None:  # (a tqdm without total has no truth value)
            self.bar.close()
        if self.window:
            self.window.close()
        summary = f"vrs-view: {self.received} frames received, {self.skipped} skipped"
        if self.sink:
            self.sink.close()
            summary += f", {self.sink.written} written to {self.sink.path}"
        return summary


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vrs-view", description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="ROS arguments go after --ros-args (e.g. --ros-args -r __ns:=/vrs). Keys in the window: q or Esc quits.")
    parser.add_argument("topic", help="sensor_msgs/Image topic (e.g. /vrs/overlay, /vrs/mask, /camera/image_raw)")
    parser.add_argument("--out", type=Path, metavar="FILE.mp4",
                        help=f"record every frame to this mp4v video ({'/'.join(VIDEO_SUFFIXES)})")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the recorded video (default: 10)")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="exit after N frames (default: no limit)")
    parser.add_argument("--no-window", action="store_true", help="do not open a window, even with a display")
    parser.add_argument("--best-effort", action="store_true",
                        help="sensor-data QoS (best effort, depth 5) instead of reliable depth 5; "
                             "needed for best-effort publishers such as vrs-camera's default")
    options = parser.parse_args(argv)
    if options.fps <= 0:
        parser.error(f"--fps must be > 0 (got {options.fps:g})")
    if options.limit < 0:
        parser.error(f"--limit must be >= 0 (got {options.limit})")
    return options


def x_server_answers() -> bool:
    """Whether an X server accepts a connection on ``DISPLAY`` (asked through libxcb)."""
    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError:
        return False
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connection_has_error.argtypes = xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    connection = xcb.xcb_connect(None, None)  # never NULL: an error connection on failure
    answers = xcb.xcb_connection_has_error(connection) == 0
    xcb.xcb_disconnect(connection)
    return answers


def show_window(options: argparse.Namespace, logger) -> bool:
    """Whether to open a window; ViewerError if there is neither a window nor ``--out``."""
    if options.no_window:
        problem = "--no-window was given"
    elif not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        problem = "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    # OpenCV's Qt backend (pip's opencv-python) speaks only X11 and aborts the whole process
    # when it cannot connect, so ask first (a GTK build raises cv2.error instead, see Window).
    elif cv2.currentUIFramework().upper().startswith("QT") and not x_server_answers():
        problem = f"no X server answers on DISPLAY={os.environ.get('DISPLAY', '')!r}"
        if options.out:
            logger.warning(f"{problem}: recording without a window")
    else:
        return True
    if not options.out:
        raise ViewerError(f"nothing to do: {problem} and no --out FILE.mp4 to record to")
    return False


def main(args=None) -> int:
    """Console entry point ``vrs-view``; ``args`` is an argv list like ``sys.argv`` (program first)."""
    argv = list(sys.argv if args is None else args)
    options = parse_args(remove_ros_args(argv)[1:])
    logger = rclpy.logging.get_logger("vrs_view")
    try:
        if options.out:
            check_video_path(options.out)
        window = show_window(options, logger)
    except ViewerError as exc:
        logger.error(str(exc))
        return 1
    try:
        with ros_command(argv) as stop:
            node = None
            try:
                sink = VideoSink(options.out, options.fps) if options.out else None
                node = ViewerNode(options.topic, options.best_effort, options.limit, window, sink)
                with stop.deferred():
                    while not node.done and not (node.window and node.window.closed()) and stop.name is None:
                        rclpy.spin_once(node, timeout_sec=0.02 if node.window else 0.1)
            except ViewerError as exc:  # handled in the block: a half-built node must be gone before shutdown
                logger.error(str(exc))
                return 1
            finally:
                if node is not None:
                    print(node.finish(), flush=True)
                    node.destroy_node()
    except KeyboardInterrupt:  # SIGINT or SIGTERM before the loop (vrs_node.ros.cli)
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
