"""Several targets at once: one image encoding per frame, one bounded SAM-2 memory bank per target.

:class:`MultiTargetTracker` tracks up to ``max_targets`` targets (integer ids 1-255) through a
stream. Per frame the image encoder runs once (:meth:`StreamingTracker.encode`); each target keeps
its own memory bank with :class:`~vrs_node.core.tracker.StreamingTracker`'s bounds (at most
``max_cond_frames`` conditioning frames, the last ``keep_non_cond`` tracked outputs) and gets its
own result (:class:`~vrs_node.core.track_result.TrackResult`) per frame.

Batching: targets whose banks hold frames at the same memory steps (the same *layout*) form a
*cohort* (:mod:`vrs_node.core.cohorts`: each step's tensors batched along dim 0, one row per
target), stored together; cohorts whose layouts become equal are joined, up to ``max_batch``
targets each. Per frame, the cohorts whose memories have the same token counts (cohorts of equal
layouts, or of targets conditioned at different steps once 16 steps past their newest
conditioning with as many conditioning frames kept) are tracked in one batched call of at most
``max_batch`` targets (:mod:`vrs_node.core.joint_step`): sam2's memory step, decoder and memory
encoder over all their rows, the frame's features expanded along the batch as sam2's
``SAM2VideoPredictor._get_image_feature`` expands them (:attr:`MultiTargetTracker.batches`).
Removing a target copies the other rows out of its cohort's tensors, values unchanged.

Conditioning a target runs alone (batch 1, through a one-target tracker, exactly
:meth:`StreamingTracker.condition`): prompts differ in shape, and sam2's predictor conditions
each object alone too (``add_new_mask``/``add_new_points_or_box`` on "the slice of a single
object"). It never reads memory (``is_init_cond_frame``), so where it runs does not matter.

Memory time: each cohort counts its own steps (one per frame it is conditioned on or tracked
into) as a one-target :class:`StreamingTracker` does: from 0 for a new memory, from its cohort's
step for a re-conditioned one. SAM-2 reads memory by step *differences*
(``_prepare_memory_conditioned_features``; it stops at steps < 0), so a bank moved to later steps
to join a cohort of equal relative layout reads the same memory. That lets one target catch up
alone through buffered frames (:meth:`MultiTargetTracker.catch_up`) while the others are
untouched, prepared on another thread while tracking goes on (``prepare_catch_up``; several extended
in batched calls, ``extend_catch_ups``; ``install``).

Prompts are queued (:meth:`~MultiTargetTracker.add`, :meth:`~MultiTargetTracker.set_prompt`) and
applied on the next frame given to ``track``; the other targets are tracked into that frame.
"""

from __future__ import annotations

import threading
from functools import wraps

import numpy as np
import torch

from vrs_node.core.cohorts import KINDS, Cohort, PreparedCatchUp, join_equal_layouts, take_rows, with_pos_enc
from vrs_node.core.joint_step import batched_steps, output_rows
from vrs_node.core.frames import Frame
from vrs_node.core.prompts import Prompt, checked_prompt
from vrs_node.core.target_results import TargetResults
from vrs_node.core.target_specs import (DEFAULT_MAX_TARGETS, MAX_TARGET_ID, check_known_target, check_new_target,
                                        check_target_id)
from vrs_node.core.track_result import TrackResult
from vrs_node.core.tracker import FrameFeatures, StreamingTracker
from vrs_node.models.sam2_build import SamImageTransform


class TargetPromptError(ValueError):
    """A queued prompt that could not condition its target (``target_id``) on the frame."""

    def __init__(self, target_id: int, error: Exception):
        super().__init__(f"target {target_id}: {error}")
        self.target_id = target_id


def _locked(method):
    """Run ``method`` holding the tracker's lock (:class:`MultiTargetTracker`: thread-safety)."""
    @wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return run


class MultiTargetTracker:
    """Several SAM-2 targets tracked through one stream, batched where their memories align.

    Typical use: ``tracker.add(1, prompt_a)``; ``tracker.add(2, prompt_b)``; then per frame
    ``results = tracker.track(tracker.encode(image))`` -- queued prompts are applied on that frame,
    every other target is tracked into it. ``results[i]`` is target ``i``'s :class:`TrackResult`;
    ``results.instance_map()`` the combined id map.

    ``max_targets`` bounds the number of targets (added, queued or tracked); ``max_batch`` > 0 the
    targets of one ``track_step`` call (a larger cohort is split; 0: no bound). ``single``, a
    :class:`StreamingTracker`, encodes frames; its settings (``max_cond_frames``, ``num_frames``,
    ``fill_hole_area``, ``memory_dtype``, ``autocast_dtype``) mean the same per target, and its
    memory is never used.

    Refusals (ValueError, with the reason; nothing changes): an id that is not an int in 1..255, a
    duplicate id on :meth:`add`, more than ``max_targets`` targets, an unknown id on
    :meth:`set_prompt` or :meth:`remove`. A prompt that is not a Prompt: TypeError, nothing changes.

    Thread-safety: every call that reads or changes the targets holds one lock, and each thread
    conditions on a scratch tracker of its own, so a catch-up can be prepared on another thread
    (:meth:`prepare_catch_up`: the heavy part runs without the lock) while :meth:`track` runs.
    """

    def __init__(self, single: StreamingTracker, max_targets: int = DEFAULT_MAX_TARGETS, max_batch: int = 0):
        if not 1 <= max_targets <= MAX_TARGET_ID:
            raise ValueError(f"max_targets must be in 1..{MAX_TARGET_ID}, got {max_targets}")
        if not 0 <= max_batch <= MAX_TARGET_ID:
            raise ValueError(f"max_batch must be in 0..{MAX_TARGET_ID}, got {max_batch}")
        self.max_batch = max_batch
        self._single = single
        self.model: torch.nn.Module = single.model
        self.transform: SamImageTransform = single.transform
        self.max_targets = max_targets
        self._lock = threading.RLock()
        self._scratch = threading.local()
        self._pos_enc: list[torch.Tensor] | None = None
        self._version = 0
        self.reset()

    @property
    def max_cond_frames(self) -> int:
        """Conditioning frames each target's memory keeps (oldest dropped first)."""
        return self._single.max_cond_frames

    @property
    def keep_non_cond(self) -> int:
        """Tracked (non-conditioning) outputs each target's memory keeps (as StreamingTracker)."""
        return self._single.keep_non_cond

    @property
    @_locked
    def ids(self) -> tuple[int, ...]:
        """Every target's id, ascending (tracked ones and those whose first prompt is queued)."""
        return tuple(sorted(self._ids))

    @property
    @_locked
    def cohorts(self) -> list[tuple[int, ...]]:
        """The tracked targets' ids grouped as their memories are stored (one tuple per cohort)."""
        return [tuple(c.ids) for c in self._cohorts]

    @property
    def batches(self) -> list[tuple[int, ...]]:
        """The ids the last :meth:`track` tracked from memory, one tuple per batched call (targets
        conditioned on that frame are not in them: each is conditioned alone). Read without the
        lock (``track`` replaces the list whole), so a monitor never waits for a frame."""
        return list(self._batches)

    @_locked
    def reset(self) -> None:
        """Forget every target, queued prompt and memory; memory time restarts at 0."""
        self._ids: set[int] = set()
        self._pending: dict[int, Prompt] = {}
        self._cohorts: list[Cohort] = []
        self._memory_versions: dict[int, int] = {}
        self._batches: list[tuple[int, ...]] = []

    def encode(self, image: np.ndarray, camera_hw: tuple[int, int] | None = None) -> FrameFeatures:
        """:meth:`StreamingTracker.encode`: the image encoder, once per frame for all targets."""
        return self._single.encode(image, camera_hw)

    def encode_frame(self, frame: Frame) -> FrameFeatures:
        """:meth:`StreamingTracker.encode_frame` of a window frame."""
        return self._single.encode_frame(frame)

    @_locked
    def add(self, target_id: int, prompt: Prompt) -> None:
        """A new target, conditioned with ``prompt`` on the next frame given to :meth:`track` (its
        memory starts there). Refused (class docstring): a bad or duplicate id, too many targets."""
        check_new_target(target_id, self._ids, self.max_targets)
        self._pending[int(target_id)] = checked_prompt(prompt)
        self._ids.add(int(target_id))

    @_locked
    def cancel(self, target_id: int) -> None:
        """Drop target ``target_id``'s queued prompt; a target with no memory yet is forgotten."""
        check_known_target(target_id, self._ids)
        self._pending.pop(target_id, None)
        if not any(target_id in cohort.ids for cohort in self._cohorts):
            self._ids.discard(target_id)

    @_locked
    def catch_up(self, target_id: int, keyframe: FrameFeatures, prompt: Prompt,
                 following: list[FrameFeatures]) -> list[TrackResult]:
        """Condition one target on a past frame (``keyframe``) and track it alone through the
        ``following`` frames (the buffered ones after it, not yet the current frame): exactly
        :meth:`StreamingTracker.catch_up` on that target's memory. An unknown ``target_id`` is
        added (refused as :meth:`add` refuses), a known one re-conditioned as :meth:`set_prompt`
        does (a queued prompt of it is dropped). The other targets are untouched; the next
        :meth:`track` tracks this one into the current frame with them. Returns the keyframe's and
        the following frames' results. :meth:`prepare_catch_up` then :meth:`install`, at once."""
        prompt = checked_prompt(prompt)
        self._check_installable(target_id)
        prepared = self.prepare_catch_up(target_id, keyframe, prompt, following)
        self.install(prepared, [])
        return prepared.results

    @torch.inference_mode()
    def prepare_catch_up(self, target_id: int, keyframe: FrameFeatures, prompt: Prompt,
                         following: list[FrameFeatures], keep_memory: bool = True) -> PreparedCatchUp:
        """:meth:`catch_up`'s conditioning and tracking, with nothing changed: the target's new
        memory waits for :meth:`install`. ``keep_memory``: keep the conditioning frames the target
        has now (False: a memory of this keyframe alone, as for a new target). Holds the lock only
        while it copies those frames, so another thread may prepare while :meth:`track` runs."""
        prompt = checked_prompt(prompt)
        check_target_id(target_id)
        with self._lock:
            own = self._own_rows(target_id) if keep_memory else None
            basis = self._memory_versions.get(target_id, 0) if keep_memory else None
        result, entry = self._condition(keyframe, prompt)
        prepared = PreparedCatchUp(int(target_id), self._cohort_after(target_id, own, entry), [result], basis)
        for feats in following:
            self.extend_catch_ups([prepared], feats)
        return prepared

    @torch.inference_mode()
    def extend_catch_ups(self, prepared: list[PreparedCatchUp], feats: FrameFeatures) -> None:
        """Track prepared catch-ups of distinct targets one frame further, into ``feats`` (each one's
        result appended), batched as :meth:`track` batches (each within batching's rounding of its
        own extension, a lone one bit for bit); on the thread that prepared them, without the lock
        (nothing of the targets is read or changed). ValueError for two of one target."""
        if len({p.target_id for p in prepared}) < len(prepared):
            raise ValueError(f"catch-ups of one target extended together: {[p.target_id for p in prepared]}")
        results = self._track_cohorts([p.cohort for p in prepared], feats)[0]
        for p in prepared:
            p.results.append(results[p.target_id])

    @_locked
    @torch.inference_mode()
    def install(self, prepared: PreparedCatchUp, following: list[FrameFeatures]) -> list[TrackResult] | None:
        """Track a prepared catch-up through ``following`` (the frames buffered since it was
        prepared, not yet the current frame), then make it its target's memory, as :meth:`catch_up`
        does; the results of ``following``. None, changing nothing, when the target's memory was
        changed since it was prepared on it (its ``basis``); refused as :meth:`catch_up` is."""
        target_id = prepared.target_id
        if prepared.basis is not None and self._memory_versions.get(target_id, 0) != prepared.basis:
            return None
        self._check_installable(target_id)
        results = [self._track_cohorts([prepared.cohort], feats)[0][target_id] for feats in following]
        self._detach(target_id)
        self._bump(target_id)
        self._ids.add(target_id)
        self._pending.pop(target_id, None)
        self._cohorts.append(prepared.cohort)
        self._cohorts = join_equal_layouts(self._cohorts, self._pos_enc, self.max_batch)
        return results

    @_locked
    def set_prompt(self, target_id: int, prompt: Prompt) -> None:
        """Re-condition a known target with ``prompt`` on the next frame given to :meth:`track`, as
        :meth:`StreamingTracker.condition` does (its tracked memory is dropped, its conditioning
        frames kept up to ``max_cond_frames``); the target leaves its cohort there. For a target
        whose first prompt is still queued, ``prompt`` replaces it."""
        check_known_target(target_id, self._ids)
        self._pending[int(target_id)] = checked_prompt(prompt)

    @_locked
    def remove(self, target_id: int) -> None:
        """Forget a target, its queued prompt and its memory; the rows of the other targets of its
        cohort are copied out unchanged (bit for bit)."""
        check_known_target(target_id, self._ids)
        self._detach(target_id)
        self._ids.discard(target_id)
        self._pending.pop(target_id, None)
        self._memory_versions.pop(target_id, None)

    @_locked
    @torch.inference_mode()
    def track(self, feats: FrameFeatures) -> TargetResults:
        """Process one new frame (one memory step): targets with a queued prompt are conditioned on
        it, every other target is tracked into it from its memory, in batched calls
        (:attr:`batches`). Returns every tracked target's result (none before the first prompt).

        A prompt that does not fit the frame (e.g. a mask of another size) raises
        :class:`TargetPromptError` (a ValueError naming the target) before anything changes: the
        prompts stay queued and no step is used (:meth:`cancel` drops the one that failed).
        """
        conditioned = {}
        for i, prompt in sorted(self._pending.items()):
            try:
                conditioned[i] = self._condition(feats, prompt)
            except ValueError as exc:
                raise TargetPromptError(i, exc) from exc
        new_cohorts = [self._conditioned_cohort(i, entry) for i, (_, entry) in conditioned.items()]
        results = {i: result for i, (result, _) in conditioned.items()}
        tracked, self._batches = self._track_cohorts(self._cohorts, feats)
        results.update(tracked)
        self._cohorts.extend(new_cohorts)
        self._pending.clear()
        self._cohorts = join_equal_layouts(self._cohorts, self._pos_enc, self.max_batch)
        return TargetResults({i: results[i] for i in sorted(results)}, feats.image_hw)

    @_locked
    def stored_frames(self, target_id: int) -> tuple[int, int]:
        """(conditioning frames, tracked outputs) in target ``target_id``'s memory ((0, 0) before
        its first prompt is applied); ValueError for an unknown id."""
        check_known_target(target_id, self._ids)
        cohort = next((c for c in self._cohorts if target_id in c.ids), None)
        return (0, 0) if cohort is None else (len(cohort.bank[KINDS[0]]), len(cohort.bank[KINDS[1]]))

    @_locked
    def state_size(self) -> tuple[int, int]:
        """(stored frame outputs summed over targets, bytes of every tensor the memory banks hold,
        the one shared ``maskmem_pos_enc`` counted once). Per target the outputs are bounded by
        ``max_cond_frames + keep_non_cond``, as :meth:`StreamingTracker.state_size`'s."""
        if not self._cohorts:
            return 0, 0
        entries, nbytes = (sum(sizes) for sizes in zip(*(c.stored_size() for c in self._cohorts)))
        return entries, nbytes + sum(p.numel() * p.element_size() for p in self._pos_enc)

    def _scratch_tracker(self) -> StreamingTracker:
        """This thread's one-target tracker (``single``'s model and settings) for conditioning
        and storing memory: its own memory is scratch, emptied after each conditioning."""
        scratch = getattr(self._scratch, "tracker", None)
        if scratch is None:
            s = self._single
            scratch = self._scratch.tracker = StreamingTracker(
                s.model, s.transform, s.max_cond_frames, s.num_frames, s.fill_hole_area, s.memory_dtype,
                s.autocast_dtype)
        return scratch

    def _condition(self, feats: FrameFeatures, prompt: Prompt) -> tuple[TrackResult, dict]:
        """:meth:`StreamingTracker.condition` on this thread's scratch tracker: the result and the
        stored entry (taken out of its memory, so it holds nothing between calls)."""
        scratch = self._scratch_tracker()
        result = scratch.condition(feats, prompt)
        entry = scratch.pop_newest_conditioning()
        if self._pos_enc is None:
            self._pos_enc = entry["maskmem_pos_enc"]
        return result, entry

    def _conditioned_cohort(self, target_id: int, entry: dict) -> Cohort:
        """The target's cohort after a conditioning whose stored ``entry`` is given, the target
        taken out of its old cohort (:meth:`_cohort_after`); its memory version is new."""
        self._bump(target_id)
        return self._cohort_after(target_id, self._detach(target_id), entry)

    def _cohort_after(self, target_id: int, own: Cohort | None, entry: dict) -> Cohort:
        """A one-target cohort: the conditioning frames of ``own`` (the target's rows; None for a
        new memory) kept, up to ``max_cond_frames`` with the oldest dropped, and ``entry`` at
        ``own``'s next step (0 for a new memory)."""
        t = own.step if own is not None else 0
        cond = {**(own.bank[KINDS[0]] if own is not None else {}), t: entry}
        while len(cond) > self.max_cond_frames:
            del cond[min(cond)]
        return Cohort([target_id], {KINDS[0]: cond, KINDS[1]: {}}, t + 1)

    def _own_rows(self, target_id: int) -> Cohort | None:
        """A copy of the target's conditioning frames' rows as a one-target cohort (its tracked
        frames left out: a re-conditioning drops them), None for a target with no memory."""
        c = next((c for c in self._cohorts if target_id in c.ids), None)
        return None if c is None else take_rows(Cohort(c.ids, {**c.bank, KINDS[1]: {}}, c.step), [target_id], self._pos_enc)

    def _bump(self, target_id: int) -> None:
        """The target's memory changed: it gets a new version (never one used before)."""
        self._version += 1
        self._memory_versions[target_id] = self._version

    def _detach(self, target_id: int) -> Cohort | None:
        """Take a target's rows out of its cohort (the others' rows copied into a smaller cohort, an
        emptied cohort dropped); returns the target's own one-row cohort, None for a target with
        no memory yet."""
        for i, cohort in enumerate(self._cohorts):
            if target_id in cohort.ids:
                rest = [j for j in cohort.ids if j != target_id]
                own = take_rows(cohort, [target_id], self._pos_enc)
                if rest:
                    self._cohorts[i] = take_rows(cohort, rest, self._pos_enc)
                else:
                    del self._cohorts[i]
                return own
        return None

    def _track_cohorts(self, cohorts: list[Cohort], feats: FrameFeatures) -> tuple[dict[int, TrackResult], list]:
        """Every cohort tracked into ``feats`` at its next step, those of one memory shape batched
        (:func:`~vrs_node.core.joint_step.batched_steps`, at most ``max_batch`` targets a call);
        holes filled in the outputs, each cohort's rows stored as its next step (``keep_non_cond``
        kept). Returns the results and the ids of each call (:attr:`batches`)."""
        with self._single.autocast():
            steps = batched_steps(self.model, [(c.bank, c.step, len(c.ids)) for c in cohorts], feats,
                                  self._single.num_frames, self.max_batch)
        results, batches = {}, []
        for call, out in steps:
            out["pred_masks"] = self._single.fill_holes(out["pred_masks"])  # output only, as track()
            scores = out["object_score_logits"].reshape(-1).tolist()
            ids = [t for i in call for t in cohorts[i].ids]
            start = 0
            for cohort in (cohorts[i] for i in call):
                entry = self._scratch_tracker().compact(output_rows(out, start, start + len(cohort.ids)))
                cohort.append_tracked(with_pos_enc(entry, self._pos_enc), self.keep_non_cond)
                start += len(cohort.ids)
            results.update({t: TrackResult(out["pred_masks"][b:b + 1], scores[b], feats.image_hw, self.transform)
                            for b, t in enumerate(ids)})
            batches.append(tuple(ids))
        return results, batches

    def _check_installable(self, target_id) -> None:
        """A known target, or a new one that :meth:`add` would take."""
        if target_id in self._ids:
            check_known_target(target_id, self._ids)
        else:
            check_new_target(target_id, self._ids, self.max_targets)
