"""What ``vrs-replay`` replays and what a predictor answers: sequences of frames from a bag or a
DAVIS-like dataset, and the seam between predictors and outputs.

- :class:`ReplaySequence`: one unit replayed and scored (a bag, a dataset video, or one expression
  of a video), its frames (:class:`InputFrame`: image, stamp, ground truth) decoded lazily;
  :func:`bag_sequence` and :func:`dataset_sequences` make them, checking the input first
  (:class:`~vrs_node.eval.bag.BagError`, :class:`ReplayError`).
- The seam: a :data:`Predictor` is any callable ``predictor(sequence)`` that yields one
  :class:`Prediction` per frame of ``sequence.frames()``, in order
  (:mod:`vrs_node.eval.predictors` has the models' three; the tests have a ground-truth oracle);
  :func:`vrs_node.eval.outputs.run_sequence` writes and scores what it yields.

Torch-free, so that ``vrs-replay`` checks its input (and answers ``--help``) before loading models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vrs_node.eval import bag as bagio
from vrs_node.eval.bag import BagError

PROMPTS = ("instruction", "gt-box", "gt-mask")
"""What tells the target: the sequence's instruction, or the box or mask of its first non-empty
ground truth (on the frame it comes from)."""


class ReplayError(ValueError):
    """Bad input or options; ``vrs-replay`` prints the message and exits with status 1."""


@dataclass(frozen=True, eq=False)
class InputFrame:
    """One frame of a sequence: position ``index`` (0-based), file/bag name, header stamp and
    frame_id, RGB uint8 image, and the ground truth (H x W bool) or None where none is given."""

    index: int
    name: str
    stamp_ns: int
    frame_id: str
    image: np.ndarray
    gt: np.ndarray | None

    @property
    def shows_target(self) -> bool:
        """Whether the frame has a non-empty ground truth (a ground-truth prompt can come from it)."""
        return self.gt is not None and bool(self.gt.any())


@dataclass(frozen=True, eq=False)
class Prediction:
    """A predictor's answer for one frame.

    ``mask``: H x W bool at the frame's (camera) resolution. ``status``: the engine's status (or
    the realtime predictor's ``no_result``). ``latency_s``: this frame's own processing latency,
    None if not measured or not processed. ``processed``: False for a frame the live engine
    dropped. ``mask_from``: the frame whose result this mask is (realtime: an earlier one; None: no
    result yet; default: this frame). ``arrival_s``: realtime only, wall seconds from the first
    frame's arrival to this one's.
    """

    frame: InputFrame
    mask: np.ndarray
    object_score: float | None = None
    status: str = ""
    latency_s: float | None = None
    processed: bool = True
    mask_from: int | None = -1
    arrival_s: float | None = None

    @property
    def source(self) -> int | None:
        """Index of the frame whose result the mask is (None: none yet)."""
        return self.frame.index if self.mask_from == -1 else self.mask_from


@dataclass(eq=False)
class ReplaySequence:
    """One unit replayed and scored: a bag, a dataset video, or one expression of a video.

    ``load_frames()`` yields the frames afresh at every call (lazily decoded); ``count`` is their
    number; ``gt_hw`` the ground-truth resolution (None: no ground truth), at which masks are saved.
    """

    name: str
    count: int
    load_frames: Callable[[], Iterator[InputFrame]] = field(repr=False)
    fps: float = 30.0
    instruction: str | None = None
    video: str = ""
    expression_id: str | None = None
    subset: str | None = None
    gt_hw: tuple[int, int] | None = None

    def frames(self) -> Iterator[InputFrame]:
        return self.load_frames()


Predictor = Callable[[ReplaySequence], Iterator[Prediction]]
"""The seam (module docstring): one :class:`Prediction` per frame of the sequence, in order. A
predictor may have an ``info`` dict describing the last sequence (added to its summary)."""


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (H, W) (unchanged if already that size)."""
    if mask.shape == tuple(hw):
        return mask
    return cv2.resize(mask.view(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def _limited(count: int, limit: int) -> int:
    return min(count, limit) if limit > 0 else count


def bag_sequence(path: Path, image_topic: str, gt_topic: str | None = None, limit: int = 0,
                 instruction: str | None = None) -> ReplaySequence:
    """A bag as one sequence. The bag and its topics are checked now (BagError naming the topics the
    bag has); the ground truth is read now and matched to frames by header stamp."""
    infos = {t.name: t for t in bagio.topics(path)}
    present = ", ".join(f"{t.name} ({t.msgtype}, {t.count} msgs)" for t in infos.values()) or "no topics"
    for role, topic in (("image", image_topic), ("ground-truth", gt_topic)):
        if topic is not None and topic not in infos:
            raise BagError(f"{path}: no {role} topic {topic!r}; the bag has: {present}")
    count = _limited(infos[image_topic].count, limit)
    if count == 0:
        raise BagError(f"{path}: topic {image_topic!r} has no messages")
    gts: dict[int, tuple[tuple[int, int], np.ndarray]] = {}
    if gt_topic is not None:
        for stamp_ns, _, mask in bagio.read_masks(path, gt_topic):
            gts[stamp_ns] = (mask.shape, np.packbits(mask))  # 1 bit per pixel while waiting

    def unpack(stamp_ns: int) -> np.ndarray | None:
        if stamp_ns not in gts:
            return None
        shape, bits = gts[stamp_ns]
        return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)

    def frames() -> Iterator[InputFrame]:
        for index, (stamp_ns, frame_id, image) in enumerate(bagio.read_images(path, image_topic)):
            if index >= count:
                return
            yield InputFrame(index, f"{index:05d}", stamp_ns, frame_id, image, unpack(stamp_ns))

    try:  # frame rate of the overlay video: median bag-time spacing (no decoding, cheap)
        stamps = [s for s, _ in zip(_bag_stamps(path, image_topic), range(min(count, 200)))]
    except Exception:  # noqa: BLE001 -- a damaged bag is reported by the frame reader, with its reason
        stamps = []
    fps = _fps(stamps)
    gt_hw = next(iter(gts.values()))[0] if gts else None
    name = path.stem if path.suffix in (".bag", ".mcap", ".db3") else path.name
    return ReplaySequence(name, count, frames, fps, instruction, video=name, gt_hw=gt_hw)


def _bag_stamps(path: Path, topic: str) -> Iterator[int]:
    """Bag-time stamps of ``topic`` (no decoding)."""
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        for _, stamp, _ in reader.messages(connections=connections):
            yield int(stamp)


def _fps(stamps: Sequence[int], default: float = 30.0) -> float:
    """Frame rate from the median stamp spacing, clamped to 1..60 fps (``default`` if unknown)."""
    diffs = np.diff(np.asarray(stamps, dtype=np.int64))
    diffs = diffs[diffs > 0]
    if not diffs.size:
        return default
    return float(np.clip(1e9 / np.median(diffs), 1.0, 60.0))


def dataset_sequences(root: Path, sequences: Sequence[str] | None = None, expression: str = "first",
                      limit: int = 0, rate_hz: float = 30.0) -> list[ReplaySequence]:
    """The sequences of a DAVIS-like folder with ``meta_expressions.json``; frame ``i`` is stamped
    ``START_NS + round(i * 1e9 / rate_hz)``, exactly as ``vrs-bag make`` stamps it.

    ``expression``: ``"first"`` (each video's first expression; unit named after the video),
    ``"all"`` (every expression; units ``<video>/<id>``) or an expression id (units named after the
    video). ReplayError for a missing folder, meta file, sequence or expression.
    """
    from vrs_node.eval.datasets import load_davis_expressions

    if not root.is_dir():
        raise ReplayError(f"{root}: no such dataset folder")
    if not (root / "meta_expressions.json").is_file():
        raise ReplayError(f"{root}: no meta_expressions.json; a dataset folder needs <root>/meta_expressions.json "
                          "({'videos': {SEQ: {'frames', 'expressions': {ID: {'exp', 'obj_id'}}}}}) and "
                          "<root>/<SEQ>/JPEGImages + <root>/<SEQ>/Annotations")
    try:
        expressions = load_davis_expressions(root)
    except (FileNotFoundError, KeyError, ValueError) as error:
        raise ReplayError(f"{root}: cannot load the dataset: {error}") from None
    videos = list(dict.fromkeys(e.video for e in expressions))
    if sequences:
        if unknown := [s for s in sequences if s not in videos]:
            raise ReplayError(f"{root}: sequence(s) {', '.join(unknown)} not found; available: {', '.join(videos)}")
        videos = list(sequences)
    units = []
    for video in videos:
        mine = [e for e in expressions if e.video == video]
        if expression == "first":
            chosen = mine[:1]
        elif expression == "all":
            chosen = mine
        else:
            chosen = [e for e in mine if e.expression_id == expression]
            if not chosen:
                raise ReplayError(f"{video}: no expression {expression!r}; it has "
                                  f"{', '.join(e.expression_id for e in mine) or 'none'}")
        for exp in chosen:
            units.append(_expression_sequence(exp, expression == "all", limit, rate_hz))
    return units


def _expression_sequence(exp, nested: bool, limit: int, rate_hz: float) -> ReplaySequence:
    count = _limited(len(exp.frame_paths), limit)
    stamps = [bagio.START_NS + round(i * 1e9 / rate_hz) for i in range(count)]

    def frames() -> Iterator[InputFrame]:
        for i in range(count):
            gt = exp.gt_mask(i)
            yield InputFrame(i, exp.frames[i], stamps[i], "camera", exp.image(i),
                             None if gt is None else np.asarray(gt, dtype=bool))

    gt_hw = next((g.shape for g in (exp.gt_mask(i) for i in range(count)) if g is not None), None)
    name = f"{exp.video}/{exp.expression_id}" if nested else exp.video
    return ReplaySequence(name, count, frames, float(np.clip(rate_hz, 1.0, 60.0)), exp.text, exp.video,
                          exp.expression_id, exp.subset, gt_hw)
