"""What ``vrs-replay`` writes for one sequence, and its scores: :func:`run_sequence` replays a
:class:`~vrs_node.eval.sequences.ReplaySequence` through any predictor and fills its folder.

The folder (``<out>/<sequence>/``) holds:

- one 0/255 mask PNG per frame named after the frame, at ground-truth resolution (the DAVIS
  results layout);
- :data:`BAG_DIR`, a rosbag2 folder, all messages with the input stamps: the predicted masks
  (``sensor_msgs/Image`` mono8 0/255 at camera resolution) on the mask topic (default
  :data:`PREDICTED_MASK_TOPIC`); the input frames, ``Image`` rgb8 or (``images="jpeg"``)
  ``CompressedImage``, on the input image topic named for that type as image_transport does
  (:func:`vrs_node.eval.bag.transport_topic`: ``/camera/image_raw`` for Image,
  ``/camera/image_raw/compressed`` for CompressedImage; frames re-encoded to the other type get
  the other name, not the input's); the ground truth, ``Image`` mono8 0/255, on the ground-truth
  topic named the same way;
- ``overlay.mp4``: prediction in red, ground-truth contour in green; an odd width or height gets
  its last column or row repeated, as MPEG-4 needs even sizes;
- ``frames.csv``: one row per frame (:data:`CSV_COLUMNS`): J and F (:mod:`vrs_node.eval.metrics`)
  of each frame with ground truth, and what the predictor said.

The sequence's summary is :func:`vrs_node.eval.summary.sequence_summary`'s.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage
from tqdm import tqdm

from vrs_node.eval import bag as bagio
from vrs_node.eval.metrics import BOUND_TH, boundary_measure, region_similarity
from vrs_node.eval.sequences import InputFrame, Prediction, Predictor, ReplayError, ReplaySequence, resize_mask
from vrs_node.eval.summary import sequence_summary
from vrs_node.io.image import overlay_mask

PREDICTED_MASK_TOPIC = "/vrs/mask"
"""Default topic of the predicted masks in the output bag: ``vrs-node``'s ``mask`` in the namespace
``vrs`` of ``launch/vrs.launch.py``."""
BAG_DIR = "masks_bag"
"""The output rosbag2 folder in each sequence folder (no ``.bag`` suffix: that names a ROS 1 bag)."""
CSV_COLUMNS = ("frame", "stamp_ns", "J", "F", "object_score", "status", "latency_ms",
               "index", "has_gt", "mask_pixels", "processed", "mask_from_frame", "arrival_s")
"""The columns of ``frames.csv``, in order (the keys of :func:`run_sequence`'s rows)."""


class _MaskBag:
    """:data:`BAG_DIR`: input frames, predicted masks and ground truth with the input stamps, on the
    topics of the module docstring (``topics``: role -> topic; messages built with
    :mod:`vrs_node.eval.bag`'s helpers). ReplayError if two roles would share a topic."""

    def __init__(self, path: Path, image_topic: str, mask_topic: str, gt_topic: str | None,
                 storage: str = "mcap", images: str = "raw"):
        from rosbags.rosbag2 import Writer

        image_type = bagio.IMAGE if images == "raw" else bagio.COMPRESSED
        self.topics = {"frames": bagio.transport_topic(image_topic, image_type), "masks": mask_topic}
        if gt_topic:
            self.topics["ground_truth"] = bagio.transport_topic(gt_topic, bagio.IMAGE)
        if len(set(self.topics.values())) != len(self.topics):
            raise ReplayError(f"bag topics must differ: {self.topics}")
        self.images = images
        self.writer = Writer(path, version=9, storage_plugin=bagio.STORAGES[storage])
        self.writer.open()
        types = bagio.TYPESTORE
        self.image_conn = self.writer.add_connection(self.topics["frames"], image_type, typestore=types)
        self.mask_conn = self.writer.add_connection(mask_topic, bagio.IMAGE, typestore=types)
        self.gt_conn = self.writer.add_connection(self.topics["ground_truth"], bagio.IMAGE, typestore=types) \
            if gt_topic else None

    def write(self, frame: InputFrame, mask: np.ndarray) -> None:
        types, stamp = bagio.TYPESTORE, frame.stamp_ns
        header = bagio.header_msg(stamp, frame.frame_id)
        if self.images == "raw":
            image_msg, image_type = bagio.image_msg(frame.image, "rgb8", header), bagio.IMAGE
        else:
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            image_msg = types.types[bagio.COMPRESSED](header=header, format="jpeg", data=data.reshape(-1))
            image_type = bagio.COMPRESSED
        self.writer.write(self.image_conn, stamp, types.serialize_cdr(image_msg, image_type))
        mask_msg = bagio.image_msg(mask.view(np.uint8) * np.uint8(255), "mono8", header)
        self.writer.write(self.mask_conn, stamp, types.serialize_cdr(mask_msg, bagio.IMAGE))
        if self.gt_conn is not None and frame.gt is not None:
            gt_msg = bagio.image_msg(frame.gt.view(np.uint8) * np.uint8(255), "mono8", header)
            self.writer.write(self.gt_conn, stamp, types.serialize_cdr(gt_msg, bagio.IMAGE))

    def close(self) -> None:
        self.writer.close()


def overlay_frame(image: np.ndarray, mask: np.ndarray, gt: np.ndarray | None) -> np.ndarray:
    """RGB frame with the prediction blended in red and the ground-truth contour in green."""
    shown = overlay_mask(image, resize_mask(mask, image.shape[:2])) if mask.any() else image.copy()
    if gt is not None and gt.any():
        contours, _ = cv2.findContours(resize_mask(gt, image.shape[:2]).view(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(shown, contours, -1, (0, 255, 0), max(1, round(max(image.shape[:2]) / 400)))
    return shown


def even_size(image: np.ndarray) -> np.ndarray:
    """``image`` with its last column and/or row repeated to an even width and height (MPEG-4 video
    needs even sizes; OpenCV's writer would drop an odd last column or row)."""
    height, width = image.shape[:2]
    return cv2.copyMakeBorder(image, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)


class _OverlayVideo:
    """``overlay.mp4`` at ``fps``: opened at the first frame's (even) size; a later frame of another
    size is resized to it."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] = (0, 0)

    def write(self, frame: InputFrame, mask: np.ndarray) -> None:
        shown = even_size(overlay_frame(frame.image, mask, frame.gt))
        if self.writer is None:
            self.size = (shown.shape[1], shown.shape[0])
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
        if (shown.shape[1], shown.shape[0]) != self.size:
            shown = cv2.resize(shown, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def _prepare_dir(path: Path) -> None:
    """Create ``path``; an earlier vrs-replay output there (it has frames.csv, or :data:`BAG_DIR`
    when a crash interrupted it) is replaced, anything else is refused."""
    if path.exists() and any(path.iterdir()):
        if not ((path / "frames.csv").is_file() or (path / BAG_DIR).is_dir()):
            raise ReplayError(f"{path} exists and is not a vrs-replay output folder; choose another --out")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


class SequenceWriter:
    """One sequence's folder being written, a prediction at a time: what :func:`run_sequence` does
    for each frame, for a caller that has the predictions (:func:`run_sequence` itself, and
    :func:`vrs_node.eval.groups.run_group`, which feeds one writer per expression of a pass).

    The folder is prepared at construction (an earlier vrs-replay output there is replaced);
    :meth:`write` takes the predictions in frame order (RuntimeError otherwise); :meth:`close`
    closes the bag and the video (always call it); :meth:`finish` writes ``frames.csv`` and returns
    (sequence summary, per-frame rows), RuntimeError unless every frame was written.
    """

    def __init__(self, seq: ReplaySequence, out_dir: Path | str, *, image_topic: str = bagio.IMAGE_TOPIC,
                 mask_topic: str = PREDICTED_MASK_TOPIC, gt_topic: str | None = bagio.GROUND_TRUTH_MASK_TOPIC,
                 bag_storage: str = "mcap", bag_images: str = "raw", bound_th: float = BOUND_TH,
                 progress: bool = True):
        self.seq, self.out_dir, self.bound_th = seq, Path(out_dir), bound_th
        _prepare_dir(self.out_dir)
        self.rows: list[dict] = []
        self.bag = _MaskBag(self.out_dir / BAG_DIR, image_topic, mask_topic,
                            gt_topic if seq.gt_hw is not None else None, bag_storage, bag_images)
        self.video = _OverlayVideo(self.out_dir / "overlay.mp4", seq.fps)
        self.bar = tqdm(total=seq.count, desc=seq.name, unit="frame", leave=False, disable=not progress)

    def write(self, pred: Prediction) -> int:
        """Write the next frame's prediction; returns the number of frames written."""
        if pred.frame.index != len(self.rows):
            raise RuntimeError(f"{self.seq.name}: the predictor answered frame {pred.frame.index}, "
                               f"expected {len(self.rows)}")
        self.rows.append(_write_frame(self.seq, pred, self.out_dir, self.bag, self.video, self.bound_th))
        self.bar.update()
        return len(self.rows)

    def close(self) -> None:
        self.bar.close()
        self.bag.close()
        self.video.close()

    def finish(self, info: dict) -> tuple[dict, list[dict]]:
        """``frames.csv`` and (summary with the predictor's ``info``, rows)."""
        if len(self.rows) != self.seq.count:
            raise RuntimeError(f"{self.seq.name}: the predictor answered {len(self.rows)} of {self.seq.count} frames")
        _write_csv(self.out_dir / "frames.csv", self.rows)
        summary = sequence_summary(self.seq, self.rows, info, self.out_dir)
        summary["bag"] = {"path": str((self.out_dir / BAG_DIR).resolve()), "topics": self.bag.topics}
        return summary, self.rows


def run_sequence(seq: ReplaySequence, predictor: Predictor, out_dir: Path | str, *,
                 on_frame: Callable[[int], None] | None = None, **options) -> tuple[dict, list[dict]]:
    """Replay one sequence through ``predictor``; write and score its output.

    Every frame gets: its mask PNG (0/255, at the ground-truth resolution ``seq.gt_hw``, else camera
    resolution), its messages in :data:`BAG_DIR` (topics: see the module docstring), an
    ``overlay.mp4`` frame (padded to even sizes by :func:`even_size`) and a ``frames.csv`` row; a
    frame with ground truth is scored (J, F per frame, :mod:`vrs_node.eval.metrics`). Returns
    (sequence summary, per-frame rows). RuntimeError if the predictor does not yield exactly one
    prediction per frame, in order. ``options``: :class:`SequenceWriter`'s keywords (topics, bag
    storage and images, ``bound_th``, ``progress``). ``on_frame(n)`` is called after the n-th frame
    is written (a progress counter beside the bar; Ray workers report with it).
    """
    writer = SequenceWriter(seq, out_dir, **options)
    try:
        for pred in predictor(seq):
            written = writer.write(pred)
            if on_frame is not None:
                on_frame(written)
    finally:
        writer.close()
    return writer.finish(getattr(predictor, "info", {}) or {})


def _write_frame(seq: ReplaySequence, pred: Prediction, out_dir: Path, bag_out: _MaskBag, video: _OverlayVideo,
                 bound_th: float) -> dict:
    """Write one prediction's mask PNG, bag messages and overlay frame; returns its ``frames.csv`` row."""
    frame = pred.frame
    mask = np.asarray(pred.mask, dtype=bool)
    if mask.shape != frame.image.shape[:2]:
        raise RuntimeError(f"{seq.name}: mask {mask.shape} for frame {frame.name} of {frame.image.shape[:2]}")
    hw = frame.gt.shape if frame.gt is not None else (seq.gt_hw or mask.shape)
    saved = resize_mask(mask, hw)
    PILImage.fromarray(saved.view(np.uint8) * np.uint8(255)).save(out_dir / f"{frame.name}.png")
    bag_out.write(frame, mask)
    video.write(frame, mask)
    j = f = None
    if frame.gt is not None:
        j = float(region_similarity(saved, frame.gt))
        f = float(boundary_measure(saved, frame.gt, bound_th=bound_th))
    return {
        "frame": frame.name, "stamp_ns": frame.stamp_ns, "J": j, "F": f, "object_score": pred.object_score,
        "status": pred.status, "latency_ms": None if pred.latency_s is None else pred.latency_s * 1e3,
        "index": frame.index, "has_gt": frame.gt is not None, "mask_pixels": int(saved.sum()),
        "processed": pred.processed, "mask_from_frame": pred.source, "arrival_s": pred.arrival_s,
    }


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([_fmt(row[c]) for c in CSV_COLUMNS])
