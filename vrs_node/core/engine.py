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
buffered) before processing the new frame. Before any prompt, and while the object score is
<= ``score_threshold``, the mask is empty and the result says why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vrs_node.core.frames import Frame, FrameWindow, check_image
from vrs_node.core.tracker import FrameFeatures, Prompt, StreamingTracker

log = logging.getLogger(__name__)

FEATURES_KEY = "sam2"

STATUS_NO_PROMPT = "no_prompt"
STATUS_TRACKING = "tracking"
STATUS_TARGET_ABSENT = "target_absent"
STATUS_ERROR = "error"


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings. ``score_threshold`` is on the object-score logit (SAM-2 uses 0)."""

    mode: str = "sync"
    window_frames: int = 16
    max_catchup_frames: int = 16
    score_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("sync", "live"):
            raise ValueError(f"mode must be 'sync' or 'live', got {self.mode!r}")
        if self.window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {self.window_frames}")
        if self.max_catchup_frames < 1:
            raise ValueError(f"max_catchup_frames must be >= 1, got {self.max_catchup_frames}")


@dataclass(frozen=True)
class FrameResult:
    """The engine's answer for one processed frame.

    ``mask`` is H x W bool at camera resolution; ``object_score`` the SAM-2 object-score logit
    (None before any prompt); ``status`` one of the ``STATUS_*`` strings and ``reason`` a sentence
    for people; ``latency_s`` from ``push`` to the result.
    """

    index: int
    stamp_ns: int
    frame_id: str
    mask: np.ndarray
    object_score: float | None
    status: str
    reason: str
    latency_s: float


@dataclass
class EngineStats:
    """Counters since the engine started."""

    pushed: int = 0
    processed: int = 0
    dropped: int = 0
    errors: int = 0
    catchup_frames: int = 0


@dataclass
class _PendingPrompt:
    prompt: Prompt | None
    frame_index: int | None = None
    stamp_ns: int | None = None


@dataclass
class _Slot:
    """The live-mode hand-over: the newest unprocessed frame as (image, stamp_ns, frame_id,
    pushed_at)."""

    frame: tuple | None = None
    closed: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)


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
    """Frames -> masks with a :class:`StreamingTracker`, a bounded :class:`FrameWindow` and prompts."""

    def __init__(self, tracker: StreamingTracker, config: EngineConfig = EngineConfig(),
                 on_result: Callable[[FrameResult], None] | None = None):
        if config.mode == "live" and on_result is None:
            raise ValueError("live mode delivers results through on_result; pass a callback")
        self.tracker = tracker
        self.config = config
        self.window = FrameWindow(config.window_frames)
        self.stats = EngineStats()
        self._on_result = on_result
        self._prompt_lock = threading.Lock()
        self._pending: _PendingPrompt | None = None
        self._slot = _Slot()
        self._worker: threading.Thread | None = None
        if config.mode == "live":
            self._worker = threading.Thread(target=self._run_live, name="vrs-tracking", daemon=True)
            self._worker.start()

    def set_prompt(self, prompt: Prompt, frame_index: int | None = None,
                   stamp_ns: int | None = None) -> None:
        """Condition on ``prompt`` at the next processed frame, or at a past frame of the window
        named by its ``frame_index`` or its capture ``stamp_ns`` (then catch up)."""
        with self._prompt_lock:
            self._pending = _PendingPrompt(prompt, frame_index, stamp_ns)

    @property
    def prompt_pending(self) -> bool:
        """True while a prompt (or a clear) waits for the next processed frame."""
        with self._prompt_lock:
            return self._pending is not None

    def clear_prompt(self) -> None:
        """Forget the target: results are empty with status ``no_prompt`` until the next prompt."""
        with self._prompt_lock:
            self._pending = _PendingPrompt(None)

    def push(self, image: np.ndarray, stamp_ns: int, frame_id: str = "") -> FrameResult | None:
        """Hand over one camera frame (H x W x 3 uint8 RGB); see the module docstring for modes."""
        pushed_at = time.perf_counter()
        check_image(image)
        self.stats.pushed += 1
        frame = (image, int(stamp_ns), frame_id, pushed_at)
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
        """Stop the live tracking thread (the frame it is processing is finished first)."""
        with self._slot.cond:
            self._slot.closed = True
            self._slot.cond.notify()
        if self._worker is not None:
            self._worker.join(timeout_s)

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

    def _process(self, image: np.ndarray, stamp_ns: int, frame_id: str, pushed_at: float) -> FrameResult:
        """The hot path: store, encode, apply a pending prompt, track, upsample."""
        frame = self.window.append(image, stamp_ns, frame_id)
        try:
            feats = self.tracker.encode(frame.image)
            self.window.set_feature(frame.index, FEATURES_KEY, feats)
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
            return self._result(frame, pushed_at, None, STATUS_NO_PROMPT,
                                "no prompt yet: set a point, box or mask prompt")
        score = track.object_score
        if score <= self.config.score_threshold:
            return self._result(frame, pushed_at, None, STATUS_TARGET_ABSENT,
                                f"object score {score:.2f} <= {self.config.score_threshold:.2f}: "
                                "target not visible", score)
        return self._result(frame, pushed_at, track.mask(), STATUS_TRACKING, "tracking", score)

    def _apply_prompt(self, pending: _PendingPrompt, frame: Frame, feats: FrameFeatures):
        """Condition now, or on a past frame and catch up to (and including) ``frame``."""
        key = pending.frame_index
        if pending.stamp_ns is not None:
            key = next((f.index for f in self.window.snapshot() if f.stamp_ns == pending.stamp_ns), None)
            if key is None:
                raise ValueError(f"no frame with stamp {pending.stamp_ns} ns in the window")
        if key is None or key == frame.index:
            return self.tracker.condition(feats, pending.prompt)
        if key not in self.window or not self.window.has_feature(key, FEATURES_KEY):
            raise ValueError(f"prompt frame {key} is no longer in the window "
                             f"(held: {self.window.indices()})")
        if key > frame.index:
            raise ValueError(f"prompt frame {key} is in the future (current frame {frame.index})")
        buffered = [i for i in self.window.indices() if key < i < frame.index
                    and self.window.has_feature(i, FEATURES_KEY)]
        chosen = [buffered[p] for p in catchup_schedule(len(buffered), self.config.max_catchup_frames)]
        following = [self.window.get_feature(i, FEATURES_KEY) for i in chosen] + [feats]
        self.stats.catchup_frames += len(chosen)
        return self.tracker.catch_up(self.window.get_feature(key, FEATURES_KEY), pending.prompt, following)[-1]

    @staticmethod
    def _result(frame: Frame, pushed_at: float, mask: np.ndarray | None, status: str, reason: str,
                score: float | None = None) -> FrameResult:
        """A FrameResult; ``mask=None`` means an empty mask at the frame's size."""
        if mask is None:
            mask = np.zeros(frame.image.shape[:2], bool)
        return FrameResult(frame.index, frame.stamp_ns, frame.frame_id, mask, score, status, reason,
                           time.perf_counter() - pushed_at)
