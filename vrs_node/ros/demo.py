"""``vrs-demo``: run the node on a folder of frames, as a camera would feed it, and save what it publishes.

One process, real ROS 2 topics: a player sends an instruction on ``instruction`` (several
``--instruction``: one ``set`` command on ``targets``; or, with ``--prompt-mask``, a box prompt
taken from a ground-truth mask on ``prompt``), publishes the frames on ``image`` (stamped at
``--rate``), and a recorder saves every ``mask`` message as a PNG named after its frame, an
overlay video (each target in its own colour with its label, from ``instance_mask`` and the
status) and the ``status`` stream (frame results and grounding queries).
``--mode live`` (default) runs the node as on a robot (newest frame wins, drops counted);
``--mode sync`` waits for each frame's answer before sending the next, so every frame gets a mask.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
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

from vrs_node.core.process_exit import safe_exit_code
from vrs_node.io.image import image_msg_to_rgb, ns_to_stamp, rgb_to_msg, stamp_to_ns
from vrs_node.io.overlay import overlay_instances
from vrs_node.ros.cli import SpinThread, ros_command
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
    parser.add_argument("--instruction", action="append", dest="instructions", metavar="INSTRUCTION",
                        help="what to segment (default 'the black swan'); give it several times for several "
                             "targets, each drawn in its own colour with its label")
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
    args = parser.parse_args(argv)
    args.instructions = args.instructions or ["the black swan"]
    return args


class Recorder:
    """Collects masks and statuses from the node's topics (called on executor threads)."""

    def __init__(self, node, out: Path, names_by_stamp: dict[int, str]):
        self.out, self.names = out, names_by_stamp
        self.masks: set[str] = set()  # names of the frames whose mask came (written as PNG)
        self.instance_maps: dict[str, np.ndarray] = {}
        self.targets: dict[str, list[dict]] = {}  # each frame's status "targets" list
        self.statuses: list[dict] = []
        self.answered: set[int] = set()  # stamps of the frames the node has answered
        self.lock = threading.Lock()
        node.create_subscription(Image, "mask", self.on_mask, RELIABLE)
        node.create_subscription(Image, "instance_mask", self.on_instance_mask, RELIABLE)
        node.create_subscription(String, "status", self.on_status, RELIABLE)

    def _name(self, stamp_ns: int) -> str:
        return self.names.get(stamp_ns, f"stamp_{stamp_ns}")

    def on_mask(self, msg: Image) -> None:
        name = self._name(stamp_to_ns(msg.header.stamp))
        mask = image_msg_to_rgb(msg)[:, :, 0]
        cv2.imwrite(str(self.out / "masks" / f"{name}.png"), mask)
        with self.lock:
            self.masks.add(name)

    def on_instance_mask(self, msg: Image) -> None:
        instance_map = image_msg_to_rgb(msg)[:, :, 0]
        with self.lock:
            self.instance_maps[self._name(stamp_to_ns(msg.header.stamp))] = instance_map

    def on_status(self, msg: String) -> None:
        status = json.loads(msg.data)
        with self.lock:
            self.statuses.append(status)
            if "stamp_ns" in status:
                self.answered.add(status["stamp_ns"])
            if "targets" in status and "stamp_ns" in status:
                self.targets[self._name(status["stamp_ns"])] = status["targets"]


def box_prompt(mask_path: Path) -> dict:
    """{"box": [x0, y0, x1, y1]} of the non-zero pixels of a mask image."""
    ys, xs = np.nonzero(np.array(PILImage.open(mask_path)))
    if not len(xs):
        raise SystemExit(f"prompt mask {mask_path} is empty")
    return {"box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]}


def write_overlay_video(path: Path, frames: list[np.ndarray], names: list[str], recorder: Recorder,
                        fps: float) -> None:
    """Every frame with its targets drawn, each in its own colour with its id and label
    (:func:`~vrs_node.io.overlay.overlay_instances` of its instance mask and status): its own
    result, or (a frame the node dropped) the latest one published before it, as a consumer of the
    topics would have seen it."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    shown = None
    for image, name in zip(frames, names):
        if name in recorder.instance_maps:
            targets = recorder.targets.get(name, [])
            shown = (recorder.instance_maps[name], [(t["id"], t["label"], t["box"]) for t in targets])
        drawn = image if shown is None or shown[0].shape != image.shape[:2] else overlay_instances(image, *shown)
        writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    writer.release()


def load_frames(folder: Path, limit: int) -> tuple[list[np.ndarray], list[str]]:
    """The JPEG/PNG frames of ``folder`` in name order (the first ``limit``; 0 = all) as RGB arrays,
    with their names (file stems); SystemExit when there are none."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if limit:
        paths = paths[:limit]
    if not paths:
        raise SystemExit(f"no frames in {folder}")
    return [np.array(PILImage.open(p).convert("RGB")) for p in paths], [p.stem for p in paths]


class Session:
    """The node and a player node (publishers and a :class:`Recorder`) spun on a background
    executor, connected when the constructor returns; everything is closed by ``cleanup`` (an
    ExitStack, last in, first out). ``published`` counts the frames sent."""

    def __init__(self, args: argparse.Namespace, names_by_stamp: dict[int, str], cleanup: contextlib.ExitStack):
        self.args, self.published = args, 0
        params = {"model_profile": args.profile, "device": args.device, "mode": args.mode,
                  "image_size": args.image_size}
        self.node = VrsNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        cleanup.callback(self.node.destroy_node)
        player = rclpy.create_node("vrs_demo_player")
        cleanup.callback(player.destroy_node)
        self.recorder = Recorder(player, args.out, names_by_stamp)
        self.image_pub = player.create_publisher(Image, "image", qos_profile_sensor_data)
        self.prompt_pub = player.create_publisher(String, "prompt", RELIABLE)
        self.instruction_pub = player.create_publisher(String, "instruction", LATCHED)
        self.targets_pub = player.create_publisher(String, "targets", LATCHED)
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(self.node)
        executor.add_node(player)
        cleanup.callback(SpinThread(executor, "vrs-demo-spin").stop)
        while not (self.image_pub.get_subscription_count() and self.prompt_pub.get_subscription_count()
                   and self.node.mask_pub.get_subscription_count()):
            time.sleep(0.05)

    def send_target(self) -> dict:
        """The box prompt of ``--prompt-mask``, else the instruction (on ``instruction``) or the
        instructions (one ``set`` command on ``targets``); returns what was sent once the node has
        it (instructions: at most 10 s later)."""
        engine = self.node.engine
        if self.args.prompt_mask is not None:
            prompt = box_prompt(self.args.prompt_mask)
            self.prompt_pub.publish(String(data=json.dumps(prompt)))
            while engine is not None and not engine.prompt_pending:
                time.sleep(0.01)
            return prompt
        instructions = self.args.instructions
        if len(instructions) == 1:
            self.instruction_pub.publish(String(data=instructions[0]))
        else:
            command = {"op": "set", "targets": [{"instruction": text} for text in instructions]}
            self.targets_pub.publish(String(data=json.dumps(command)))
        deadline = time.time() + 10
        while engine is not None and len(engine.target_labels()) < len(instructions) and time.time() < deadline:
            time.sleep(0.01)
        return {"instruction": instructions[0]} if len(instructions) == 1 else {"instructions": instructions}

    def play(self, frames: list[np.ndarray], stamps: list[int]) -> None:
        """Publish the frames (``sync``: each once the previous is answered; ``live``: at ``--rate``),
        then let the node finish the frame it is on (at most 30 s)."""
        mode, answered = self.args.mode, self.recorder.answered
        started = time.perf_counter()
        for i, image in enumerate(tqdm(frames, desc=f"publishing ({mode})", unit="frame")):
            self.image_pub.publish(rgb_to_msg(image, Header(stamp=ns_to_stamp(stamps[i]), frame_id="camera")))
            self.published += 1
            if mode == "sync":
                while stamps[i] not in answered:
                    time.sleep(0.002)
            else:
                time.sleep(max(0.0, started + (i + 1) / self.args.rate - time.perf_counter()))
        engine, deadline = self.node.engine, time.time() + 30
        while time.time() < deadline and stamps[-1] not in answered:
            if mode == "live" and engine is not None and engine.stats.processed + engine.stats.dropped >= len(frames):
                time.sleep(0.5)
                break
            time.sleep(0.05)


def write_outputs(args: argparse.Namespace, frames: list[np.ndarray], names: list[str], recorder: Recorder,
                  prompt: dict, model_error: str | None) -> dict:
    """The overlay video, ``status.jsonl`` and ``summary.json`` in ``--out``; prints and returns the summary."""
    write_overlay_video(args.out / "overlay.mp4", frames, names, recorder, min(args.rate, 30.0))
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
        if model_error is None and args.profile.endswith("random") else model_error,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"vrs-demo: {summary['masks_received']} masks for {len(frames)} frames "
          f"({args.mode} mode, profile {args.profile}, dropped {summary['dropped']})")
    print(f"  masks:   {summary['masks_dir']}")
    print(f"  overlay: {summary['overlay_video']}")
    print(f"  status:  {summary['status_log']}")
    return summary


def run(argv=None) -> dict:
    """Run the demo; returns (and prints) the summary. SIGINT or SIGTERM stops it (exit code 0): one
    line says how far it got, the masks received so far stay in the masks folder, no video or summary
    is written, and it returns ``{"stopped": "stopped by SIGINT", "frames_published", "masks_received"}``."""
    args = parse_args(argv)
    frames, names = load_frames(args.frames, args.limit)
    period_ns = int(1e9 / args.rate)
    stamps = [START_NS + i * period_ns for i in range(len(frames))]
    (args.out / "masks").mkdir(parents=True, exist_ok=True)
    session = None
    try:
        with ros_command(), contextlib.ExitStack() as cleanup:
            session = Session(args, dict(zip(stamps, names)), cleanup)
            prompt = session.send_target()
            session.play(frames, stamps)
    except KeyboardInterrupt as stop:  # SIGINT or SIGTERM (vrs_node.ros.cli)
        published = session.published if session is not None else 0
        received = len(session.recorder.masks) if session is not None else 0
        print(f"vrs-demo: {stop} after publishing {published} of {len(frames)} frames; "
              f"{received} masks in {(args.out / 'masks').resolve()}")
        return {"stopped": str(stop), "frames_published": published, "masks_received": received}
    return write_outputs(args, frames, names, session.recorder, prompt, session.node.model_error)


def main(argv=None) -> int:
    """Console entry point ``vrs-demo``: 0 (a query still inside a model call at the end is not
    waited for: :func:`~vrs_node.core.process_exit.safe_exit_code`)."""
    run(argv)
    return safe_exit_code(0)


if __name__ == "__main__":
    sys.exit(main())
