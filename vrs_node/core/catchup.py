"""Catch-up: a target conditioned on a past frame of the window is tracked through the frames after it.

A prompt or a grounding that lands on a past frame (its keyframe, window index ``k``) conditions
its target there; the target is then tracked alone through the window's frames after ``k`` that
have SAM-2 features (every n-th one when there are more than ``max_catchup_frames``:
:func:`catchup_schedule`), so that the frame being processed finds its memory up to date. The
other targets are untouched.

A grounding's catch-up is *prepared* on the grounding thread as soon as its answer is in
(:meth:`CatchUps.prepare`): the keyframe conditioned and the target tracked through the window's
frames after it except the newest (the tracking thread may be processing that one), then through
the frames processed meanwhile, the targets unchanged. The tracking thread then *installs* it when
it applies the answer (:meth:`CatchUps.apply`), tracking it only through the frames it processed
since (one, or none), so a grounding's catch-up costs the tracking thread about one frame wherever
its keyframe lies. The memory installed is the one a catch-up run when the preparation started
would have built (for a target that keeps its conditioning frames, the new keyframe sits at that
memory step; a new target's memory is the same either way). A prepared catch-up whose target's
memory changed meanwhile (another prompt applied, the target removed and added again) is dropped,
and the catch-up runs on the tracking thread, as a prompt's always does. In sync mode both happen
within the same ``push``, with the result of running it on the tracking thread at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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

    def prepare(self, target_id: int, grounding: Grounding, new_target: bool) -> tuple[PreparedCatchUp, int] | None:
        """The grounding's catch-up for target ``target_id`` (its memory anew when ``new_target``,
        else its conditioning frames kept), prepared through the window's frames after the
        keyframe except the newest, then through those processed meanwhile (:data:`PREPARE_ROUNDS`):
        it and the index of the last frame it tracked (the keyframe's when none). None when the
        keyframe is the newest frame (nothing to prepare)."""
        newest = self._window.latest
        if newest is None or grounding.keyframe >= newest.index:
            return None
        prepared = self._targets.prepare_catch_up(target_id, grounding.keyframe_features, grounding.prompt, [],
                                                  keep_memory=not new_target)
        through = grounding.keyframe
        for _ in range(1 + PREPARE_ROUNDS):  # the frames after the keyframe, then those processed meanwhile
            newest = self._window.latest
            newer = self._following(through, newest.index) if newest is not None else []
            if not newer:
                break
            self._targets.extend_catch_up(prepared, [feats for _, feats in newer])
            through = newer[-1][0]
        return prepared, through

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
