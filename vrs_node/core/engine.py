"""StreamingEngine: camera frames in, one mask per processed frame out, for one target or several.

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
its keyframe (TAK' with its keyframe decode, kept on the device; a past frame: the target catches
up, prepared on the grounding thread as :mod:`vrs_node.core.catchup` says). The first query of an
instruction starts a new target (its memory starts empty); later ones add a conditioning frame, so
the last ``max_cond_frames`` keyframes stay in memory. A frame whose processing raises (the image
encoder, the tracker) gets an empty mask with status ``error`` and the exception as its reason; the
next frame is processed as usual.

Several targets (:meth:`StreamingEngine.add_target`, ``remove_target``, ``set_targets``,
``clear_targets``; at most ``max_targets``, ids 1-255): each is an instruction or a geometric
prompt (:class:`~vrs_node.core.target_specs.TargetSpec`) with its own SAM-2 memory, its own query
schedule and lost-target re-grounding, tracked by one
:class:`~vrs_node.core.targets.MultiTargetTracker` (one image encoding per frame, batched memory
attention and decoding). Instructions due together are grounded in one batched query; a target's
answer on a past keyframe catches up that target only. ``set_instruction``, ``set_prompt`` and
``clear_prompt`` mean exactly one target (id 1; every other target is dropped). A refused command
raises ValueError and changes nothing. Each result carries the union ``mask``, the
``instance_map`` and one report per target (:mod:`vrs_node.core.frame_report`).

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
holds ``window_frames`` frames, live mode holds one waiting frame, each target's memory
``max_cond_frames`` conditioning frames plus its recent memories.
"""


from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from vrs_node.core.catchup import CatchUps
from vrs_node.core.config import PipelineConfig
from vrs_node.core.frame_report import frame_result
from vrs_node.core.frames import SAM2_KEY, Frame, FrameWindow, check_frame
from vrs_node.core.grounder import Grounder
from vrs_node.core.prompt_json import fit_to_image
from vrs_node.core.process_exit import join_workers
from vrs_node.core.prompts import PointsPrompt, Prompt
from vrs_node.core.queries import QueryReport, QueryScheduler
from vrs_node.core.results import STATUS_GROUNDING, STATUS_TARGET_ABSENT, EngineStats, FrameResult
from vrs_node.core.target_book import REMOVE, RESET, PendingPrompt, TargetBook, no_stamp_reason
from vrs_node.core.target_specs import TargetSpec
from vrs_node.core.targets import MultiTargetTracker, TargetPromptError
from vrs_node.core.tracker import FrameFeatures, StreamingTracker
from vrs_node.models.prompt import Instruction

log = logging.getLogger(__name__)

TIME_JUMP_BACK_S = 1.0
"""A stamp this much earlier than the previous frame's starts a new timeline (module docstring)."""
@dataclass
class _Slot:
    """The live-mode hand-over: the newest unprocessed frame as (image, stamp_ns, frame_id,
    camera_hw, pushed_at)."""

    frame: tuple | None = None
    closed: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)


class StreamingEngine:
    """Frames -> masks with a :class:`MultiTargetTracker`, a bounded :class:`FrameWindow` and prompts.

    ``tracker`` (a :class:`StreamingTracker`) encodes each frame once and decodes the grounder's
    tokens; ``target_tracker`` holds every target's memory. Of ``config`` the engine reads
    ``mode``, ``window_frames``, ``max_catchup_frames``, ``max_targets``, ``target_batch`` and (at each use, so a new
    ``config`` set at runtime takes effect) ``score_threshold``, ``period_s`` and
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
        self.target_tracker = MultiTargetTracker(tracker, config.max_targets, config.target_batch)
        self.config = config
        self.grounder = grounder
        self.window = FrameWindow(config.window_frames)
        self.stats = EngineStats()
        self._on_result = on_result
        self._slot = _Slot()
        self._catch_ups = CatchUps(self.window, self.target_tracker, lambda: self.config, self.stats)
        self._queries = QueryScheduler(grounder, self.window, lambda: self.config, self.stats,
                                       lambda *answer: self._book.apply_grounding(*answer), on_query,
                                       self._catch_ups.prepare)
        self._book = TargetBook(self.window, self._queries, config.max_targets)
        self._workers: list[threading.Thread] = []
        if config.mode == "live":
            self._workers.append(threading.Thread(target=self._run_live, name="vrs-tracking", daemon=True))
            self._workers[0].start()
            self._workers.extend(self._queries.start())

    def set_prompt(self, prompt: Prompt, frame_index: int | None = None, stamp_ns: int | None = None,
                   new_target: bool = True) -> str:
        """Make ``prompt`` the one target (id 1; every other target and instruction is dropped):
        condition on it at the next processed frame, or at a past frame of the window named by its
        ``frame_index`` or its capture ``stamp_ns`` (then catch up). ``new_target=False`` keeps
        target 1's earlier conditioning frames (the same object seen again).

        Checked at once against the window; a refusal raises ValueError and changes nothing:

        - ``stamp_ns`` must be the stamp of a frame in the window;
        - a :class:`PointsPrompt` must fit the frame it lands on (the stamped frame, else the
          newest), as :func:`~vrs_node.core.prompt_json.fit_to_image` says: a point outside the
          image or a box that misses it is refused, a box partly outside is clipped.

        Returns the notice of a clipped box ("" when the prompt is applied as given). With no
        frame in the window yet the size is checked when the prompt is applied, against the frame
        it lands on (also after a resolution change): a refusal then is that frame's error and a
        clipping is logged. ``frame_index`` is checked when the prompt is applied."""
        return self._book.set_prompt(prompt, frame_index, stamp_ns, new_target)

    def set_instruction(self, text: str) -> Instruction:
        """Follow ``text`` as the one target (id 1; every other target is dropped): normalised and
        neutralised (ValueError if empty or too long), then grounded by a query at once and
        re-grounded as :mod:`vrs_node.core.queries` says. Frames report ``grounding`` until the
        first answer."""
        return self._book.set_instruction(text)

    def clear_prompt(self) -> None:
        """Forget every target and instruction: results are empty with status ``no_prompt``
        until the next prompt or instruction."""
        self._book.clear()

    def add_target(self, spec: TargetSpec, target_id: int | None = None) -> int:
        """Follow one more target; returns its id (``target_id``, or the lowest free one). Refused
        with ValueError, changing nothing: a bad or taken id, more than ``max_targets`` targets,
        an instruction refused as :meth:`set_instruction` refuses it, a prompt refused as
        :meth:`set_prompt` refuses it. Its memory starts at the frame its prompt or first
        grounding lands on; the other targets are untouched."""
        return self._book.add(spec, target_id)

    def set_targets(self, entries: Sequence[tuple[int | None, TargetSpec]]) -> list[int]:
        """Replace every target by ``entries`` ((id or None, spec) each); their ids, in order. All or
        nothing: one refused entry (as :meth:`add_target` refuses) refuses the whole list."""
        return self._book.set(entries)

    def remove_target(self, target_id: int) -> None:
        """Stop following target ``target_id`` (ValueError for an unknown id); the others' memories
        are untouched."""
        self._book.remove(target_id)

    def clear_targets(self) -> None:
        """Forget every target and instruction (as :meth:`clear_prompt`)."""
        self._book.clear()

    def target_labels(self) -> dict[int, str]:
        """The targets followed: id -> label, ids ascending."""
        return self._book.labels()

    @property
    def instruction(self) -> Instruction | None:
        """The instruction followed (with several, the lowest id's; None when there is none)."""
        return next(iter(self._queries.instructions.values()), None)

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
        """True while a prompt (or a removal or clear) waits for the next processed frame."""
        return self._book.pending

    # -- frames -------------------------------------------------------------------------------------

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

    def close(self, timeout_s: float = 10.0) -> bool:
        """Stop the live threads (the frame or query in progress is finished first), waiting at
        most ``timeout_s`` in all. False, logged, when one is still running then
        (:func:`~vrs_node.core.process_exit.join_workers`: a query inside a model call ends on its
        own; a command's exit goes through :func:`~vrs_node.core.process_exit.safe_exit_code`)."""
        with self._slot.cond:
            self._slot.closed = True
            self._slot.cond.notify()
        self._queries.stop()
        return join_workers(self._workers, timeout_s)

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
        """The hot path: store, encode, (sync: ground), apply pending prompts, track, upsample."""
        notice = self._check_continuity(camera_hw, stamp_ns)
        frame = self.window.append(image, stamp_ns, frame_id, camera_hw)
        result = self._track(frame, pushed_at)
        for report in result.targets:
            self._queries.count_lost(report.id, report.status == STATUS_TARGET_ABSENT,
                                     report.status == STATUS_GROUNDING)
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
        """Encode, apply the queued commands (a failing prompt fails its target only), track every
        target; a failure of the whole frame gives an empty mask with status ``error``."""
        errors: dict[int, str] = {}
        try:
            feats = self.tracker.encode_frame(frame)
            self.window.set_feature(frame.index, SAM2_KEY, feats)
            self._queries.on_frame(frame)
            for op in self._book.take():
                self._apply_op(op, frame, feats, errors)
            results = self._track_targets(feats, errors)
        except Exception as exc:  # keep running: the frame gets an empty mask and the reason
            self.stats.errors += 1
            log.warning("frame %d (stamp %d) failed: %s", frame.index, frame.stamp_ns, exc)
            return frame_result(frame, time.perf_counter() - pushed_at, {}, {}, self.config.score_threshold,
                                f"{type(exc).__name__}: {exc}")
        self.stats.processed += 1
        states = self._book.states(errors, self.target_tracker.ids)
        return frame_result(frame, time.perf_counter() - pushed_at, states, results, self.config.score_threshold)

    def _apply_op(self, op: tuple, frame: Frame, feats: FrameFeatures, errors: dict[int, str]) -> None:
        """Apply one queued command to the target tracker; a prompt that fails is that target's error."""
        if op[0] == RESET:
            self.target_tracker.reset()
        elif op[0] == REMOVE:
            if op[1] in self.target_tracker.ids:
                self.target_tracker.remove(op[1])
        else:
            try:
                self._apply_prompt(op[1], op[2], frame, feats)
            except (ValueError, TypeError) as exc:
                self._prompt_failed(op[1], exc, errors)

    def _apply_prompt(self, target_id: int, pending: PendingPrompt, frame: Frame, feats: FrameFeatures) -> None:
        """Queue the prompt on this frame, or condition on a past frame and catch this target up
        through the buffered frames (the current one is tracked with every target after)."""
        key = pending.frame_index
        frames = self.window.snapshot()
        if pending.stamp_ns is not None:
            key = next((f.index for f in frames if f.stamp_ns == pending.stamp_ns), None)
            if key is None:
                raise ValueError(no_stamp_reason(pending.stamp_ns, frames))
        prompt = pending.prompt
        if isinstance(prompt, PointsPrompt):  # the size it was checked against, if any, may differ
            on = next((f for f in frames if f.index == key), frame)
            prompt, notice = fit_to_image(prompt, on.width, on.height)
            if notice:
                log.warning("prompt on frame %d: %s", on.index, notice)
        tracker = self.target_tracker
        if key is None or key == frame.index:
            if pending.new_target and target_id in tracker.ids:
                tracker.remove(target_id)
            (tracker.set_prompt if target_id in tracker.ids else tracker.add)(target_id, prompt)
            return
        keyframe = pending.keyframe or self.window.get_feature(key, SAM2_KEY)
        if keyframe is None:
            raise ValueError(f"prompt frame {key} is no longer in the window "
                             f"(held: {self.window.indices()})")
        if key > frame.index:
            raise ValueError(f"prompt frame {key} is in the future (current frame {frame.index})")
        self._catch_ups.apply(target_id, pending, prompt, keyframe, key, frame)

    def _track_targets(self, feats: FrameFeatures, errors: dict[int, str]):
        """Track every target into the frame; a queued prompt that does not fit it is dropped as
        its target's error and the others are tracked."""
        while True:
            try:
                return self.target_tracker.track(feats)
            except TargetPromptError as exc:
                self.target_tracker.cancel(exc.target_id)
                self._prompt_failed(exc.target_id, exc.__cause__, errors)

    def _prompt_failed(self, target_id: int, exc: BaseException, errors: dict[int, str]) -> None:
        """A prompt could not be applied: its target's error on this frame (counted, logged)."""
        self.stats.errors += 1
        errors[target_id] = f"{type(exc).__name__}: {exc}"
        log.warning("prompt of target %d failed: %s", target_id, exc)
