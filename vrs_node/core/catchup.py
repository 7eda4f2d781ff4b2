"""Catch-up: a target conditioned on a past frame of the window is tracked through the frames after it.

A prompt or a grounding that lands on a past frame (its keyframe, window index ``k``) conditions
its target there; the target is then tracked alone through the window's frames after ``k`` that
have SAM-2 features (every n-th one when there are more than ``max_catchup_frames``:
:func:`catchup_schedule`), so that the frame being processed finds its memory up to date. The
other targets are untouched.

A grounding's catch-up is *prepared* on the grounding thread as soon as its answer is in
(:meth:`CatchUps.prepare`): the keyframe conditioned and the target tracked through the window's
frames after it except the newest (the tracking thread may be processing that one), then through
the frames processed meanwhile, the targets unchanged. The catch-ups of one query's answers are
prepared together: at each frame, the targets due there are tracked in one batched call. The
tracking thread then *installs* it when it applies the answer (:meth:`CatchUps.apply`), tracking it
only through the frames it processed since (one, or none), so a grounding's catch-up costs the
tracking thread about one frame wherever its keyframe lies. The memory installed is the one a
catch-up run when the preparation started would have built (for a target that keeps its
conditioning frames, the new keyframe sits at that memory step; a new target's memory is the same
either way). A prepared catch-up whose target's memory changed meanwhile (another prompt applied,
the target removed and added again) is dropped, and the catch-up runs on the tracking thread, as a
prompt's always does. In sync mode both happen within the same ``push``, with the result of running
it on the tracking thread at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from vrs_node.core.cohorts import PreparedCatchUp
from vrs_node.core.config import PipelineConfig
from vrs_node.core.frames import SAM2_KEY, Frame, FrameWindow
from vrs_node.core.grounding import Grounding
from vrs_node.core.prompts import Prompt
from vrs_node.core.results import EngineStats
from vrs_node.core.target_book import PendingPrompt
from vrs_node.core.targets import MultiTargetTracker
from vrs_node.core.tracker import FrameFeatures

log = logging.getLogger(__name__)

PREPARE_ROUNDS = 4
"""After its first pass, a preparation goes on through the frames processed meanwhile (but the
newest) at most this many times, so the tracking thread is left about one frame to track."""


def catchup_schedule(num_buffered: int, max_frames: int) -> list[int]:
    """Positions (0-based, in order) of buffered frames to track during a catch-up.

    All of them when ``num_buffered <= max_frames``; otherwise every k-th one with
    k = ceil(num_buffered / max_frames), always ending on the newest (position num_buffered-1).
    """
    if num_buffered <= max_frames:
        return list(range(num_buffered))
    stride = -(-num_buffered // max_frames)
    return list(range(num_buffered - 1, -1, -stride))[::-1]


class CatchUps:
    """Catch-ups of ``targets`` through ``window``'s frames (module docstring); ``config()`` gives
    the current ``max_catchup_frames``; ``stats.catchup_frames`` counts the frames tracked by
    catch-ups, ``stats.prepared_catchup_frames`` those of them tracked on the grounding thread."""

    def __init__(self, window: FrameWindow, targets: MultiTargetTracker, config: Callable[[], PipelineConfig],
                 stats: EngineStats):
        self._window = window
        self._targets = targets
        self._config = config
        self._stats = stats

    def prepare(self, answers: Sequence[tuple[int, Grounding, bool]]) -> dict[int, tuple[PreparedCatchUp, int]]:
        """The catch-ups of one query's answers, each ``(target_id, grounding, new_target)`` (its
        memory anew when ``new_target``, else its conditioning frames kept), prepared together:
        each through the window's frames after its keyframe except the newest, then all through
        those processed meanwhile (:data:`PREPARE_ROUNDS`), frame by frame, the targets due at a
        frame tracked in one batched call (:meth:`MultiTargetTracker.extend_catch_ups`: each
        equals its own catch-up within batching's rounding). A target id -> its catch-up and the
        index of the last frame it tracked (the keyframe's when none); a target whose keyframe is
        the newest frame is left out (nothing to prepare)."""
        newest = self._window.latest
        runs = {target_id: [self._targets.prepare_catch_up(target_id, grounding.keyframe_features, grounding.prompt,
                                                           [], keep_memory=not new_target), grounding.keyframe]
                for target_id, grounding, new_target in answers
                if newest is not None and grounding.keyframe < newest.index}
        for _ in range(1 + PREPARE_ROUNDS):  # the frames after the keyframes, then those processed meanwhile
            if not self._extend(runs):
                break
        return {target_id: (prepared, through) for target_id, (prepared, through) in runs.items()}

    def _extend(self, runs: dict[int, list]) -> bool:
        """Track each run (``[prepared, through]``) through the frames after its ``through`` but
        the newest, as :meth:`_following` picks them, frame by frame, the runs due at a frame in one
        call; each run's ``through`` moved on. False when none had a frame to track (or the
        window was emptied meanwhile)."""
        newest = self._window.latest
        if newest is None:
            return False
        due = {target_id: dict(self._following(through, newest.index)) for target_id, (_, through) in runs.items()}
        frames = sorted({index for schedule in due.values() for index in schedule})
        for index in frames:
            ids = [target_id for target_id, schedule in due.items() if index in schedule]
            self._targets.extend_catch_ups([runs[target_id][0] for target_id in ids], due[ids[0]][index])
            for target_id in ids:
                runs[target_id][1] = index
        return bool(frames)

    def apply(self, target_id: int, pending: PendingPrompt, prompt: Prompt, keyframe: FrameFeatures, key: int,
              frame: Frame) -> None:
        """On the tracking thread, processing ``frame``: condition target ``target_id`` with
        ``prompt`` on the past frame ``key`` (features ``keyframe``) and track it through the
        frames buffered since, or install the catch-up ``pending`` carries, still valid, after
        tracking it through the frames processed since it was prepared."""
        if pending.prepared is not None and self._install(pending, frame):
            return
        following = self._following(key, frame.index)
        if pending.new_target and target_id in self._targets.ids:
            self._targets.remove(target_id)
        self._targets.catch_up(target_id, keyframe, prompt, [feats for _, feats in following])
        self._stats.catchup_frames += len(following)

    def _install(self, pending: PendingPrompt, frame: Frame) -> bool:
        """Install ``pending``'s prepared catch-up (module docstring); False when its target's memory
        changed since it was prepared (nothing installed)."""
        since = self._following(pending.prepared_through, frame.index)
        if self._targets.install(pending.prepared, [feats for _, feats in since]) is None:
            log.info("target %d's memory changed while its catch-up was prepared: caught up on the tracking "
                     "thread", pending.prepared.target_id)
            return False
        prepared_frames = len(pending.prepared.results) - 1
        self._stats.catchup_frames += prepared_frames + len(since)
        self._stats.prepared_catchup_frames += prepared_frames
        return True

    def _following(self, after: int, before: int) -> list[tuple[int, FrameFeatures]]:
        """(index, SAM-2 features) of the window's frames after ``after`` and before ``before`` that
        have features, every n-th as :func:`catchup_schedule` picks them, in order."""
        buffered = [(f.index, feats) for f, feats in self._window.with_feature(SAM2_KEY) if after < f.index < before]
        return [buffered[p] for p in catchup_schedule(len(buffered), self._config().max_catchup_frames)]
