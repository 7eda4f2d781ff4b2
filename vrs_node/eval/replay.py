"""``vrs-replay``: replay a rosbag2 bag or a DAVIS-like dataset through the segmentation pipeline,
write what it outputs and score it against the ground truth.

Inputs (one of):

- ``--bag PATH --image-topic T [--gt-topic T]``: a rosbag2 bag (:mod:`vrs_node.eval.bag`); frames in
  bag order with their header stamps, ground truth matched to frames by stamp;
- ``--dataset DIR [--sequences a,b] [--expression first|all|ID]``: a DAVIS-like folder with
  ``meta_expressions.json`` (:func:`vrs_node.eval.datasets.load_davis_expressions`); frame ``i`` is
  stamped ``START_NS + round(i * 1e9 / --rate)``, exactly as ``vrs-bag make`` stamps it.

Prompts (``--prompt``): ``instruction`` (the expression text of ``meta_expressions.json``, or
``--instruction`` for a bag), ``gt-box`` (the box of the first non-empty ground-truth mask: a
tracking-only check) or ``gt-mask`` (that mask itself). A ground-truth prompt is given on the frame
it comes from.

Modes (``--mode``):

- ``stream``: :class:`~vrs_node.core.engine.StreamingEngine` in sync mode: causal, every frame
  processed, reproducible;
- ``realtime``: frames are pushed at their stamp spacing (divided by ``--speed``) into the engine in
  live mode; a frame's mask is the latest mask the engine had published when that frame arrived
  (the frame's own result can never be ready at its own arrival); frames before the first result
  get an EMPTY mask (status ``no_result``), scored, never missing. Per-frame latency (push to result,
  processed frames only) and the time to the first non-empty mask are recorded;
- ``offline``: VRS-HQ's reference protocol: the whole video is the window; every frame is encoded,
  one grounding query (:meth:`~vrs_node.core.grounder.Grounder.ground`, anchor over all frames,
  lattice <= 11 frames) picks the keyframe, then
  :func:`~vrs_node.core.propagation.propagation_steps` conditions the keyframe with the query's
  TAK' token (``TokenPrompt``: its decode thresholded at the SAM input resolution, as VRS-HQ does)
  and propagates forward from it and, after ``reset()``, backward from it over the preceding frames
  in reverse (the backward pass sees no forward memory). A ground-truth prompt is the keyframe
  instead (frame 0 on DAVIS, so only the forward pass runs).

Outputs in ``--out``: per sequence, ``<out>/<sequence>/`` (``<sequence>`` is the bag's name without
``.bag``, ``.mcap`` or ``.db3``, or the dataset video; ``<out>/<video>/<expression>/`` with
``--expression all``: the ReVOS/MeViS results layout) holds one 0/255 mask PNG per frame named after
the frame, at ground-truth resolution (the DAVIS results layout); ``masks_bag/``, a rosbag2 folder
(``--bag-storage``), all messages with the input stamps:

- the predicted masks, ``sensor_msgs/Image`` mono8 0/255 at camera resolution, on ``--mask-topic``
  (default ``/vrs/mask``: where ``vrs-node`` publishes them under ``launch/vrs.launch.py``);
- the input frames, ``Image`` rgb8 or (``--bag-images jpeg``) ``CompressedImage``, on the input
  image topic named for that type as image_transport does (:func:`vrs_node.eval.bag.transport_topic`:
  ``/camera/image_raw`` for Image, ``/camera/image_raw/compressed`` for CompressedImage): frames
  re-encoded to the other type get the other name, not the input's (for an input named that way);
- the ground truth, ``Image`` mono8 0/255, on the ground-truth topic named the same way
  (default ``/camera/gt_mask``);

``overlay.mp4`` (prediction in red, ground-truth contour in green; an odd width or height gets its
last column or row repeated, as MPEG-4 needs even sizes) and ``frames.csv``. The top level gets
``summary.json`` (scores, protocol, settings, each sequence's bag and topics) and ``plots/`` (J&F
over time, latency histogram, time to first mask in realtime mode; :mod:`vrs_node.eval.report`).

The seam: :func:`run_sequence` takes a *predictor*, any callable ``predictor(sequence)`` that yields
one :class:`Prediction` per frame of ``sequence.frames()`` in order (the three modes above are
predictors; so is a ground-truth oracle in the tests), and does all writing and scoring; ``run(argv,
predictor=...)`` runs the whole command with it instead of the models.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image as PILImage
from tqdm import tqdm

from vrs_node.eval import bag as bagio
from vrs_node.eval.bag import BagError
from vrs_node.eval.metrics import (BOUND_TH, JF, boundary_measure, davis_statistics, davis_summary,
                                   region_similarity, summarize_expressions)
from vrs_node.eval.report import format_report, write_plots
from vrs_node.io.image import overlay_mask
from vrs_node.models.prompt import clean_instruction

if TYPE_CHECKING:  # torch-side imports stay lazy: errors and --help answer without loading torch
    from vrs_node.core.config import PipelineConfig
    from vrs_node.core.grounder import Grounder
    from vrs_node.core.tracker import Prompt, StreamingTracker

PROMPTS = ("instruction", "gt-box", "gt-mask")
REPLAY_MODES = ("stream", "realtime", "offline")
"""``--mode`` choices (the module docstring says what each does); not the engine's own modes."""
PREDICTED_MASK_TOPIC = "/vrs/mask"
"""Default topic of the predicted masks in the output bag: ``vrs-node``'s ``mask`` in the namespace
``vrs`` of ``launch/vrs.launch.py``."""
BAG_DIR = "masks_bag"
"""The output rosbag2 folder in each sequence folder (no ``.bag`` suffix: that names a ROS 1 bag)."""
NO_RESULT = "no_result"
"""Status of a realtime frame that arrived before the engine had published any result."""
CSV_COLUMNS = ("frame", "stamp_ns", "J", "F", "object_score", "status", "latency_ms",
               "index", "has_gt", "mask_pixels", "processed", "mask_from_frame", "arrival_s")
RANDOM_WARNING = ("RANDOM weights: the masks and scores prove the pipeline (plumbing, protocol, timing), "
                  "not segmentation quality")


class ReplayError(ValueError):
    """Bad input or options; ``vrs-replay`` prints the message and exits with status 1."""


# --- what flows through a replay -----------------------------------------------------------------


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


@dataclass(frozen=True, eq=False)
class Prediction:
    """A predictor's answer for one frame.

    ``mask``: H x W bool at the frame's (camera) resolution. ``status``: the engine's status (or
    :data:`NO_RESULT`). ``latency_s``: this frame's own processing latency, None if not measured or
    not processed. ``processed``: False for a frame the live engine dropped. ``mask_from``: the frame
    whose result this mask is (realtime: an earlier one; None: no result yet; default: this frame).
    ``arrival_s``: realtime only, wall seconds from the first frame's arrival to this one's.
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


# --- sources -------------------------------------------------------------------------------------


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
    """The sequences of a DAVIS-like folder with ``meta_expressions.json``.

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


# --- prompts and models --------------------------------------------------------------------------


def _resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (H, W) (unchanged if already that size)."""
    if mask.shape == tuple(hw):
        return mask
    return cv2.resize(mask.view(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def ground_truth_prompt(frame: InputFrame, kind: str) -> Prompt:
    """The ``gt-mask`` (MaskPrompt of the GT at camera size) or ``gt-box`` (tight box of it, in
    camera pixels) prompt from a frame with a non-empty ground truth."""
    from vrs_node.core.tracker import MaskPrompt, PointsPrompt

    mask = _resize_mask(frame.gt, frame.image.shape[:2])
    if kind == "gt-mask":
        return MaskPrompt(mask)
    ys, xs = np.nonzero(mask)
    return PointsPrompt(box=(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))


def _is_prompt_frame(frame: InputFrame) -> bool:
    return frame.gt is not None and bool(frame.gt.any())


@dataclass
class Models:
    """A tracker and (profile with language) its grounder, loaded once for every sequence."""

    tracker: StreamingTracker
    grounder: Grounder | None
    profile: str
    random_weights: bool
    device: str
    image_size: int
    precision: str


def load_replay_models(profile_name: str, device: str = "auto", image_size: int = 0, sam2_checkpoint: str = "",
                       vrshq_checkpoint: str = "", clip_anchor: str = "openai", max_cond_frames: int = 4,
                       precision: str = "auto", compile: bool = False, reasoner_quantization: str = "none") -> Models:
    """Build the profile's models (as the node does, ``precision``, ``compile`` and
    ``reasoner_quantization`` as its parameters); ReplayError with the reason if that fails."""
    from vrs_node.core.grounder import Grounder
    from vrs_node.core.tracker import StreamingTracker
    from vrs_node.models.profiles import get_profile, load_models, resolve_device

    try:
        profile = get_profile(profile_name)
        dev = resolve_device(device)
        loaded = load_models(profile, dev, image_size=image_size or None, sam2_checkpoint=sam2_checkpoint or None,
                             vrshq_checkpoint=vrshq_checkpoint or None, clip_anchor=clip_anchor,
                             precision=precision, compile=compile, reasoner_quantization=reasoner_quantization)
        tracker = StreamingTracker(loaded.sam2, loaded.transform, max_cond_frames=max_cond_frames,
                                   **loaded.tracker_options)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        raise ReplayError(f"model profile {profile_name!r} could not be loaded: {error}") from None
    grounder = None
    if loaded.grounding is not None:
        g = loaded.grounding
        grounder = Grounder(g.mllm, g.tokenizer, g.anchor_scorer, tracker)
    return Models(tracker, grounder, profile.name, profile.random_weights, str(dev), loaded.transform.image_size,
                  loaded.precision)


# --- predictors ----------------------------------------------------------------------------------


class _ModelPredictor:
    """Shared set-up of the three model-driven predictors. ``info`` describes the last sequence."""

    def __init__(self, models: Models, prompt: str, config: PipelineConfig | None = None, speed: float = 1.0,
                 progress: bool = True):
        """``config``: the engine settings (its ``mode`` is set by each predictor); ``speed``:
        the realtime replay speed factor."""
        from vrs_node.core.config import PipelineConfig

        if prompt not in PROMPTS:
            raise ReplayError(f"prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
        if prompt == "instruction" and models.grounder is None:
            raise ReplayError(f"profile {models.profile!r} has no language model: it cannot follow instructions; "
                              "use --prompt gt-box or gt-mask, or a profile with language (tiny-random, vrshq-7b)")
        self.models, self.prompt, self.progress = models, prompt, progress
        self.config, self.speed = config or PipelineConfig(), speed
        self.info: dict = {}

    def _instruction(self, seq: ReplaySequence) -> str:
        if not seq.instruction:
            raise ReplayError(f"{seq.name}: --prompt instruction needs an instruction (--instruction TEXT for a bag)")
        return seq.instruction

    def _query_info(self, reports, by_stamp: dict[int, int]) -> dict:
        """Grounding queries of a sequence; keyframes as frame positions (found by stamp: the
        engine's window numbers skip the frames a live engine dropped)."""
        return {
            "queries": len(reports),
            "query_errors": sum(r.error is not None for r in reports),
            "query_triggers": [r.trigger for r in reports],
            "query_latency_ms": [round(r.latency_s * 1e3, 2) for r in reports],
            "keyframes": [by_stamp.get(r.grounding.keyframe_stamp_ns) for r in reports if r.grounding is not None],
        }


class StreamPredictor(_ModelPredictor):
    """``stream`` mode: the engine in sync mode, one push per frame, every frame processed."""

    def __call__(self, seq: ReplaySequence) -> Iterator[Prediction]:
        from vrs_node.core.engine import StreamingEngine

        reports = []
        tracker = self.models.tracker
        tracker.reset()
        engine = StreamingEngine(tracker, dataclasses.replace(self.config, mode="sync"), grounder=self.models.grounder,
                                 on_query=reports.append)
        prompted = None
        if self.prompt == "instruction":
            engine.set_instruction(self._instruction(seq))
        self.info, by_stamp = {}, {}
        for frame in seq.frames():
            by_stamp[frame.stamp_ns] = frame.index
            if self.prompt != "instruction" and prompted is None and _is_prompt_frame(frame):
                engine.set_prompt(ground_truth_prompt(frame, self.prompt))
                prompted = frame.index
            r = engine.push(frame.image, frame.stamp_ns, frame.frame_id)
            yield Prediction(frame, r.mask, r.object_score, r.status, r.latency_s)
        self.info = {"prompt_frame": prompted, "processed": engine.stats.processed, "errors": engine.stats.errors,
                     **self._query_info(reports, by_stamp)}


class RealtimePredictor(_ModelPredictor):
    """``realtime`` mode: frames paced by their stamps (``/ speed``), the engine in live mode.

    The frames are decoded before the clock starts (a camera does not decode). A frame's mask is the
    latest result delivered before the frame is pushed; ``time_to_first_mask_s`` is the wall time
    from the first frame's push to the delivery of the first non-empty mask. After the last frame the
    engine finishes its work (for the latency record) before it is closed.
    """

    drain_timeout_s = 120.0

    def __call__(self, seq: ReplaySequence) -> Iterator[Prediction]:
        from vrs_node.core.engine import StreamingEngine

        frames = list(tqdm(seq.frames(), total=seq.count, desc=f"{seq.name}: loading", unit="frame",
                           leave=False, disable=not self.progress))
        if not frames:
            return
        by_stamp = {f.stamp_ns: f.index for f in frames}
        lock = threading.Lock()
        state = {"latest": None, "first_result": None, "first_mask": None, "delivered": 0}
        results: dict[int, object] = {}
        reports = []
        t0 = 0.0

        def on_result(result) -> None:
            with lock:  # published and timed under one lock: a frame timed after this sees the result
                now = time.perf_counter()
                state["latest"] = result
                state["delivered"] += 1
                results[by_stamp.get(result.stamp_ns, -1)] = result
                if state["first_result"] is None:
                    state["first_result"] = now - t0
                if state["first_mask"] is None and result.mask.any():
                    state["first_mask"] = now - t0

        tracker = self.models.tracker
        tracker.reset()
        engine = StreamingEngine(tracker, dataclasses.replace(self.config, mode="live"), on_result=on_result,
                                 grounder=self.models.grounder, on_query=reports.append)
        shown, arrivals, prompted = [], [], None
        try:
            if self.prompt == "instruction":
                engine.set_instruction(self._instruction(seq))
            s0, speed = frames[0].stamp_ns, self.speed
            bar = tqdm(total=len(frames), desc=f"{seq.name}: realtime x{speed:g}", unit="frame", leave=False,
                       disable=not self.progress)
            t0 = time.perf_counter()
            for frame in frames:
                wait = t0 + (frame.stamp_ns - s0) / 1e9 / speed - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if self.prompt != "instruction" and prompted is None and _is_prompt_frame(frame):
                    engine.set_prompt(ground_truth_prompt(frame, self.prompt))  # next processed frame
                    prompted = frame.index
                with lock:
                    shown.append(state["latest"])
                    arrivals.append(time.perf_counter() - t0)
                engine.push(frame.image, frame.stamp_ns, frame.frame_id)
                bar.update()
            bar.close()
            stream_s = time.perf_counter() - t0
            deadline = time.perf_counter() + self.drain_timeout_s
            while time.perf_counter() < deadline:
                with lock:
                    done = state["delivered"] + engine.stats.dropped >= engine.stats.pushed
                if done and not engine.query_running:
                    break
                time.sleep(0.01)
        finally:
            engine.close(self.drain_timeout_s)
        self.info = {
            "prompt_frame": prompted, "speed": speed, "stream_s": round(stream_s, 4),
            "time_to_first_result_s": state["first_result"], "time_to_first_mask_s": state["first_mask"],
            "pushed": engine.stats.pushed, "processed": engine.stats.processed, "dropped": engine.stats.dropped,
            "errors": engine.stats.errors, **self._query_info(reports, by_stamp),
        }
        for frame, result, arrival in zip(frames, shown, arrivals):
            own = results.get(frame.index)
            latency = own.latency_s if own is not None else None
            if result is None:
                yield Prediction(frame, np.zeros(frame.image.shape[:2], bool), None, NO_RESULT, latency,
                                 own is not None, None, arrival)
            else:
                yield Prediction(frame, _resize_mask(result.mask, frame.image.shape[:2]), result.object_score,
                                 result.status, latency, own is not None, by_stamp.get(result.stamp_ns), arrival)


class OfflinePredictor(_ModelPredictor):
    """``offline`` mode: VRS-HQ's bidirectional protocol over the whole video (module docstring).

    ``latency_ms`` of a frame is its compute (encode + propagation step), not a latency; the
    grounding query's time is in ``info``.
    """

    def __call__(self, seq: ReplaySequence) -> Iterator[Prediction]:
        from vrs_node.core.engine import STATUS_TARGET_ABSENT, STATUS_TRACKING
        from vrs_node.core.frames import FrameWindow
        from vrs_node.core.frames import SAM2_KEY
        from vrs_node.core.propagation import propagation_steps
        from vrs_node.core.tracker import TokenPrompt

        tracker = self.models.tracker
        frames = list(tqdm(seq.frames(), total=seq.count, desc=f"{seq.name}: loading", unit="frame",
                           leave=False, disable=not self.progress))
        if not frames:
            return
        window = FrameWindow(len(frames))
        compute = [0.0] * len(frames)
        for frame in tqdm(frames, desc=f"{seq.name}: encoding", unit="frame", leave=False, disable=not self.progress):
            start = time.perf_counter()
            held = window.append(frame.image, frame.stamp_ns, frame.frame_id)
            window.set_feature(held.index, SAM2_KEY, tracker.encode(frame.image))
            compute[frame.index] = time.perf_counter() - start
        feats = [window.get_feature(i, SAM2_KEY) for i in range(len(frames))]  # fresh window: index = position
        info: dict = {"window_frames": len(frames)}
        if self.prompt == "instruction":
            start = time.perf_counter()
            grounding = self.models.grounder.ground(window, clean_instruction(self._instruction(seq)))
            info.update(queries=1, query_latency_ms=[round((time.perf_counter() - start) * 1e3, 2)],
                        keyframes=[grounding.keyframe], anchor=grounding.anchor,
                        dense_frames=grounding.dense_frames, keyframe_object_score=grounding.object_score)
            key, prompt = grounding.keyframe, TokenPrompt(grounding.token)  # TAK', as VRS-HQ conditions
        else:
            key = next((f.index for f in frames if _is_prompt_frame(f)), None)
            if key is None:
                raise ReplayError(f"{seq.name}: --prompt {self.prompt} needs a non-empty ground-truth mask; "
                                  "the sequence has none")
            prompt = ground_truth_prompt(frames[key], self.prompt)
        info["prompt_frame"] = key
        results: list = [None] * len(frames)
        bar = tqdm(total=len(frames), desc=f"{seq.name}: propagating", unit="frame", leave=False,
                   disable=not self.progress)
        steps = propagation_steps(tracker, feats, key, prompt)  # forward, reset, backward
        while True:
            start = time.perf_counter()
            step = next(steps, None)
            if step is None:
                break
            t, result = step
            if results[t] is None:  # the keyframe's second conditioning (backward pass) is not kept
                results[t] = result
                compute[t] += time.perf_counter() - start
                bar.update()
        bar.close()
        self.info = info
        threshold = self.config.score_threshold
        for frame, result, seconds in zip(frames, results, compute):
            score = result.object_score
            present = score > threshold
            mask = result.mask() if present else np.zeros(frame.image.shape[:2], bool)
            status = "keyframe" if frame.index == key else (STATUS_TRACKING if present else STATUS_TARGET_ABSENT)
            yield Prediction(frame, mask, score, status, seconds)


PREDICTORS = {"stream": StreamPredictor, "realtime": RealtimePredictor, "offline": OfflinePredictor}


# --- writing and scoring -------------------------------------------------------------------------


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
    shown = overlay_mask(image, _resize_mask(mask, image.shape[:2])) if mask.any() else image.copy()
    if gt is not None and gt.any():
        contours, _ = cv2.findContours(_resize_mask(gt, image.shape[:2]).view(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(shown, contours, -1, (0, 255, 0), max(1, round(max(image.shape[:2]) / 400)))
    return shown


def even_size(image: np.ndarray) -> np.ndarray:
    """``image`` with its last column and/or row repeated to an even width and height (MPEG-4 video
    needs even sizes; OpenCV's writer would drop an odd last column or row)."""
    height, width = image.shape[:2]
    return cv2.copyMakeBorder(image, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)


def _prepare_dir(path: Path) -> None:
    """Create ``path``; an earlier vrs-replay output there (it has frames.csv) is replaced, anything
    else is refused."""
    if path.exists() and any(path.iterdir()):
        if not (path / "frames.csv").is_file():
            raise ReplayError(f"{path} exists and is not a vrs-replay output folder; choose another --out")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def _stats(values: Sequence[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "max": None}
    array = np.asarray(values, dtype=float)
    return {"count": int(array.size), "mean": round(float(array.mean()), 3), "p50": round(float(np.percentile(array, 50)), 3),
            "p95": round(float(np.percentile(array, 95)), 3), "max": round(float(array.max()), 3)}


def run_sequence(seq: ReplaySequence, predictor: Predictor, out_dir: Path | str, *,
                 image_topic: str = bagio.IMAGE_TOPIC, mask_topic: str = PREDICTED_MASK_TOPIC,
                 gt_topic: str | None = bagio.GROUND_TRUTH_MASK_TOPIC, bag_storage: str = "mcap",
                 bag_images: str = "raw", bound_th: float = BOUND_TH, progress: bool = True) -> tuple[dict, list[dict]]:
    """Replay one sequence through ``predictor``; write and score its output.

    Every frame gets: its mask PNG (0/255, at the ground-truth resolution ``seq.gt_hw``, else camera
    resolution), its messages in :data:`BAG_DIR` (topics: see the module docstring), an
    ``overlay.mp4`` frame (padded to even sizes by :func:`even_size`) and a ``frames.csv`` row; a
    frame with ground truth is scored (J, F per frame, :mod:`vrs_node.eval.metrics`). Returns
    (sequence summary, per-frame rows). RuntimeError if the predictor does not yield exactly one
    prediction per frame, in order.
    """
    out_dir = Path(out_dir)
    _prepare_dir(out_dir)
    rows: list[dict] = []
    video = None
    has_gt = seq.gt_hw is not None
    bag_out = _MaskBag(out_dir / BAG_DIR, image_topic, mask_topic, gt_topic if has_gt else None,
                       bag_storage, bag_images)
    try:
        bar = tqdm(total=seq.count, desc=seq.name, unit="frame", leave=False, disable=not progress)
        for expected, pred in enumerate(predictor(seq)):
            frame = pred.frame
            if frame.index != expected:
                raise RuntimeError(f"{seq.name}: the predictor answered frame {frame.index}, expected {expected}")
            mask = np.asarray(pred.mask, dtype=bool)
            if mask.shape != frame.image.shape[:2]:
                raise RuntimeError(f"{seq.name}: mask {mask.shape} for frame {frame.name} of {frame.image.shape[:2]}")
            hw = frame.gt.shape if frame.gt is not None else (seq.gt_hw or mask.shape)
            saved = _resize_mask(mask, hw)
            PILImage.fromarray(saved.view(np.uint8) * np.uint8(255)).save(out_dir / f"{frame.name}.png")
            bag_out.write(frame, mask)
            shown = even_size(overlay_frame(frame.image, mask, frame.gt))
            if video is None:
                size = (shown.shape[1], shown.shape[0])
                video = cv2.VideoWriter(str(out_dir / "overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), seq.fps, size)
            if (shown.shape[1], shown.shape[0]) != size:
                shown = cv2.resize(shown, size, interpolation=cv2.INTER_AREA)
            video.write(cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))
            j = f = None
            if frame.gt is not None:
                j = float(region_similarity(saved, frame.gt))
                f = float(boundary_measure(saved, frame.gt, bound_th=bound_th))
            rows.append({
                "frame": frame.name, "stamp_ns": frame.stamp_ns, "J": j, "F": f, "object_score": pred.object_score,
                "status": pred.status, "latency_ms": None if pred.latency_s is None else pred.latency_s * 1e3,
                "index": frame.index, "has_gt": frame.gt is not None, "mask_pixels": int(saved.sum()),
                "processed": pred.processed, "mask_from_frame": pred.source, "arrival_s": pred.arrival_s,
            })
            bar.update()
        bar.close()
    finally:
        bag_out.close()
        if video is not None:
            video.release()
    if len(rows) != seq.count:
        raise RuntimeError(f"{seq.name}: the predictor answered {len(rows)} of {seq.count} frames")
    _write_csv(out_dir / "frames.csv", rows)
    summary = _sequence_summary(seq, rows, getattr(predictor, "info", {}) or {}, out_dir)
    summary["bag"] = {"path": str((out_dir / BAG_DIR).resolve()), "topics": bag_out.topics}
    return summary, rows


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


def _sequence_summary(seq: ReplaySequence, rows: list[dict], info: dict, out_dir: Path) -> dict:
    scored = [r for r in rows if r["J"] is not None]
    first_mask = next((r["index"] for r in rows if r["mask_pixels"]), None)
    summary = {
        "video": seq.video, "expression_id": seq.expression_id, "subset": seq.subset,
        "instruction": seq.instruction, "frames": len(rows), "scored_frames": len(scored),
        "J": None, "F": None, "J&F": None,
        "empty_frames": sum(1 for r in rows if not r["mask_pixels"]),
        "first_mask_frame": first_mask,
        "first_mask_stamp_s": None if first_mask is None else (rows[first_mask]["stamp_ns"] - rows[0]["stamp_ns"]) / 1e9,
        "latency_ms": _stats([r["latency_ms"] for r in rows]),
        "statuses": {s: sum(1 for r in rows if r["status"] == s) for s in dict.fromkeys(r["status"] for r in rows)},
        "out_dir": str(out_dir.resolve()),
    }
    if scored:
        j = [r["J"] for r in scored]
        f = [r["F"] for r in scored]
        j_mean, j_recall, j_decay = davis_statistics(j)
        f_mean, f_recall, f_decay = davis_statistics(f)
        summary.update({"J": j_mean, "F": f_mean, "J&F": (j_mean + f_mean) / 2, "J-Recall": j_recall,
                        "J-Decay": j_decay, "F-Recall": f_recall, "F-Decay": f_decay})
    summary.update(info)
    return summary


# --- the command ---------------------------------------------------------------------------------


def _protocol(mode: str, prompt: str) -> dict:
    empty = ("a frame whose prediction is empty is scored like any other (J = F = 0 against a non-empty "
             "ground truth, 1 against an empty one); frames before the first mask (no prompt yet, grounding "
             "in progress, realtime: no result yet) are emitted as EMPTY masks and scored, never dropped "
             "or counted as missing")
    realtime = ("realtime: frame i is scored with the latest mask the engine had published when frame i "
                "arrived (wall clock = stamp differences / speed); the frame's own result is never ready at "
                "its own arrival, so latency costs accuracy; frames dropped by the engine still get that mask")
    return {
        "frames_scored": "ALL frames that have a ground-truth mask, including the first and the last (streaming "
                         "evaluation; DAVIS semi-supervised and SA-V would drop both)" + (
                             "; with a ground-truth prompt the prompt frame is scored too (its mask comes from "
                             "the ground truth)" if prompt != "instruction" else ""),
        "empty_frames": empty,
        "per_frame": "J (region similarity) and F (boundary F-measure, tolerance ceil(0.008 x image diagonal) px) "
                     "as davis2017-evaluation's metrics.py (vrs_node.eval.metrics), at ground-truth resolution, "
                     "any non-zero pixel = object, no void",
        "sequence": "J, F = mean over the scored frames, J&F = (J + F) / 2; Recall = mean(v > 0.5), Decay = first "
                    "quarter - last quarter (DAVIS statistics, int64 indices)",
        "overall": "J, F = mean over sequences (each sequence or expression weighs the same: the ReVOS/MeViS "
                   "per-expression protocol), J&F = (J + F) / 2; sequences without ground truth are not scored",
        "davis_table": "davis_summary over one row per sequence, of ALL scored frames (not the official DAVIS "
                       "semi-supervised first/last frame drop)",
        "mode": {"stream": "causal, engine in sync mode, every frame processed (reproducible)",
                 "realtime": realtime,
                 "offline": "VRS-HQ reference: whole video as the window, one grounding (lattice <= 11 frames), "
                            "bidirectional propagation from the keyframe (backward pass without forward memory); "
                            "NOT causal"}[mode],
        "prompt": {"instruction": "language instruction (the expression text); the MLLM grounds it",
                   "gt-box": "box of the first non-empty ground-truth mask, on its frame (tracking-only check)",
                   "gt-mask": "the first non-empty ground-truth mask, on its frame (tracking-only check)"}[prompt],
    }


def _nan_to_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _overall(sequences: dict[str, dict]) -> dict:
    scored = {name: s for name, s in sequences.items() if s["J"] is not None}
    overall = {"sequences": len(sequences), "scored_sequences": len(scored),
               "frames": sum(s["frames"] for s in sequences.values()),
               "scored_frames": sum(s["scored_frames"] for s in sequences.values()), "J": None, "F": None, "J&F": None}
    if scored:
        mean = summarize_expressions(JF(s["J"], s["F"]) for s in scored.values()).strict
        overall.update({"J": mean.j, "F": mean.f, "J&F": mean.jf})
    return overall


def _by_subset(sequences: dict[str, dict]) -> dict | None:
    subsets = sorted({s["subset"] for s in sequences.values() if s["subset"] and s["J"] is not None})
    if not subsets:
        return None
    table = {}
    for subset in subsets:
        mean = summarize_expressions(JF(s["J"], s["F"]) for s in sequences.values()
                                     if s["subset"] == subset and s["J"] is not None)
        table[subset] = {"J": mean.strict.j, "F": mean.strict.f, "J&F": mean.strict.jf, "count": mean.count}
    if {"referring", "reasoning"} <= set(table):  # ReVOS: unweighted mean of the two subsets
        ref, reason = table["referring"], table["reasoning"]
        j, f = (ref["J"] + reason["J"]) / 2, (ref["F"] + reason["F"]) / 2
        table["revos_overall"] = {"J": j, "F": f, "J&F": (j + f) / 2}
    return table


def parse_args(argv=None) -> argparse.Namespace:
    """Arguments of ``vrs-replay``."""
    parser = argparse.ArgumentParser(
        prog="vrs-replay", description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog=f"Outputs, per sequence in <out>/<sequence>/ (a bag's name without .bag/.mcap/.db3): one mask PNG "
               f"per frame, frames.csv, overlay.mp4 and {BAG_DIR}/, a rosbag2 folder with the predicted masks on "
               f"--mask-topic, the frames on the input image topic (Image; with --bag-images jpeg CompressedImage "
               f"on <topic>/compressed) and the ground truth on its topic; then <out>/summary.json and <out>/plots/.")
    source = parser.add_argument_group("input (--bag or --dataset)")
    source.add_argument("--bag", type=Path, help="rosbag2 folder or .mcap/.db3 file")
    source.add_argument("--image-topic", default=bagio.IMAGE_TOPIC, help="image topic of --bag (default %(default)s)")
    source.add_argument("--gt-topic", help="ground-truth mask topic of --bag (mono8 0/255, stamps as the frames)")
    source.add_argument("--dataset", type=Path, help="DAVIS-like folder with meta_expressions.json")
    source.add_argument("--sequences", help="comma-separated dataset sequences (default: all)")
    source.add_argument("--expression", default="first",
                        help="dataset expressions: first (default), all, or an expression id")
    source.add_argument("--rate", type=float, default=30.0, help="frame rate of the dataset's stamps in Hz (default 30)")
    source.add_argument("--limit", type=int, default=0, help="only the first N frames of each sequence (0 = all)")
    parser.add_argument("--prompt", choices=PROMPTS, default="instruction", help="what tells the target (default instruction)")
    parser.add_argument("--instruction", help="the instruction for --bag with --prompt instruction")
    parser.add_argument("--mode", choices=REPLAY_MODES, default="stream", help="stream (default), realtime or offline")
    parser.add_argument("--speed", type=float, default=1.0, help="realtime: replay speed factor (2 = twice as fast)")
    model = parser.add_argument_group("model and engine")
    model.add_argument("--profile", default="tiny-random", help="model profile (default %(default)s)")
    model.add_argument("--image-size", type=int, default=0, help="SAM-2 input size (0 = the profile's)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    model.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="bf16 = SAM-2 under autocast and MLLM bf16 weights (auto: bf16 on CUDA, else fp32)")
    model.add_argument("--compile", action="store_true", help="torch.compile SAM-2's parts (for CUDA)")
    model.add_argument("--reasoner-quantization", choices=("none", "int8", "nf4"), default="none",
                       help="MLLM's LLaMA quantized with bitsandbytes (default none)")
    model.add_argument("--sam2-checkpoint", default="", help="SAM-2 .pt for the sam2.1-hiera-* profiles")
    model.add_argument("--vrshq-checkpoint", default="", help="released VRS-HQ folder for the vrshq-7b profile")
    model.add_argument("--clip-anchor", default="openai", help="CLIP-336 anchor weights for vrshq-7b")
    model.add_argument("--window-frames", type=int, default=16, help="engine window (stream/realtime)")
    model.add_argument("--period-s", type=float, default=10.0, help="re-ground every N s of stamp time (0 = never)")
    model.add_argument("--lost-after-frames", type=int, default=15, help="re-ground after N frames lost (0 = never)")
    model.add_argument("--score-threshold", type=float, default=0.0, help="object-score logit for 'absent'")
    model.add_argument("--max-cond-frames", type=int, default=4, help="conditioning frames kept in memory")
    model.add_argument("--max-catchup-frames", type=int, default=16, help="frames tracked when catching up")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, default=Path("out/replay"), help="output folder (default %(default)s)")
    output.add_argument("--mask-topic", default=PREDICTED_MASK_TOPIC,
                        help=f"topic of the predicted masks in <out>/<sequence>/{BAG_DIR}/, a rosbag2 folder "
                             "(default %(default)s, as vrs-node publishes them under launch/vrs.launch.py)")
    output.add_argument("--bag-storage", choices=tuple(bagio.STORAGES), default="mcap")
    output.add_argument("--bag-images", choices=("raw", "jpeg"), default="raw",
                        help=f"frames in {BAG_DIR} as Image rgb8 (raw) on the input topic, or CompressedImage "
                             "jpeg on <input topic>/compressed")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if (args.bag is None) == (args.dataset is None):
        parser.error("give exactly one input: --bag PATH or --dataset DIR")
    if args.bag is not None and (args.sequences or args.expression != "first"):
        parser.error("--sequences and --expression are for --dataset")
    if args.dataset is not None and (args.gt_topic or args.instruction):
        parser.error("--gt-topic and --instruction are for --bag (a dataset brings its ground truth and expressions)")
    if args.prompt != "instruction" and args.instruction:
        parser.error(f"--instruction conflicts with --prompt {args.prompt}")
    if args.limit < 0 or args.rate <= 0 or args.speed <= 0:
        parser.error("--limit must be >= 0, --rate and --speed > 0")
    return args


def _sequences(args) -> list[ReplaySequence]:
    if args.bag is not None:
        if args.prompt == "instruction" and not args.instruction:
            raise ReplayError("--prompt instruction with --bag needs --instruction TEXT (or use --prompt gt-box/gt-mask "
                              "with --gt-topic)")
        if args.prompt != "instruction" and not args.gt_topic:
            raise ReplayError(f"--prompt {args.prompt} takes the prompt from the ground truth: pass --gt-topic")
        seqs = [bag_sequence(args.bag, args.image_topic, args.gt_topic, args.limit, args.instruction)]
    else:
        names = [s.strip() for s in (args.sequences or "").split(",") if s.strip()]
        seqs = dataset_sequences(args.dataset, names or None, args.expression, args.limit, args.rate)
    for seq in seqs:
        if args.prompt == "instruction":
            try:  # refuse an empty or too long text before loading models
                clean_instruction(seq.instruction or "")
            except ValueError as error:
                raise ReplayError(f"{seq.name}: {error}") from None
        elif seq.gt_hw is None:
            raise ReplayError(f"{seq.name}: --prompt {args.prompt} needs ground truth; the sequence has none")
    return seqs


def replay(args: argparse.Namespace, predictor: Predictor | None = None) -> dict:
    """Run the parsed command: load sequences (and models unless ``predictor`` is given), replay,
    score, write ``summary.json`` and the plots; returns the summary."""
    sequences = _sequences(args)
    meta = {"profile": args.profile, "random_weights": None, "device": args.device, "image_size": args.image_size or None}
    if predictor is None:
        from vrs_node.core.config import PipelineConfig

        try:  # refuse bad engine settings before loading models
            config = PipelineConfig(window_frames=args.window_frames, max_catchup_frames=args.max_catchup_frames,
                                  score_threshold=args.score_threshold, period_s=args.period_s,
                                  lost_after_frames=args.lost_after_frames)
        except ValueError as error:
            raise ReplayError(str(error)) from None
        models = load_replay_models(args.profile, args.device, args.image_size, args.sam2_checkpoint,
                                    args.vrshq_checkpoint, args.clip_anchor, args.max_cond_frames,
                                    args.precision, args.compile, args.reasoner_quantization)
        predictor = PREDICTORS[args.mode](models, args.prompt, config, speed=args.speed, progress=not args.quiet)
        meta.update(profile=models.profile, random_weights=models.random_weights, device=models.device,
                    image_size=models.image_size, precision=models.precision)
    else:
        meta.update(profile=getattr(predictor, "name", getattr(predictor, "__name__", type(predictor).__name__)))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    gt_topic = args.gt_topic or bagio.GROUND_TRUTH_MASK_TOPIC
    results, per_frame = {}, {}
    for seq in tqdm(sequences, desc="sequences", unit="seq", disable=args.quiet or len(sequences) < 2):
        if args.prompt == "instruction" and not seq.instruction:
            raise ReplayError(f"{seq.name}: no instruction")
        summary, rows = run_sequence(seq, predictor, out / seq.name, image_topic=args.image_topic,
                                     mask_topic=args.mask_topic, gt_topic=gt_topic, bag_storage=args.bag_storage,
                                     bag_images=args.bag_images, progress=not args.quiet)
        results[seq.name], per_frame[seq.name] = summary, rows
    scored = [s for s in results.values() if s["J"] is not None]
    davis = None
    if scored:
        j_rows = [[r["J"] for r in per_frame[n] if r["J"] is not None] for n, s in results.items() if s["J"] is not None]
        f_rows = [[r["F"] for r in per_frame[n] if r["F"] is not None] for n, s in results.items() if s["J"] is not None]
        davis = davis_summary(j_rows, f_rows)
    summary = {
        "tool": "vrs-replay",
        "input": ({"kind": "bag", "path": str(args.bag.resolve()), "image_topic": args.image_topic,
                   "gt_topic": args.gt_topic} if args.bag is not None else
                  {"kind": "dataset", "path": str(args.dataset.resolve()), "sequences": args.sequences,
                   "expression": args.expression, "stamp_rate_hz": args.rate}),
        "mode": args.mode, "prompt": args.prompt, **meta,
        "warning": RANDOM_WARNING if meta["random_weights"] else (
            "predictions from a custom predictor, not the models" if meta["random_weights"] is None else None),
        "protocol": _protocol(args.mode, args.prompt),
        "settings": {"limit": args.limit, "window_frames": "whole video" if args.mode == "offline" else args.window_frames,
                     "period_s": args.period_s, "lost_after_frames": args.lost_after_frames,
                     "score_threshold": args.score_threshold, "max_cond_frames": args.max_cond_frames,
                     "max_catchup_frames": args.max_catchup_frames, "speed": args.speed if args.mode == "realtime" else None,
                     "bound_th": BOUND_TH, "mask_topic": args.mask_topic},
        "overall": _overall(results),
        "by_subset": _by_subset(results),
        "davis_all_frames": davis,
        "sequences": results,
    }
    if args.mode == "realtime":
        ttfm = [s.get("time_to_first_mask_s") for s in results.values()]
        summary["overall"]["time_to_first_mask_s"] = _stats(ttfm)
        summary["overall"]["dropped"] = sum(s.get("dropped", 0) or 0 for s in results.values())
    note = f"{args.mode}, {args.prompt} prompt, {meta['profile']}" + (" (random weights)" if meta["random_weights"] else "")
    plots = write_plots(out / "plots", per_frame,
                        {n: s.get("time_to_first_mask_s") for n, s in results.items()} if args.mode == "realtime" else None,
                        note)
    summary_path = out / "summary.json"
    summary["files"] = {"summary": str(summary_path.resolve()), "plots": plots}
    summary = _nan_to_none(summary)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(argv=None, predictor: Predictor | None = None) -> dict:
    """Run ``vrs-replay``; returns (and prints) the summary. Bad input ends with SystemExit and a
    one-line message (no traceback). ``predictor`` replaces the models (tests, custom methods)."""
    args = parse_args(argv)
    try:
        summary = replay(args, predictor)
    except (ReplayError, BagError) as error:
        raise SystemExit(f"vrs-replay: error: {error}") from None
    print(format_report(summary))
    return summary


def main(argv=None) -> int:
    """Console entry point ``vrs-replay``."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
