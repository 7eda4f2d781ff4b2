"""``vrs-demo``: run the node on a folder of frames, as a camera would feed it, and save what it publishes.

One process, real ROS 2 topics: a player sends an instruction on ``instruction`` (or, with
``--prompt-mask``, a box prompt taken from a ground-truth mask on ``prompt``), publishes the frames
on ``image`` (stamped at ``--rate``), and a recorder saves every ``mask`` message as a PNG named
after its frame, an overlay video and the ``status`` stream (frame results and grounding queries). ``--mode live`` (default) runs the node as on a robot (newest frame wins, drops counted);
``--mode sync`` waits for each frame's answer before sending the next, so every frame gets a mask.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from PIL import Image as PILImage
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String
from tqdm import tqdm

from vrs_node.io.image import image_msg_to_rgb, ns_to_stamp, overlay_mask, rgb_to_msg, stamp_to_ns
from vrs_node.ros.cli import ros_command
from vrs_node.ros.node import VrsNode
from vrs_node.ros.qos import LATCHED


def _sample_dir() -> Path:
    """The bundled sample: in the source tree, else in the installed package's share folder."""
    source = Path(__file__).resolve().parents[2] / "sample" / "blackswan"
    if source.is_dir():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("vrs_node")) / "sample" / "blackswan"


SAMPLE = _sample_dir()
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
START_NS = 1_700_000_000_000_000_000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vrs-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=Path, default=SAMPLE / "JPEGImages", help="folder of JPEG/PNG frames")
    parser.add_argument("--instruction", default="the black swan", help="what to segment")
    parser.add_argument("--prompt-mask", type=Path, default=None,
                        help="instead of the instruction: a mask whose bounding box is the prompt (first frame), "
                             f"e.g. {SAMPLE / 'Annotations' / '00000.png'}")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--rate", type=float, default=5.0, help="camera rate in Hz (live mode)")
    parser.add_argument("--mode", choices=("live", "sync"), default="live")
    parser.add_argument("--profile", default="tiny-random", help="model profile")
    parser.add_argument("--image-size", type=int, default=0, help="SAM-2 input size (0 = profile's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N frames (0 = all)")
    return parser.parse_args(argv)


class Recorder:
    """Collects masks and statuses from the node's topics (called on executor threads)."""

    def __init__(self, node, out: Path, names_by_stamp: dict[int, str]):
        self.out, self.names = out, names_by_stamp
        self.masks: dict[str, np.ndarray] = {}
        self.statuses: list[dict] = []
        self.answered: set[int] = set()  # stamps of the frames the node has answered
        self.lock = threading.Lock()
        node.create_subscription(Image, "mask", self.on_mask, RELIABLE)
        node.create_subscription(String, "status", self.on_status, RELIABLE)

    def on_mask(self, msg: Image) -> None:
        name = self.names.get(stamp_to_ns(msg.header.stamp), f"stamp_{stamp_to_ns(msg.header.stamp)}")
        mask = image_msg_to_rgb(msg)[:, :, 0]
        cv2.imwrite(str(self.out / "masks" / f"{name}.png"), mask)
        with self.lock:
            self.masks[name] = mask > 0

    def on_status(self, msg: String) -> None:
        status = json.loads(msg.data)
        with self.lock:
            self.statuses.append(status)
            if "stamp_ns" in status:
                self.answered.add(status["stamp_ns"])


def box_prompt(mask_path: Path) -> dict:
    """{"box": [x0, y0, x1, y1]} of the non-zero pixels of a mask image."""
    ys, xs = np.nonzero(np.array(PILImage.open(mask_path)))
    if not len(xs):
        raise SystemExit(f"prompt mask {mask_path} is empty")
    return {"box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]}


def write_overlay_video(path: Path, frames: list[np.ndarray], names: list[str], masks: dict, fps: float) -> None:
    """Every frame with a mask blended in red: its own mask, or (a frame the node dropped) the
    latest mask published before it, as a consumer of the topic would have seen it."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    shown_mask = None
    for image, name in zip(frames, names):
        shown_mask = masks.get(name, shown_mask)
        shown = image if shown_mask is None or shown_mask.shape != image.shape[:2] else overlay_mask(image, shown_mask)
        writer.write(cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))
    writer.release()


def run(argv=None) -> dict:
    """Run the demo; returns (and prints) the summary. SIGINT or SIGTERM stops it (exit code 0): one
    line says how far it got, the masks received so far stay in the masks folder, no video or summary
    is written, and it returns ``{"stopped": "stopped by SIGINT", "frames_published", "masks_received"}``."""
    args = parse_args(argv)
    paths = sorted(p for p in args.frames.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if args.limit:
        paths = paths[: args.limit]
    if not paths:
        raise SystemExit(f"no frames in {args.frames}")
    frames = [np.array(PILImage.open(p).convert("RGB")) for p in paths]
    names = [p.stem for p in paths]
    period_ns = int(1e9 / args.rate)
    stamps = [START_NS + i * period_ns for i in range(len(frames))]
    (args.out / "masks").mkdir(parents=True, exist_ok=True)

    recorder, published = None, 0
    try:
        with ros_command(), contextlib.ExitStack() as cleanup:  # cleanup: last in, first out
            params = {"model_profile": args.profile, "device": args.device, "mode": args.mode,
                      "image_size": args.image_size}
            node = VrsNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
            cleanup.callback(node.destroy_node)
            player = rclpy.create_node("vrs_demo_player")
            cleanup.callback(player.destroy_node)
            recorder = Recorder(player, args.out, dict(zip(stamps, names)))
            image_pub = player.create_publisher(Image, "image", qos_profile_sensor_data)
            prompt_pub = player.create_publisher(String, "prompt", RELIABLE)
            instruction_pub = player.create_publisher(String, "instruction", LATCHED)
            executor = MultiThreadedExecutor(num_threads=2)
            executor.add_node(node)
            executor.add_node(player)
            spinner = threading.Thread(target=executor.spin, daemon=True)
            spinner.start()
            cleanup.callback(spinner.join, 5)
            cleanup.callback(executor.shutdown)
            while not (image_pub.get_subscription_count() and prompt_pub.get_subscription_count()
                       and node.mask_pub.get_subscription_count()):
                time.sleep(0.05)
            if args.prompt_mask is not None:
                prompt = box_prompt(args.prompt_mask)
                prompt_pub.publish(String(data=json.dumps(prompt)))
                while node.engine is not None and not node.engine.prompt_pending:
                    time.sleep(0.01)
            else:
                prompt = {"instruction": args.instruction}
                instruction_pub.publish(String(data=args.instruction))
                deadline = time.time() + 10
                while node.engine is not None and node.engine.instruction is None and time.time() < deadline:
                    time.sleep(0.01)
            started = time.perf_counter()
            for i, image in enumerate(tqdm(frames, desc=f"publishing ({args.mode})", unit="frame")):
                msg = rgb_to_msg(image, Header(stamp=ns_to_stamp(stamps[i]), frame_id="camera"))
                image_pub.publish(msg)
                published += 1
                if args.mode == "sync":
                    while stamps[i] not in recorder.answered:
                        time.sleep(0.002)
                else:
                    time.sleep(max(0.0, started + (i + 1) / args.rate - time.perf_counter()))
            # let the node finish the frame it is on, then stop
            deadline = time.time() + 30
            while time.time() < deadline and stamps[-1] not in recorder.answered:
                if args.mode == "live" and node.engine is not None and node.engine.stats.processed + \
                        node.engine.stats.dropped >= len(frames):
                    time.sleep(0.5)
                    break
                time.sleep(0.05)
    except KeyboardInterrupt as stop:  # SIGINT or SIGTERM (vrs_node.ros.cli)
        received = len(recorder.masks) if recorder is not None else 0
        print(f"vrs-demo: {stop} after publishing {published} of {len(frames)} frames; "
              f"{received} masks in {(args.out / 'masks').resolve()}")
        return {"stopped": str(stop), "frames_published": published, "masks_received": received}

    write_overlay_video(args.out / "overlay.mp4", frames, names, recorder.masks, min(args.rate, 30.0))
    (args.out / "status.jsonl").write_text("".join(json.dumps(s) + "\n" for s in recorder.statuses))
    last = next((s for s in reversed(recorder.statuses) if "dropped" in s), {})
    summary = {
        "profile": args.profile, "mode": args.mode, "frames_published": len(frames),
        "masks_received": len(recorder.masks), "dropped": last.get("dropped"),
        "grounding_queries": sum(1 for s in recorder.statuses if s.get("event") == "query"),
        "prompt": prompt, "masks_dir": str((args.out / "masks").resolve()),
        "overlay_video": str((args.out / "overlay.mp4").resolve()),
        "status_log": str((args.out / "status.jsonl").resolve()),
        "note": "random weights: the masks show the pipeline works, not segmentation quality"
        if node.model_error is None and args.profile.endswith("random") else node.model_error,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"vrs-demo: {summary['masks_received']} masks for {len(frames)} frames "
          f"({args.mode} mode, profile {args.profile}, dropped {summary['dropped']})")
    print(f"  masks:   {summary['masks_dir']}")
    print(f"  overlay: {summary['overlay_video']}")
    print(f"  status:  {summary['status_log']}")
    return summary


def main(argv=None) -> None:
    """Console entry point ``vrs-demo``."""
    run(argv)


if __name__ == "__main__":
    main()
