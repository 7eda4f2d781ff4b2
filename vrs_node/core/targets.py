"""Several targets at once: one image encoding per frame, one bounded SAM-2 memory bank per target.

:class:`MultiTargetTracker` tracks up to ``max_targets`` targets (integer ids 1-255) through a
stream. Per frame the image encoder runs once (:meth:`StreamingTracker.encode`); each target keeps
its own memory bank with :class:`~vrs_node.core.tracker.StreamingTracker`'s bounds (at most
``max_cond_frames`` conditioning frames, the last ``keep_non_cond`` tracked outputs) and gets its
own result (:class:`~vrs_node.core.tracker.TrackResult`) per frame.

Batching: targets whose banks hold frames at the same memory steps (the same *layout*) form a
*cohort*; a cohort's bank stores each step's tensors batched along dim 0 (one row per target) and
one ``SAM2Base.track_step`` call tracks the whole cohort, the frame's features expanded along the
batch dimension as sam2's ``SAM2VideoPredictor._get_image_feature`` expands them. Targets
conditioned together (same step, same earlier conditioning steps) join one cohort; a target added
later, or re-conditioned alone, has a layout of its own and so its own cohort. Cohorts whose
layouts become equal are joined (concatenated along dim 0); removing a target copies the other
rows out of its cohort's tensors and leaves their values unchanged.

Conditioning a target runs alone (batch 1, through the one-target tracker, exactly
:meth:`StreamingTracker.condition`): prompts differ in shape, and sam2's predictor conditions
each object alone too (``add_new_mask``/``add_new_points_or_box`` on "the slice of a single
object"). It never reads memory (``is_init_cond_frame``), so where it runs does not matter.

Memory time: each cohort counts its own steps (one per frame it is conditioned on or tracked
into), as a one-target :class:`StreamingTracker` does: a new target's memory starts at step 0, a
re-conditioned one continues from its cohort's step. SAM-2 reads memory by step *differences*
(``_prepare_memory_conditioned_features``: the closest conditioning frames, the previous
``num_maskmem - 1`` steps at ``memory_temporal_stride_for_eval`` = 1, object pointers by
``frame_idx - t``) and stops at steps < 0, so a bank moved to later steps (to join a cohort whose
relative layout is equal) reads the same memory. That lets one target catch up alone through
buffered frames (:meth:`MultiTargetTracker.catch_up`) while the others are untouched.

Prompts are queued (:meth:`~MultiTargetTracker.add`, :meth:`~MultiTargetTracker.set_prompt`) and
applied on the next frame given to ``track``; the other targets are tracked into that frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from vrs_node.core.frames import Frame
from vrs_node.core.prompts import MaskPrompt, PointsPrompt, Prompt, TokenPrompt
from vrs_node.core.target_specs import DEFAULT_MAX_TARGETS, MAX_TARGET_ID
from vrs_node.core.tracker import FrameFeatures, StreamingTracker, TrackResult
from vrs_node.models.sam2_build import SamImageTransform


_BATCHED_KEYS = ("maskmem_features", "pred_masks", "obj_ptr", "object_score_logits")
"""The per-target tensors of a stored step (batched along dim 0); ``maskmem_pos_enc`` is shared."""
_KINDS = ("cond_frame_outputs", "non_cond_frame_outputs")


class TargetPromptError(ValueError):
    """A queued prompt that could not condition its target (``target_id``) on the frame."""

    def __init__(self, target_id: int, error: Exception):
        super().__init__(f"target {target_id}: {error}")
        self.target_id = target_id


@dataclass(frozen=True)
class TargetResults(Mapping):
    """One frame's results: a read-only mapping target id -> :class:`TrackResult` (ids ascending),
    plus the camera size ``image_hw`` for the combined masks."""

    by_id: dict[int, TrackResult]
    image_hw: tuple[int, int]

    def __getitem__(self, target_id: int) -> TrackResult:
        return self.by_id[target_id]

    def __iter__(self):
        return iter(self.by_id)

    def __len__(self) -> int:
        return len(self.by_id)

    def instance_map(self) -> np.ndarray:
        """H x W uint8 at camera resolution: each pixel holds the id of the target whose mask
        (``camera_logits() > 0``) covers it, 0 where none does. Where masks overlap the target with
        the higher object score wins (equal scores: the lower id)."""
        if not self.by_id:
            return np.zeros(self.image_hw, np.uint8)
        if len(self.by_id) == 1:  # the same pixels, without stacking
            (target_id, result), = self.by_id.items()
            return result.mask().view(np.uint8) * np.uint8(target_id)
        ids = sorted(self.by_id)
        logits = torch.stack([self.by_id[i].camera_logits() for i in ids])
        scores = torch.tensor([self.by_id[i].object_score for i in ids], device=logits.device)
        present = logits > 0
        key = torch.where(present, scores[:, None, None], -torch.inf)
        winner = torch.tensor(ids, dtype=torch.uint8, device=logits.device)[key.argmax(0)]
        return torch.where(present.any(0), winner, 0).cpu().numpy()

    def union_mask(self) -> np.ndarray:
        """H x W bool: pixels any target's mask covers (``instance_map() > 0``)."""
        return self.instance_map() > 0


@dataclass
class _Cohort:
    """Targets tracked as one batch: ``ids[b]`` is row ``b`` of every tensor in ``bank`` (sam2's
    ``output_dict`` form: ``cond_frame_outputs``/``non_cond_frame_outputs``, step -> entry);
    ``step`` is the memory step its next frame gets (each cohort keeps its own memory time)."""

    ids: list[int]
    bank: dict
    step: int

    def layout(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The stored frames' steps relative to ``step``: cohorts with equal layouts can be tracked
        as one batch (module docstring)."""
        return tuple(sorted(t - self.step for t in self.bank[_KINDS[0]])), \
            tuple(sorted(t - self.step for t in self.bank[_KINDS[1]]))

    def shifted(self, step: int) -> dict:
        """The bank with every step moved by ``step - self.step`` (the same relative layout)."""
        delta = step - self.step
        return {kind: {t + delta: entry for t, entry in self.bank[kind].items()} for kind in _KINDS}


class MultiTargetTracker:
    """Several SAM-2 targets tracked through one stream, batched where their memories align.

    Typical use: ``tracker.add(1, prompt_a)``; ``tracker.add(2, prompt_b)``; then per frame
    ``results = tracker.track(tracker.encode(image))`` -- queued prompts are applied on that frame,
    every other target is tracked into it. ``results[i]`` is target ``i``'s :class:`TrackResult`;
    ``results.instance_map()`` the combined id map.

    ``max_targets`` bounds the number of targets (added, queued or tracked). ``single``, a
    :class:`StreamingTracker`, encodes frames and conditions targets; its settings
    (``max_cond_frames``, ``num_frames``, ``fill_hole_area``, ``memory_dtype``,
    ``autocast_dtype``) mean the same per target, and its own memory is scratch (every
    conditioning output is taken out of it, so it holds nothing between calls).

    Refusals (ValueError, with the reason; nothing changes): an id that is not an int in 1..255, a
    duplicate id on :meth:`add`, more than ``max_targets`` targets, an unknown id on
    :meth:`set_prompt` or :meth:`remove`. A prompt that is not a Prompt: TypeError, nothing changes.
    """

    def __init__(self, single: StreamingTracker, max_targets: int = DEFAULT_MAX_TARGETS):
        if not 1 <= max_targets <= MAX_TARGET_ID:
            raise ValueError(f"max_targets must be in 1..{MAX_TARGET_ID}, got {max_targets}")
        self._single = single
        self.model: torch.nn.Module = single.model
        self.transform: SamImageTransform = single.transform
        self.max_targets = max_targets
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
    def ids(self) -> tuple[int, ...]:
        """Every target's id, ascending (tracked ones and those whose first prompt is queued)."""
        return tuple(sorted(self._ids))

    @property
    def cohorts(self) -> list[tuple[int, ...]]:
        """The tracked targets' ids grouped as they are batched (one tuple per ``track_step`` call)."""
        return [tuple(c.ids) for c in self._cohorts]

    def reset(self) -> None:
        """Forget every target, queued prompt and memory; memory time restarts at 0."""
        self._ids: set[int] = set()
        self._pending: dict[int, Prompt] = {}
        self._cohorts: list[_Cohort] = []

    def encode(self, image: np.ndarray, camera_hw: tuple[int, int] | None = None) -> FrameFeatures:
        """:meth:`StreamingTracker.encode`: the image encoder, once per frame for all targets."""
        return self._single.encode(image, camera_hw)

    def encode_frame(self, frame: Frame) -> FrameFeatures:
        """:meth:`StreamingTracker.encode_frame` of a window frame."""
        return self._single.encode_frame(frame)

    def add(self, target_id: int, prompt: Prompt) -> None:
        """A new target, conditioned with ``prompt`` on the next frame given to :meth:`track` (its
        memory starts there). Refused (class docstring): a bad or duplicate id, too many targets."""
        self._check_new(target_id)
        self._pending[int(target_id)] = _checked_prompt(prompt)
        self._ids.add(int(target_id))

    def cancel(self, target_id: int) -> None:
        """Drop target ``target_id``'s queued prompt; a target with no memory yet is forgotten."""
        self._check_known(target_id)
        self._pending.pop(target_id, None)
        if not any(target_id in cohort.ids for cohort in self._cohorts):
            self._ids.discard(target_id)

    @torch.inference_mode()
    def catch_up(self, target_id: int, keyframe: FrameFeatures, prompt: Prompt,
                 following: list[FrameFeatures]) -> list[TrackResult]:
        """Condition one target on a past frame (``keyframe``) and track it alone through the
        ``following`` frames (the buffered ones after it, not yet the current frame): exactly
        :meth:`StreamingTracker.catch_up` on that target's memory. An unknown ``target_id`` is
        added (refused as :meth:`add` refuses), a known one re-conditioned as :meth:`set_prompt`
        does (a queued prompt of it is dropped). The other targets are untouched; the next
        :meth:`track` tracks this one into the current frame with them. Returns the keyframe's and
        the following frames' results."""
        prompt = _checked_prompt(prompt)
        if target_id in self._ids:
            self._check_known(target_id)
        else:
            self._check_new(target_id)
        result, entry = self._condition(keyframe, prompt)
        self._ids.add(int(target_id))
        self._pending.pop(target_id, None)
        cohort = self._conditioned_cohort(target_id, entry)
        self._cohorts.append(cohort)
        results = [result]
        for feats in following:
            results.append(self._track_cohort(cohort, feats)[target_id])
        self._join_equal_layouts()
        return results

    def set_prompt(self, target_id: int, prompt: Prompt) -> None:
        """Re-condition a known target with ``prompt`` on the next frame given to :meth:`track`, as
        :meth:`StreamingTracker.condition` does (its tracked memory is dropped, its conditioning
        frames kept up to ``max_cond_frames``); the target leaves its cohort there. For a target
        whose first prompt is still queued, ``prompt`` replaces it."""
        self._check_known(target_id)
        self._pending[int(target_id)] = _checked_prompt(prompt)

    def remove(self, target_id: int) -> None:
        """Forget a target, its queued prompt and its memory; the rows of the other targets of its
        cohort are copied out unchanged (bit for bit)."""
        self._check_known(target_id)
        self._detach(target_id)
        self._ids.discard(target_id)
        self._pending.pop(target_id, None)

    @torch.inference_mode()
    def track(self, feats: FrameFeatures) -> TargetResults:
        """Process one new frame (one memory step): targets with a queued prompt are conditioned on
        it, every other target is tracked into it from its memory, one batched ``track_step`` per
        cohort. Returns every tracked target's result (none before the first prompt).

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
        for cohort in self._cohorts:
            results.update(self._track_cohort(cohort, feats))
        self._cohorts.extend(new_cohorts)
        self._pending.clear()
        self._join_equal_layouts()
        return TargetResults({i: results[i] for i in sorted(results)}, feats.image_hw)

    def stored_frames(self, target_id: int) -> tuple[int, int]:
        """(conditioning frames, tracked outputs) in target ``target_id``'s memory ((0, 0) before
        its first prompt is applied); ValueError for an unknown id."""
        self._check_known(target_id)
        cohort = next((c for c in self._cohorts if target_id in c.ids), None)
        return (0, 0) if cohort is None else (len(cohort.bank[_KINDS[0]]), len(cohort.bank[_KINDS[1]]))

    def state_size(self) -> tuple[int, int]:
        """(stored frame outputs summed over targets, bytes of every tensor the memory banks hold,
        the one shared ``maskmem_pos_enc`` counted once). Per target the outputs are bounded by
        ``max_cond_frames + keep_non_cond``, as :meth:`StreamingTracker.state_size`'s."""
        entries = nbytes = 0
        for cohort in self._cohorts:
            for kind in _KINDS:
                for entry in cohort.bank[kind].values():
                    entries += len(cohort.ids)
                    nbytes += sum(entry[k].numel() * entry[k].element_size() for k in _BATCHED_KEYS)
        if self._cohorts:
            nbytes += sum(p.numel() * p.element_size() for p in self._single.maskmem_pos_enc)
        return entries, nbytes

    def _condition(self, feats: FrameFeatures, prompt: Prompt) -> tuple[TrackResult, dict]:
        """:meth:`StreamingTracker.condition` on the one-target tracker: the result and the stored
        entry (taken out of its scratch memory, so it holds nothing between calls)."""
        result = self._single.condition(feats, prompt)
        entry = self._single.pop_newest_conditioning()
        return result, entry

    def _conditioned_cohort(self, target_id: int, entry: dict) -> _Cohort:
        """The target's cohort after a conditioning whose stored ``entry`` is given: the target
        taken out of its old cohort, its conditioning frames kept (up to ``max_cond_frames``,
        oldest dropped), the new one at its old cohort's next step (0 for a new target)."""
        own = self._detach(target_id)
        t = own.step if own is not None else 0
        cond = {**(own.bank[_KINDS[0]] if own is not None else {}), t: entry}
        while len(cond) > self.max_cond_frames:
            del cond[min(cond)]
        return _Cohort([target_id], {_KINDS[0]: cond, _KINDS[1]: {}}, t + 1)

    def _detach(self, target_id: int) -> _Cohort | None:
        """Take a target's rows out of its cohort (the others' rows copied into a smaller cohort, an
        emptied cohort dropped); returns the target's own one-row cohort, None for a target with
        no memory yet."""
        for i, cohort in enumerate(self._cohorts):
            if target_id in cohort.ids:
                rest = [j for j in cohort.ids if j != target_id]
                own = self._take(cohort, [target_id])
                if rest:
                    self._cohorts[i] = self._take(cohort, rest)
                else:
                    del self._cohorts[i]
                return own
        return None

    def _track_cohort(self, cohort: _Cohort, feats: FrameFeatures) -> dict[int, TrackResult]:
        """One batched ``SAM2Base.track_step`` (memory encoded inside) for a cohort at its next
        step: the frame's features expanded to the cohort's size; holes filled in the outputs, the
        entry stored and the oldest tracked entries dropped as :meth:`StreamingTracker.track` does."""
        t, cohort.step = cohort.step, cohort.step + 1
        batch = len(cohort.ids)
        with self._single.autocast():
            out = self.model.track_step(
                frame_idx=t, is_init_cond_frame=False,
                current_vision_feats=[f.expand(-1, batch, -1) for f in feats.vision_feats],
                current_vision_pos_embeds=[feats.top_pos_embed.expand(-1, batch, -1)],
                feat_sizes=list(feats.feat_sizes), point_inputs=None, mask_inputs=None,
                output_dict=cohort.bank, num_frames=self._single.num_frames, run_mem_encoder=True)
        out["pred_masks"] = self._single.fill_holes(out["pred_masks"])  # output only, as track()
        non_cond = cohort.bank[_KINDS[1]]
        non_cond[t] = self._with_pos_enc(self._single.compact(out))
        for old in [k for k in non_cond if k <= t - self.keep_non_cond]:
            del non_cond[old]
        scores = out["object_score_logits"].reshape(-1).tolist()
        return {i: TrackResult(out["pred_masks"][b:b + 1], scores[b], feats.image_hw, self.transform)
                for b, i in enumerate(cohort.ids)}

    def _take(self, cohort: _Cohort, ids: list[int]) -> _Cohort:
        """A cohort of some of ``cohort``'s targets: their rows copied out of every tensor."""
        rows = torch.tensor([cohort.ids.index(i) for i in ids], device=self.model.device)
        return _Cohort(list(ids), self._rebatch([cohort.bank], lambda ts: ts[0].index_select(0, rows)), cohort.step)

    def _join_equal_layouts(self) -> None:
        """Join cohorts whose banks hold frames at the same relative steps into one (rows
        concatenated in order, banks moved to the latest of their steps: never below 0)."""
        groups: dict[tuple, list[_Cohort]] = {}
        for cohort in self._cohorts:
            groups.setdefault(cohort.layout(), []).append(cohort)
        self._cohorts = [group[0] if len(group) == 1 else self._joined(group) for group in groups.values()]

    def _joined(self, group: list[_Cohort]) -> _Cohort:
        step = max(c.step for c in group)
        banks = [c.shifted(step) for c in group]
        return _Cohort([i for c in group for i in c.ids], self._rebatch(banks, torch.cat), step)

    def _rebatch(self, banks: list[dict], combine) -> dict:
        """A bank of the same layout as ``banks`` (all alike) whose every per-target tensor is
        ``combine`` of theirs (a list, in order); ``maskmem_pos_enc`` re-expanded to the new size."""
        return {kind: {t: self._with_pos_enc({k: combine([bank[kind][t][k] for bank in banks])
                                              for k in _BATCHED_KEYS})
                       for t in banks[0][kind]}
                for kind in _KINDS}

    def _with_pos_enc(self, entry: dict) -> dict:
        """``entry`` with the shared ``maskmem_pos_enc`` expanded (a view, no copy) to its batch
        size, as the predictor's ``_get_maskmem_pos_enc`` hands it to ``track_step``."""
        batch = entry["obj_ptr"].shape[0]
        return {**entry, "maskmem_pos_enc": [p.expand(batch, -1, -1, -1) for p in self._single.maskmem_pos_enc]}

    def _check_id(self, target_id) -> None:
        if isinstance(target_id, bool) or not isinstance(target_id, (int, np.integer)):
            raise ValueError(f"a target id is an int in 1..{MAX_TARGET_ID}, got {target_id!r}")
        if not 1 <= target_id <= MAX_TARGET_ID:
            raise ValueError(f"a target id is in 1..{MAX_TARGET_ID} (0 is the background), got {target_id}")

    def _check_new(self, target_id) -> None:
        self._check_id(target_id)
        if target_id in self._ids:
            raise ValueError(f"target id {target_id} is already tracked: remove it first or use set_prompt")
        if len(self._ids) >= self.max_targets:
            raise ValueError(f"already {len(self._ids)} targets, the most this tracker takes (max_targets)")

    def _check_known(self, target_id) -> None:
        self._check_id(target_id)
        if target_id not in self._ids:
            raise ValueError(f"no target with id {target_id!r}; targets: {sorted(self._ids)}")


def _checked_prompt(prompt) -> Prompt:
    """``prompt`` if it is a Prompt, else TypeError (as :meth:`StreamingTracker.condition` says)."""
    if not isinstance(prompt, (MaskPrompt, PointsPrompt, TokenPrompt)):
        raise TypeError(f"a prompt is a PointsPrompt, MaskPrompt or TokenPrompt, not {type(prompt).__name__}")
    return prompt
