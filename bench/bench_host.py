#!/usr/bin/env python3
"""Benchmark: the node's per-frame host time outside the model (issue 12, "Host overhead").

For every camera size (``--sizes``), input (``--inputs``: raw ``rgb8``/``bgr8`` ``sensor_msgs/Image``,
or ``jpeg``: ``CompressedImage`` at JPEG quality ``--jpeg-quality``) and SAM-2 input size
(``--model-sizes``), the stages of one frame are timed with the library functions the node runs,
the model replaced by nothing (fixed low-res logits stand in for its output):

1. ``decode``: message -> RGB array (``image_msg_to_rgb``; JPEG: ``compressed_msg_to_rgb`` decoded
   at the smallest scale covering the model input, as the node does without an overlay subscriber);
2. ``preprocess``: the device backend of ``SamImageTransform`` (uint8 to the device, resize,
   normalise, pad), with the camera size;
3. ``fill_holes``: the tracker's hole filling of the S/4 logits (OpenCV on the host);
4. ``mask``: ``TrackResult.mask()``: logits -> camera-size bool mask on the host;
5. ``mask_msg``: ``mask_to_msg``;
6. ``status``: the node's per-frame status fields -> JSON -> ``std_msgs/String``.

``total`` is their sum per frame. Reported beside it, not in the total: ``preprocess_reference``
(the PIL reference backend on the full-size image: the pre-processing the node ran before),
``decode_full`` (JPEG decoded at full size: what the node does while the overlay is subscribed) and
``overlay_msg`` (``overlay_mask`` + ``rgb_to_msg`` on the full-size image).

Frames: DAVIS-2016 ``blackswan`` JPEGs resized (bicubic) to each camera size, ``--pool`` of them
in turn. Iterations run round-robin over every configuration, so machine noise spreads evenly;
figures are p50 and p99 over ``--iterations`` after ``--warmup`` (the JSON adds the minimum, the
cost without interference on a busy machine). On CUDA (``--device cuda``) the
device is synchronised (untimed) after each stage, so a stage's figure is its host time plus the
wait for its own kernels (an upper bound of its host time). ``OMP_WAIT_POLICY`` defaults to
``PASSIVE`` here (set before torch loads), as the tests run.

Writes ``bench/out/host.json`` (``--out``) and prints a markdown table with the issue's goals.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import DAVIS  # noqa: E402
from PIL import Image as PilImage  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402
from tqdm import tqdm  # noqa: E402

from vrs_node.core.hole_filling import fill_holes_in_mask_scores  # noqa: E402
from vrs_node.core.track_result import TrackResult  # noqa: E402
from vrs_node.io.image import (compressed_msg_to_rgb, image_msg_to_rgb, mask_to_msg,  # noqa: E402
                               overlay_mask, rgb_to_msg)
from vrs_node.models.sam2_build import FILL_HOLE_AREA, SamImageTransform  # noqa: E402

DEFAULT_DAVIS = DAVIS / "blackswan" / "JPEGImages"
STAGES = ("decode", "preprocess", "fill_holes", "mask", "mask_msg", "status")
EXTRAS = ("preprocess_reference", "decode_full", "overlay_msg")
GOALS_MS = {("cpu", "raw", 256): 3.0, ("cpu", "jpeg", 256): 8.0, ("cuda", "raw", 1024): 3.0}
"""(device type, input kind, S) -> the issue's goal for the 1920 x 1080 total host time, in ms."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["640x480", "1280x720", "1920x1080"], help="camera sizes WxH")
    p.add_argument("--inputs", nargs="+", default=["rgb8", "bgr8", "jpeg"], choices=["rgb8", "bgr8", "jpeg"])
    p.add_argument("--model-sizes", nargs="+", type=int, default=[256, 1024], help="SAM-2 input sizes S")
    p.add_argument("--resize", default="squash", choices=["squash", "pad"], help="SamImageTransform mode")
    p.add_argument("--device", default="cpu", help="torch device of the pre- and post-processing")
    p.add_argument("--iterations", type=int, default=300, help="timed frames per configuration")
    p.add_argument("--warmup", type=int, default=10, help="untimed frames per configuration first")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--pool", type=int, default=4, help="distinct frames per configuration, used in turn")
    p.add_argument("--extras", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the reference pre-processing, the full JPEG decode and the overlay")
    p.add_argument("--davis", type=Path, default=DEFAULT_DAVIS, help="folder of DAVIS JPEGs")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "host.json")
    return p.parse_args(argv)


def low_res_logits(size: int, device: torch.device) -> torch.Tensor:
    """The model's stand-in output: 1 x 1 x S/4 x S/4 logits of a disc (about a fifth of the frame)
    with a few one-pixel holes, so the hole filling and the mask boundary do real work."""
    n = size // 4
    yy, xx = np.mgrid[:n, :n]
    logits = 8.0 * (0.25 - np.hypot(yy / n - 0.5, xx / n - 0.45)) / 0.25
    logits[n // 2, n // 3:n // 2:4] = -1.0
    return torch.from_numpy(logits.astype(np.float32))[None, None].to(device)


class Config:
    """One (camera size, input, S) configuration: its messages, transform and timings."""

    def __init__(self, frames: list[np.ndarray], width: int, height: int, kind: str, size: int, args):
        self.width, self.height, self.kind, self.size = width, height, kind, size
        self.name = f"{width}x{height} {kind} S={size}"
        self.device = torch.device(args.device)
        self.transform = SamImageTransform(size, args.resize)
        self.reference = SamImageTransform(size, args.resize, backend="reference")
        self.logits = low_res_logits(size, self.device)
        self.header = Header(frame_id="camera")
        self.images = [np.array(PilImage.fromarray(f).resize((width, height), PilImage.Resampling.BICUBIC))
                       for f in frames]
        self.msgs = [self._message(image, args.jpeg_quality) for image in self.images]
        self.times: dict[str, list[float]] = {k: [] for k in (*STAGES, "total", *EXTRAS)}
        self.step = 0
        self.extras = args.extras

    def _message(self, rgb: np.ndarray, quality: int):
        if self.kind == "jpeg":
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok
            return CompressedImage(header=self.header, format="jpeg", data=data.tobytes())
        msg = rgb_to_msg(rgb if self.kind == "rgb8" else np.ascontiguousarray(rgb[:, :, ::-1]), self.header)
        msg.encoding = self.kind
        return msg

    def _timed(self, name: str, fn, record: bool):
        start = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if record:
            self.times[name].append(time.perf_counter() - start)
        return out

    def frame(self, record: bool) -> None:
        """One frame through every stage (and the extras)."""
        i = self.step % len(self.msgs)
        self.step += 1
        msg, full = self.msgs[i], self.images[i]
        t = self._timed
        if self.kind == "jpeg":
            image, camera_hw = t("decode", lambda: compressed_msg_to_rgb(msg, min_size=self.transform.valid_size),
                                 record)
        else:
            image, camera_hw = t("decode", lambda: image_msg_to_rgb(msg), record), None
        t("preprocess", lambda: self.transform(image, self.device, camera_hw), record)
        logits = t("fill_holes", lambda: fill_holes_in_mask_scores(self.logits, FILL_HOLE_AREA), record)
        result = TrackResult(logits, 4.0, (self.height, self.width), self.transform)
        mask = t("mask", result.mask, record)
        t("mask_msg", lambda: mask_to_msg(mask, self.header), record)
        t("status", lambda: String(data=json.dumps(status_fields(mask))), record)
        if record:
            self.times["total"].append(sum(self.times[s][-1] for s in STAGES))
        if not self.extras:
            return
        t("preprocess_reference", lambda: self.reference(full, self.device), record)
        if self.kind == "jpeg":
            t("decode_full", lambda: compressed_msg_to_rgb(msg), record)
        t("overlay_msg", lambda: rgb_to_msg(overlay_mask(full, mask), self.header), record)

    def summary(self) -> dict:
        out = {"camera": f"{self.width}x{self.height}", "input": self.kind, "model_size": self.size}
        for name, values in self.times.items():
            if values:
                ms = np.asarray(values) * 1e3
                out[name] = {"p50_ms": round(float(np.percentile(ms, 50)), 3),
                             "p99_ms": round(float(np.percentile(ms, 99)), 3),
                             "min_ms": round(float(ms.min()), 3), "n": len(values)}
        return out


def status_fields(mask: np.ndarray) -> dict:
    """The fields the node's per-frame status carries (``_publish_result`` + ``_publish_status``)."""
    return {"stamp_ns": 1_700_000_000_000_000_000, "frame_id": "camera", "frame_index": 1234,
            "status": "tracking", "reason": "tracking", "object_score": 4.0, "target_present": bool(mask.any()),
            "latency_ms": 12.34, "model_profile": "tiny-random", "device": "cpu", "pushed": 1235,
            "processed": 1235, "dropped": 0, "errors": 0, "queries": 0, "query_errors": 0, "superseded": 0,
            "catchup_frames": 0, "prepared_catchup_frames": 0, "time_jumps": 0,
            "resolution_changes": 0, "instruction": None}


def table(rows: list[dict]) -> str:
    """Markdown table: p50 / p99 ms per stage and the total."""
    cols = [*STAGES, "total", *EXTRAS]
    lines = ["| camera | input | S | " + " | ".join(cols) + " |", "|" + "---|" * (3 + len(cols))]
    for r in rows:
        cells = [f"{r[c]['p50_ms']:.2f} / {r[c]['p99_ms']:.2f}" if c in r else "-" for c in cols]
        lines.append(f"| {r['camera']} | {r['input']} | {r['model_size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(rows: list[dict], device: torch.device) -> list[str]:
    """The issue's goals (1920 x 1080 total p50) that this run measures, met or not."""
    out = []
    for r in rows:
        kind = "jpeg" if r["input"] == "jpeg" else "raw"
        goal = GOALS_MS.get((device.type, kind, r["model_size"]))
        if goal is not None and r["camera"] == "1920x1080":
            p50 = r["total"]["p50_ms"]
            out.append(f"{device.type} {r['input']} 1080p S={r['model_size']}: total p50 {p50:.2f} ms "
                       f"(goal <= {goal:.0f} ms: {'met' if p50 <= goal else 'NOT met'})")
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    jpgs = sorted(args.davis.glob("*.jpg"))[:args.pool]
    if not jpgs:
        sys.exit(f"no DAVIS JPEGs in {args.davis} (--davis)")
    frames = [np.array(PilImage.open(p).convert("RGB")) for p in jpgs]
    configs = [Config(frames, *map(int, wh.split("x")), kind, size, args)
               for wh in args.sizes for kind in args.inputs for size in args.model_sizes]
    with torch.inference_mode():
        for _ in tqdm(range(args.warmup), desc="warm-up"):
            for c in configs:
                c.frame(record=False)
        for _ in tqdm(range(args.iterations), desc="frames"):
            for c in configs:
                c.frame(record=True)
    rows = [c.summary() for c in configs]
    device = torch.device(args.device)
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "opencv_threads": cv2.getNumThreads(),
                          "torch": torch.__version__, "opencv": cv2.__version__, "python": platform.python_version(),
                          "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "loadavg": os.getloadavg()},
              "args": {k: str(v) for k, v in vars(args).items()},
              "jpeg_bytes": {c.name: [len(m.data) for m in c.msgs] for c in configs if c.kind == "jpeg"},
              "rows": rows, "goals": goals(rows, device)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("p50 / p99 ms per frame; total = " + " + ".join(STAGES))
    print(table(rows))
    print("\n".join(report["goals"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
