"""The models' predictors of ``vrs-replay`` (:data:`~vrs_node.eval.sequences.Predictor`), one per
``--mode``, over :class:`~vrs_node.models.profiles.LoadedModels` loaded once for every sequence:

- :class:`StreamPredictor` (``stream``): the engine in ``sync`` mode: causal, every frame
  processed, reproducible; :class:`GroupStreamPredictor`, its ``--all-expressions`` form, follows
  several expressions of a video in one pass (:mod:`vrs_node.eval.groups`);
- :class:`RealtimePredictor` (``realtime``): frames pushed at their stamp spacing (divided by
  ``speed``) into the engine in ``live`` mode; a frame's mask is the latest mask the engine had
  published when that frame arrived (the frame's own result can never be ready at its own
  arrival); frames before the first result get an EMPTY mask (status :data:`NO_RESULT`), scored,
  never missing. Per-frame latency (push to result, processed frames only) and the time to the
  first non-empty mask are recorded;
- :class:`OfflinePredictor` (``offline``): VRS-HQ's reference protocol over the whole video
  (:mod:`vrs_node.core.offline`); a ground-truth prompt is the keyframe instead of the query's
  (frame 0 on DAVIS, so only the forward pass runs).

Each builds its engine per sequence with :func:`~vrs_node.core.pipeline.build_pipeline` from the
``PipelineConfig`` (whose ``mode`` the predictor sets). A ground-truth prompt (``gt-box``,
``gt-mask``) is given on the first frame with a non-empty ground truth. ``info`` describes the last
sequence (prompt frame, queries, keyframes, engine counts), for its summary.

Imports torch: ``vrs-replay`` imports this module only once it loads models.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
from tqdm import tqdm

from vrs_node.core.config import PipelineConfig
from vrs_node.core.engine import StreamingEngine
from vrs_node.core.offline import OfflineVideo
from vrs_node.core.pipeline import build_pipeline
from vrs_node.core.prompts import MaskPrompt, PointsPrompt, Prompt, TokenPrompt
from vrs_node.core.queries import QueryReport
from vrs_node.core.results import STATUS_TARGET_ABSENT, STATUS_TRACKING, FrameResult
from vrs_node.core.target_specs import TargetSpec
from vrs_node.eval.sequences import PROMPTS, InputFrame, Prediction, ReplayError, ReplaySequence, resize_mask
from vrs_node.models.profiles import LoadedModels
from vrs_node.models.prompt import clean_instruction

NO_RESULT = "no_result"
"""Status of a realtime frame that arrived before the engine had published any result."""


def ground_truth_prompt(frame: InputFrame, kind: str) -> Prompt:
    """The ``gt-mask`` (MaskPrompt of the GT at camera size) or ``gt-box`` (tight box of it, in
    camera pixels) prompt from a frame with a non-empty ground truth."""
    mask = resize_mask(frame.gt, frame.image.shape[:2])
    if kind == "gt-mask":
        return MaskPrompt(mask)
    ys, xs = np.nonzero(mask)
    return PointsPrompt(box=(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))


class _ModelPredictor:
    """Shared set-up of the three model-driven predictors. ``info`` describes the last sequence."""

    def __init__(self, models: LoadedModels, prompt: str, config: PipelineConfig = PipelineConfig(),
                 speed: float = 1.0, progress: bool = True):
        """``config``: the engine settings (its ``mode`` is set by each predictor); ``speed``:
        the realtime replay speed factor. ReplayError for an unknown prompt, or an instruction
        prompt with models that have no language model."""
        if prompt not in PROMPTS:
            raise ReplayError(f"prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
        if prompt == "instruction" and models.grounding is None:
            raise ReplayError("the model profile has no language model: it cannot follow instructions; use "
                              "--prompt gt-box or gt-mask, or a profile with language (tiny-random, vrshq-7b)")
        self.models, self.prompt, self.progress = models, prompt, progress
        self.config, self.speed = config, speed
        self.info: dict = {}

    def _engine(self, mode: str, on_result: Callable[[FrameResult], None] | None = None,
                on_query: Callable[[QueryReport], None] | None = None) -> StreamingEngine:
        """A fresh engine (tracker, grounder) over the models, in ``mode``."""
        return build_pipeline(self.models, dataclasses.replace(self.config, mode=mode), on_result, on_query)

    def _instruction(self, seq: ReplaySequence) -> str:
        if not seq.instruction:
            raise ReplayError(f"{seq.name}: --prompt instruction needs an instruction (--instruction TEXT for a bag)")
        return seq.instruction

    def _load(self, seq: ReplaySequence) -> list[InputFrame]:
        """Every frame of ``seq``, decoded."""
        return list(tqdm(seq.frames(), total=seq.count, desc=f"{seq.name}: loading", unit="frame",
                         leave=False, disable=not self.progress))

    def _query_info(self, reports: list[QueryReport], by_stamp: dict[int, int]) -> dict:
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
        reports: list[QueryReport] = []
        engine = self._engine("sync", on_query=reports.append)
        prompted = None
        if self.prompt == "instruction":
            engine.set_instruction(self._instruction(seq))
        self.info, by_stamp = {}, {}
        for frame in seq.frames():
            by_stamp[frame.stamp_ns] = frame.index
            if self.prompt != "instruction" and prompted is None and frame.shows_target:
                engine.set_prompt(ground_truth_prompt(frame, self.prompt))
                prompted = frame.index
            r = engine.push(frame.image, frame.stamp_ns, frame.frame_id)
            yield Prediction(frame, r.mask, r.object_score, r.status, r.latency_s)
        self.info = {"prompt_frame": prompted, "processed": engine.stats.processed, "errors": engine.stats.errors,
                     **self._query_info(reports, by_stamp)}


class GroupStreamPredictor(_ModelPredictor):
    """``stream`` mode over several expressions of one video in ONE engine pass (``vrs-replay
    --all-expressions``; a :data:`~vrs_node.eval.groups.GroupPredictor`): the engine in sync mode
    follows each sequence's instruction as a target (``set_targets``; at most ``max_targets``), one
    push per frame. Each sequence's prediction is its target's own mask, before overlaps are
    resolved (:func:`own_prediction`): what a one-target :class:`StreamPredictor` run would give, up
    to batched tracking's float rounding. ``info``: sequence name -> its info (queries of its
    target, the engine's counts)."""

    def __call__(self, group: list[ReplaySequence]) -> Iterator[dict[str, Prediction]]:
        if self.prompt != "instruction":
            raise ReplayError("several expressions in one pass follow their instructions: --prompt instruction only")
        reports: list[QueryReport] = []
        engine = self._engine("sync", on_query=reports.append)
        ids = engine.set_targets([(None, TargetSpec(instruction=self._instruction(seq))) for seq in group])
        self.info, by_stamp = {}, {}
        for frames in zip(*(seq.frames() for seq in group), strict=True):
            first = frames[0]
            if any(f.stamp_ns != first.stamp_ns or f.image.shape != first.image.shape for f in frames):
                raise RuntimeError(f"{group[0].video}: the sequences of a group disagree on frame {first.index}")
            by_stamp[first.stamp_ns] = first.index
            result = engine.push(first.image, first.stamp_ns, first.frame_id)
            yield {seq.name: own_prediction(frame, result, target_id, self.config.score_threshold)
                   for seq, frame, target_id in zip(group, frames, ids)}
        counts = {"prompt_frame": None, "processed": engine.stats.processed, "errors": engine.stats.errors}
        self.info = {seq.name: {**counts, **self._query_info([r for r in reports if r.target_id == target_id], by_stamp)}
                     for seq, target_id in zip(group, ids)}


def own_prediction(frame: InputFrame, result: FrameResult, target_id: int, threshold: float) -> Prediction:
    """Target ``target_id``'s own prediction in ``result`` (several targets): its mask
    (``tracks[id].mask()`` when its object score is above ``threshold``, else empty), object score
    and status, and the frame's latency; a frame-wide error (no target reported) is that error
    with an empty mask, as a one-target engine reports it."""
    report = next((t for t in result.targets if t.id == target_id), None)
    if report is None:
        return Prediction(frame, np.zeros(result.mask.shape, bool), None, result.status, result.latency_s)
    track = result.tracks.get(target_id)
    present = track is not None and track.object_score > threshold
    mask = track.mask() if present else np.zeros(result.mask.shape, bool)
    return Prediction(frame, mask, report.object_score, report.status, result.latency_s)


class _Deliveries:
    """What a live engine has delivered, kept and timed under one lock (a frame timed after a
    delivery sees its result): the latest result, each frame's own result (by position, found by
    stamp), and the seconds from ``t0`` to the first result and to the first non-empty mask."""

    def __init__(self, by_stamp: dict[int, int]):
        self.lock = threading.Lock()
        self.by_stamp = by_stamp
        self.t0 = 0.0
        self.latest: FrameResult | None = None
        self.own: dict[int, FrameResult] = {}
        self.count = 0
        self.first_result_s: float | None = None
        self.first_mask_s: float | None = None

    def deliver(self, result: FrameResult) -> None:
        """The engine's ``on_result``."""
        with self.lock:
            now = time.perf_counter()
            self.latest = result
            self.count += 1
            self.own[self.by_stamp.get(result.stamp_ns, -1)] = result
            if self.first_result_s is None:
                self.first_result_s = now - self.t0
            if self.first_mask_s is None and result.mask.any():
                self.first_mask_s = now - self.t0

    def arrival(self) -> tuple[FrameResult | None, float]:
        """(the latest result, seconds since ``t0``) as a frame arrives."""
        with self.lock:
            return self.latest, time.perf_counter() - self.t0


class RealtimePredictor(_ModelPredictor):
    """``realtime`` mode: frames paced by their stamps (``/ speed``), the engine in live mode.

    The frames are decoded before the clock starts (a camera does not decode). A frame's mask is the
    latest result delivered before the frame is pushed; ``time_to_first_mask_s`` is the wall time
    from the first frame's push to the delivery of the first non-empty mask. After the last frame the
    engine finishes its work (for the latency record) before it is closed.
    """

    drain_timeout_s = 120.0

    def __call__(self, seq: ReplaySequence) -> Iterator[Prediction]:
        frames = self._load(seq)
        if not frames:
            return
        deliveries = _Deliveries({f.stamp_ns: f.index for f in frames})
        reports: list[QueryReport] = []
        engine = self._engine("live", deliveries.deliver, reports.append)
        try:
            shown, prompted, stream_s = self._play(engine, seq, frames, deliveries)
            self._drain(engine, deliveries)
        finally:
            engine.close(self.drain_timeout_s)
        self.info = {
            "prompt_frame": prompted, "speed": self.speed, "stream_s": round(stream_s, 4),
            "time_to_first_result_s": deliveries.first_result_s, "time_to_first_mask_s": deliveries.first_mask_s,
            "pushed": engine.stats.pushed, "processed": engine.stats.processed, "dropped": engine.stats.dropped,
            "errors": engine.stats.errors, **self._query_info(reports, deliveries.by_stamp),
        }
        for frame, (result, arrival) in zip(frames, shown):
            yield self._prediction(frame, result, arrival, deliveries)

    def _play(self, engine: StreamingEngine, seq: ReplaySequence, frames: list[InputFrame],
              deliveries: _Deliveries) -> tuple[list[tuple[FrameResult | None, float]], int | None, float]:
        """Push every frame at its time; returns (the latest result and the arrival time of each
        frame, the ground-truth prompt's frame, the seconds the stream took)."""
        if self.prompt == "instruction":
            engine.set_instruction(self._instruction(seq))
        s0, shown, prompted = frames[0].stamp_ns, [], None
        bar = tqdm(total=len(frames), desc=f"{seq.name}: realtime x{self.speed:g}", unit="frame", leave=False,
                   disable=not self.progress)
        deliveries.t0 = t0 = time.perf_counter()
        for frame in frames:
            wait = t0 + (frame.stamp_ns - s0) / 1e9 / self.speed - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if self.prompt != "instruction" and prompted is None and frame.shows_target:
                engine.set_prompt(ground_truth_prompt(frame, self.prompt))  # next processed frame
                prompted = frame.index
            shown.append(deliveries.arrival())
            engine.push(frame.image, frame.stamp_ns, frame.frame_id)
            bar.update()
        bar.close()
        return shown, prompted, time.perf_counter() - t0

    def _drain(self, engine: StreamingEngine, deliveries: _Deliveries) -> None:
        """Wait (at most :attr:`drain_timeout_s`) until every pushed frame is delivered or dropped
        and no query runs."""
        deadline = time.perf_counter() + self.drain_timeout_s
        while time.perf_counter() < deadline:
            with deliveries.lock:
                done = deliveries.count + engine.stats.dropped >= engine.stats.pushed
            if done and not engine.query_running:
                return
            time.sleep(0.01)

    @staticmethod
    def _prediction(frame: InputFrame, result: FrameResult | None, arrival: float,
                    deliveries: _Deliveries) -> Prediction:
        """``frame``'s prediction: ``result`` (the latest at its arrival) or, before any, an empty mask."""
        own = deliveries.own.get(frame.index)
        latency = own.latency_s if own is not None else None
        if result is None:
            return Prediction(frame, np.zeros(frame.image.shape[:2], bool), None, NO_RESULT, latency,
                              own is not None, None, arrival)
        return Prediction(frame, resize_mask(result.mask, frame.image.shape[:2]), result.object_score,
                          result.status, latency, own is not None, deliveries.by_stamp.get(result.stamp_ns), arrival)


class OfflinePredictor(_ModelPredictor):
    """``offline`` mode: VRS-HQ's bidirectional protocol over the whole video
    (:mod:`vrs_node.core.offline`) on the tracker and grounder :func:`build_pipeline` builds.

    ``latency_ms`` of a frame is its compute (encode + propagation step), not a latency; the
    grounding query's time is in ``info``. A frame is masked when its object score is above the
    config's ``score_threshold``; the keyframe's status is ``keyframe``.
    """

    def __call__(self, seq: ReplaySequence) -> Iterator[Prediction]:
        frames = self._load(seq)
        if not frames:
            return
        engine = self._engine("sync")  # the protocol runs on its tracker and grounder, not on the engine
        video = OfflineVideo(engine.tracker, len(frames))
        compute = []
        for frame in tqdm(frames, desc=f"{seq.name}: encoding", unit="frame", leave=False, disable=not self.progress):
            start = time.perf_counter()
            video.add(frame.image, frame.stamp_ns, frame.frame_id)
            compute.append(time.perf_counter() - start)
        info: dict = {"window_frames": len(frames)}
        key, prompt = self._keyframe(seq, frames, video, engine, info)
        info["prompt_frame"] = key
        results: list = [None] * len(frames)
        for t, result, seconds in tqdm(video.propagate(key, prompt), total=len(frames),
                                       desc=f"{seq.name}: propagating", unit="frame", leave=False,
                                       disable=not self.progress):
            results[t] = result
            compute[t] += seconds
        self.info = info
        threshold = self.config.score_threshold
        for frame, result, seconds in zip(frames, results, compute):
            score = result.object_score
            present = score > threshold
            mask = result.mask() if present else np.zeros(frame.image.shape[:2], bool)
            status = "keyframe" if frame.index == key else (STATUS_TRACKING if present else STATUS_TARGET_ABSENT)
            yield Prediction(frame, mask, score, status, seconds)

    def _keyframe(self, seq: ReplaySequence, frames: list[InputFrame], video: OfflineVideo,
                  engine: StreamingEngine, info: dict) -> tuple[int, Prompt]:
        """(keyframe, prompt): the grounding query's keyframe and TAK' (its answer added to
        ``info``), or the first frame with a non-empty ground truth and its ground-truth prompt."""
        if self.prompt == "instruction":
            start = time.perf_counter()
            grounding = video.ground(engine.grounder, clean_instruction(self._instruction(seq)))
            info.update(queries=1, query_latency_ms=[round((time.perf_counter() - start) * 1e3, 2)],
                        keyframes=[grounding.keyframe], anchor=grounding.anchor,
                        dense_frames=grounding.dense_frames, keyframe_object_score=grounding.object_score)
            return grounding.keyframe, TokenPrompt(grounding.token)  # TAK', as VRS-HQ conditions
        key = next((f.index for f in frames if f.shows_target), None)
        if key is None:
            raise ReplayError(f"{seq.name}: --prompt {self.prompt} needs a non-empty ground-truth mask; "
                              "the sequence has none")
        return key, ground_truth_prompt(frames[key], self.prompt)


PREDICTORS = {"stream": StreamPredictor, "realtime": RealtimePredictor, "offline": OfflinePredictor}
"""``vrs-replay --mode`` -> its predictor class (``--all-expressions``: :class:`GroupStreamPredictor`)."""
