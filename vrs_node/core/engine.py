"""StreamingEngine: camera frames in, one mask per processed frame out.

``push(image, stamp_ns)`` is the only per-frame call. Two modes share one code path:

- ``sync``: every pushed frame is processed before ``push`` returns its :class:`FrameResult`
  (deterministic; what replay evaluation uses);
- ``live``: ``push`` only hands the frame to a tracking thread and returns ``None``; the thread
  always takes the newest frame (older unprocessed ones are dropped and counted) and delivers
  each result to ``on_result``. The caller never waits for the model.

A prompt can be set at any time from any thread; it is applied on the next processed frame, or,
with ``frame_index``, on a past frame still in the window, after which the tracker catches up
through the buffered frames (every ``k``-th one when more than ``max_catchup_frames`` are
buffered) before processing the new frame. A prompt's stamp and its place in the image are
checked when it is set (:meth:`StreamingEngine.set_prompt`: a refusal changes nothing). Before any
prompt, and while the object score is <= ``score_threshold``, the mask is empty and the result says why.

An instruction (``set_instruction``, needs a :class:`Grounder`) is grounded by queries over the
window, scheduled as :mod:`vrs_node.core.queries` says: in sync mode a due query runs inside
``push`` before the frame is tracked, in live mode on its own thread; a failed one is retried, and
its error is in the reason of the frames still waiting. A finished query becomes a token prompt on
its keyframe (TAK' with its keyframe decode, kept on the device; a past frame: the tracker catches
up). The first query of an instruction starts a new target (the tracker's memory is reset); later
ones add a conditioning frame, so the last ``max_cond_frames`` keyframes stay in memory. A frame
whose processing raises (the image encoder, the tracker) gets an empty mask with status ``error``
and the exception as its reason; the next frame is processed as usual.

Stream discontinuities are handled, not refused, and each is reported in the ``notice`` of the
frame where it is seen (and logged):

- a stamp more than ``TIME_JUMP_BACK_S`` earlier than the previous frame's (a bag looping, a
  simulator or driver restarting) starts a new timeline: the window is emptied (so prompts by
  stamp, catch-up and keyframes never mix two timelines) and the periodic query schedule restarts
  at this frame; the tracker's memory of the target is kept. A smaller step back (frames of two
  publishers, or delivered out of order) is processed as it comes;
- a resolution change (of the camera size) is accepted: each frame's mask has that frame's size,
  the window may hold both sizes (features are at SAM-2's fixed input size), and the target is
  kept.

A frame's camera size and its image's size may differ: ``push(..., camera_hw=(H, W))`` hands over
an image decoded smaller than the H x W camera frame (a JPEG decoded at a reduced scale). Prompts
are in camera pixels, the mask is H x W, and only a change of the camera size is a resolution
change (an image decoded at another scale is not).

Equal stamps are accepted as they come. Memory is bounded whatever the input rate: the window
holds ``window_frames`` frames, live mode holds one waiting frame, the tracker ``max_cond_frames``
conditioning plus its recent memories.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from vrs_node.core.config import PipelineConfig
from vrs_node.core.frames import SAM2_KEY, Frame, FrameWindow, check_frame
from vrs_node.core.grounder import Grounder, Grounding
from vrs_node.core.prompt_json import fit_to_image
from vrs_node.core.prompts import PointsPrompt, Prompt, TokenPrompt
from vrs_node.core.queries import QueryReport, QueryScheduler
from vrs_node.core.results import (STATUS_ERROR, STATUS_GROUNDING, STATUS_NO_PROMPT, STATUS_TARGET_ABSENT,
                                   STATUS_TRACKING, EngineStats, FrameResult)
from vrs_node.core.tracker import FrameFeatures, StreamingTracker
from vrs_node.models.prompt import Instruction

log = logging.getLogger(__name__)

TIME_JUMP_BACK_S = 1.0
"""A stamp this much earlier than the previous frame's starts a new timeline (module docstring)."""


@dataclass
class _PendingPrompt:
    """A prompt waiting for the next processed frame; ``keyframe`` carries a grounding's keyframe
    features (usable after the window evicted that frame); ``new_target`` resets the tracker first."""

    prompt: Prompt | None
    frame_index: int | None = None
    stamp_ns: int | None = None
    keyframe: FrameFeatures | None = None
    new_target: bool = True


@dataclass
class _Slot:
    """The live-mode hand-over: the newest unprocessed frame as (image, stamp_ns, frame_id,
    camera_hw, pushed_at)."""

    frame: tuple | None = None
    closed: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)


def _no_stamp_reason(stamp_ns: int, frames: list[Frame]) -> str:
    """Why a prompt stamped ``stamp_ns`` finds no frame among ``frames`` (the window, oldest first)."""
    held = f"held: stamps {frames[0].stamp_ns}..{frames[-1].stamp_ns}" if frames else "the window is empty"
    return f"no frame with stamp {stamp_ns} ns in the window ({held})"


def catchup_schedule(num_buffered: int, max_frames: int) -> list[int]:
    """Positions (0-based, in order) of buffered frames to track during a catch-up.

    All of them when ``num_buffered <= max_frames``; otherwise every k-th one with
    k = ceil(num_buffered / max_frames), always ending on the newest (position num_buffered-1).
    """
    if num_buffered <= max_frames:
        return list(range(num_buffered))
    stride = -(-num_buffered // max_frames)
    return list(range(num_buffered - 1, -1, -stride))[::-1]


class StreamingEngine:
    """Frames -> masks with a :class:`StreamingTracker`, a bounded :class:`FrameWindow` and prompts.

    Of ``config`` the engine reads ``mode``, ``window_frames``, ``max_catchup_frames`` and (at each
    use, so a new ``config`` set at runtime takes effect) ``score_threshold``, ``period_s`` and
    ``lost_after_frames``; the tracker's and grounder's settings are applied by
    :func:`~vrs_node.core.pipeline.build_pipeline`, which builds the three together."""

    def __init__(self, tracker: StreamingTracker, config: PipelineConfig = PipelineConfig(),
                 on_result: Callable[[FrameResult], None] | None = None, grounder: Grounder | None = None,
                 on_query: Callable[[QueryReport], None] | None = None):
        if config.mode == "live" and on_result is None:
            raise ValueError("live mode delivers results through on_result; pass a callback")
        if grounder is not None and grounder.tracker is not tracker:
            raise ValueError("the grounder must score keyframes with the engine's tracker")
        self.tracker = tracker
        self.config = config
        self.grounder = grounder
        self.window = FrameWindow(config.window_frames)
        self.stats = EngineStats()
        self._on_result = on_result
        self._prompt_lock = threading.Lock()
        self._pending: _PendingPrompt | None = None
        self._slot = _Slot()
        self._queries = QueryScheduler(grounder, self.window, lambda: self.config, self.stats,
                                       self._apply_grounding, on_query)
        self._workers: list[threading.Thread] = []
        if config.mode == "live":
            self._workers.append(threading.Thread(target=self._run_live, name="vrs-tracking", daemon=True))
            self._workers[0].start()
            grounding = self._queries.start()
            if grounding is not None:
                self._workers.append(grounding)

    def set_prompt(self, prompt: Prompt, frame_index: int | None = None, stamp_ns: int | None = None,
                   new_target: bool = True) -> str:
        """Condition on ``prompt`` at the next processed frame, or at a past frame of the window
        named by its ``frame_index`` or its capture ``stamp_ns`` (then catch up). A prompt given
        by hand replaces the instruction, if any. ``new_target=False`` keeps the earlier
        conditioning frames (the same object seen again).

        Checked at once against the window; a refusal raises ValueError and changes nothing (the
        target, the instruction and a prompt still pending are kept):

        - ``stamp_ns`` must be the stamp of a frame in the window;
        - a :class:`PointsPrompt` must fit the frame it lands on (the stamped frame, else the
          newest), as :func:`~vrs_node.core.prompt_json.fit_to_image` says: a point outside the
          image or a box that misses it is refused, a box partly outside is clipped.

        Returns the notice of a clipped box ("" when the prompt is applied as given). With no
        frame in the window yet the size is checked when the prompt is applied, against the frame
        it lands on (also after a resolution change): a refusal then is that frame's error and a
        clipping is logged. ``frame_index`` is checked when the prompt is applied."""
        frames = self.window.snapshot()
        frame = frames[-1] if frames else None
        if stamp_ns is not None:
            frame = next((f for f in frames if f.stamp_ns == stamp_ns), None)
            if frame is None:
                raise ValueError(_no_stamp_reason(stamp_ns, frames))
        notice = ""
        if isinstance(prompt, PointsPrompt) and frame is not None:
            prompt, notice = fit_to_image(prompt, frame.width, frame.height)
        self._queries.forget()
        with self._prompt_lock:
            self._pending = _PendingPrompt(prompt, frame_index, stamp_ns, new_target=new_target)
        return notice

    def set_instruction(self, text: str) -> Instruction:
        """Follow ``text``: normalised and neutralised (ValueError if empty or too long), then
        grounded by a query at once and re-grounded as :mod:`vrs_node.core.queries` says. The current
        target is dropped: frames report ``grounding`` until the first answer."""
        instruction = self._queries.follow(text)
        with self._prompt_lock:  # the old target is not what the new instruction asks for
            self._pending = _PendingPrompt(None)
        return instruction

    @property
    def instruction(self) -> Instruction | None:
        """The instruction being followed (None when there is none)."""
        return self._queries.instruction

    @property
    def query_running(self) -> bool:
        """True while a grounding query is due or running."""
        return self._queries.running

    @property
    def query_elapsed_s(self) -> float | None:
        """Seconds the grounding query in progress has been running (None when none runs)."""
        return self._queries.elapsed_s

    @property
    def prompt_pending(self) -> bool:
        """True while a prompt (or a clear) waits for the next processed frame."""
        with self._prompt_lock:
            return self._pending is not None

    def clear_prompt(self) -> None:
        """Forget the target and the instruction: results are empty with status ``no_prompt``
        until the next prompt or instruction."""
        self._queries.forget()
        with self._prompt_lock:
            self._pending = _PendingPrompt(None)

    def _apply_grounding(self, grounding: Grounding, new_target: bool) -> None:
        """The scheduler's answer becomes the pending prompt on its keyframe: TAK' with its keyframe
        decode, which conditions the keyframe as it is, on the device (not decoded again)."""
        prompt = TokenPrompt(grounding.token, grounding.keyframe_result.low_res_logits)
        with self._prompt_lock:
            self._pending = _PendingPrompt(prompt, grounding.keyframe,
                                           keyframe=grounding.keyframe_features, new_target=new_target)

    def push(self, image: np.ndarray, stamp_ns: int, frame_id: str = "",
             camera_hw: tuple[int, int] | None = None) -> FrameResult | None:
        """Hand over one camera frame (h x w x 3 uint8 RGB); see the module docstring for modes.
        ``camera_hw``: the camera frame's (H, W) when the image is a smaller decode of it
        (default: the image's size); ValueError unless both are as
        :func:`~vrs_node.core.frames.check_frame` requires, the frame's one check (the window and
        the tracker trust it)."""
        pushed_at = time.perf_counter()
        camera_hw = check_frame(image, camera_hw)
        self.stats.pushed += 1
        frame = (image, int(stamp_ns), frame_id, camera_hw, pushed_at)
        if self.config.mode == "sync":
            return self._process(*frame)
        with self._slot.cond:
            if self._slot.closed:
                raise RuntimeError("the engine is closed")
            if self._slot.frame is not None:
                self.stats.dropped += 1
            self._slot.frame = frame
            self._slot.cond.notify()
        return None

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the live threads (the frame or query in progress is finished first)."""
        with self._slot.cond:
            self._slot.closed = True
            self._slot.cond.notify()
        self._queries.stop()
        for worker in self._workers:
            worker.join(timeout_s)

    def _run_live(self) -> None:
        while True:
            with self._slot.cond:
                while self._slot.frame is None and not self._slot.closed:
                    self._slot.cond.wait()
                if self._slot.closed:
                    return
                frame, self._slot.frame = self._slot.frame, None
            result = self._process(*frame)
            try:
                self._on_result(result)
            except Exception:  # a failing consumer must not stop tracking
                log.exception("on_result callback failed")

    def _process(self, image: np.ndarray, stamp_ns: int, frame_id: str, camera_hw: tuple[int, int],
                 pushed_at: float) -> FrameResult:
        """The hot path: store, encode, (sync: ground), apply a pending prompt, track, upsample."""
        notice = self._check_continuity(camera_hw, stamp_ns)
        frame = self.window.append(image, stamp_ns, frame_id, camera_hw)
        result = self._track(frame, pushed_at)
        self._queries.count_lost(result.status == STATUS_TARGET_ABSENT, result.status == STATUS_GROUNDING)
        return replace(result, notice=notice) if notice else result

    def _check_continuity(self, camera_hw: tuple[int, int], stamp_ns: int) -> str:
        """Handle a stamp going backwards or a change of the camera size (module docstring); the notice."""
        previous = self.window.latest
        if previous is None:
            return ""
        notices = []
        if previous.stamp_ns - stamp_ns > TIME_JUMP_BACK_S * 1e9:
            self.stats.time_jumps += 1
            self.window.clear()
            self._queries.restart_period(stamp_ns)
            notices.append(f"time jumped back {(previous.stamp_ns - stamp_ns) / 1e9:.3f} s (stamp {stamp_ns} < "
                           f"previous {previous.stamp_ns}): new timeline, window emptied, target kept")
        if camera_hw != previous.camera_hw:
            self.stats.resolution_changes += 1
            notices.append(f"resolution changed from {previous.width}x{previous.height} to "
                           f"{camera_hw[1]}x{camera_hw[0]}: target kept, masks follow the new size")
        for notice in notices:
            log.warning(notice)
        return "; ".join(notices)

    def _track(self, frame: Frame, pushed_at: float) -> FrameResult:
        try:
            feats = self.tracker.encode_frame(frame)
            self.window.set_feature(frame.index, SAM2_KEY, feats)
            self._queries.on_frame(frame)
            with self._prompt_lock:
                pending, self._pending = self._pending, None
            track = None
            if pending is not None and pending.prompt is None:
                self.tracker.reset()
            elif pending is not None:
                track = self._apply_prompt(pending, frame, feats)
            if track is None and self.tracker.has_prompt:
                track = self.tracker.track(feats)
        except Exception as exc:  # keep running: the frame gets an empty mask and the reason
            self.stats.errors += 1
            log.warning("frame %d (stamp %d) failed: %s", frame.index, frame.stamp_ns, exc)
            return self._result(frame, pushed_at, None, STATUS_ERROR, f"{type(exc).__name__}: {exc}")
        self.stats.processed += 1
        if track is None:
            reason = self._queries.waiting_reason()
            if reason is not None:
                return self._result(frame, pushed_at, None, STATUS_GROUNDING, reason)
            return self._result(frame, pushed_at, None, STATUS_NO_PROMPT,
                                "no prompt yet: set an instruction, or a point, box or mask prompt")
        score = track.object_score
        if score <= self.config.score_threshold:
            return self._result(frame, pushed_at, None, STATUS_TARGET_ABSENT,
                                f"object score {score:.2f} <= {self.config.score_threshold:.2f}: "
                                "target not visible", score)
        return self._result(frame, pushed_at, track.mask(), STATUS_TRACKING, "tracking", score)

    def _apply_prompt(self, pending: _PendingPrompt, frame: Frame, feats: FrameFeatures):
        """Condition now, or on a past frame and catch up to (and including) ``frame``."""
        key = pending.frame_index
        frames = self.window.snapshot()
        if pending.stamp_ns is not None:
            key = next((f.index for f in frames if f.stamp_ns == pending.stamp_ns), None)
            if key is None:
                raise ValueError(_no_stamp_reason(pending.stamp_ns, frames))
        prompt = pending.prompt
        if isinstance(prompt, PointsPrompt):  # the size it was checked against, if any, may differ
            on = next((f for f in frames if f.index == key), frame)
            prompt, notice = fit_to_image(prompt, on.width, on.height)
            if notice:
                log.warning("prompt on frame %d: %s", on.index, notice)
        if pending.new_target:
            self.tracker.reset()
        if key is None or key == frame.index:
            return self.tracker.condition(feats, prompt)
        keyframe = pending.keyframe or self.window.get_feature(key, SAM2_KEY)
        if keyframe is None:
            raise ValueError(f"prompt frame {key} is no longer in the window "
                             f"(held: {self.window.indices()})")
        if key > frame.index:
            raise ValueError(f"prompt frame {key} is in the future (current frame {frame.index})")
        buffered = [i for i in self.window.indices() if key < i < frame.index
                    and self.window.has_feature(i, SAM2_KEY)]
        chosen = [buffered[p] for p in catchup_schedule(len(buffered), self.config.max_catchup_frames)]
        following = [self.window.get_feature(i, SAM2_KEY) for i in chosen] + [feats]
        self.stats.catchup_frames += len(chosen)
        return self.tracker.catch_up(keyframe, prompt, following)[-1]

    @staticmethod
    def _result(frame: Frame, pushed_at: float, mask: np.ndarray | None, status: str, reason: str,
                score: float | None = None) -> FrameResult:
        """A FrameResult; ``mask=None`` means an empty mask at the frame's camera size."""
        if mask is None:
            mask = np.zeros(frame.camera_hw, bool)
        return FrameResult(frame.index, frame.stamp_ns, frame.frame_id, mask, score, status, reason,
                           time.perf_counter() - pushed_at, frame.image)
