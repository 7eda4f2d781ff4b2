"""Cohorts: SAM-2 memory banks of several targets batched along dim 0 (one row per target).

A :class:`Cohort` is sam2's ``output_dict`` for a batch of objects: ``cond_frame_outputs`` and
``non_cond_frame_outputs``, memory step -> stored entry, each per-target tensor
(:data:`BATCHED_KEYS`) holding one row per target, the memory positional encoding shared by all
(one stored tensor per level, expanded to the batch size as the predictor's
``_get_maskmem_pos_enc`` hands it to ``track_step``). Cohorts whose stored steps relative to their
next step are equal (their :meth:`Cohort.layout`) read memory alike, so they can be joined into one
batch (:func:`join_equal_layouts`); rows are copied out of one with :func:`take_rows`.
:class:`~vrs_node.core.targets.MultiTargetTracker` keeps its targets' memories as cohorts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vrs_node.core.track_result import TrackResult

BATCHED_KEYS = ("maskmem_features", "pred_masks", "obj_ptr", "object_score_logits")
"""The per-target tensors of a stored step (batched along dim 0); ``maskmem_pos_enc`` is shared."""
KINDS = ("cond_frame_outputs", "non_cond_frame_outputs")
"""A bank's two parts: conditioning frames and tracked frames."""


@dataclass
class Cohort:
    """Targets tracked as one batch: ``ids[b]`` is row ``b`` of every tensor in ``bank`` (sam2's
    ``output_dict`` form: ``cond_frame_outputs``/``non_cond_frame_outputs``, step -> entry);
    ``step`` is the memory step its next frame gets (each cohort keeps its own memory time)."""

    ids: list[int]
    bank: dict
    step: int

    def layout(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The stored frames' steps relative to ``step``: cohorts with equal layouts can be tracked
        as one batch (module docstring)."""
        return tuple(sorted(t - self.step for t in self.bank[KINDS[0]])), \
            tuple(sorted(t - self.step for t in self.bank[KINDS[1]]))

    def append_tracked(self, entry: dict, keep: int) -> None:
        """``entry`` stored as the tracked output of the next step (``step`` advances), tracked
        entries older than the last ``keep`` dropped."""
        t, self.step = self.step, self.step + 1
        tracked = self.bank[KINDS[1]]
        tracked[t] = entry
        for old in [k for k in tracked if k <= t - keep]:
            del tracked[old]

    def stored_size(self) -> tuple[int, int]:
        """(stored frame outputs summed over the targets, bytes of their per-target tensors)."""
        entries = [e for kind in KINDS for e in self.bank[kind].values()]
        nbytes = sum(e[k].numel() * e[k].element_size() for e in entries for k in BATCHED_KEYS)
        return len(entries) * len(self.ids), nbytes

    def shifted(self, step: int) -> dict:
        """The bank with every step moved by ``step - self.step`` (the same relative layout)."""
        delta = step - self.step
        return {kind: {t + delta: entry for t, entry in self.bank[kind].items()} for kind in KINDS}


@dataclass
class PreparedCatchUp:
    """Target ``target_id`` conditioned on a past keyframe and tracked through buffered frames
    (:meth:`~vrs_node.core.targets.MultiTargetTracker.prepare_catch_up`), waiting to become its
    memory (``install``). ``cohort``: that memory (one row); ``results``: the keyframe's and each
    tracked frame's; ``basis``: the version of the target's memory whose conditioning frames it
    kept (None: a new memory, built on nothing)."""

    target_id: int
    cohort: Cohort
    results: list[TrackResult]
    basis: int | None


def with_pos_enc(entry: dict, pos_enc: Sequence[torch.Tensor]) -> dict:
    """``entry`` with the shared ``pos_enc`` (one 1 x C x H x W tensor per level) expanded (a view,
    no copy) to the entry's batch size."""
    batch = entry["obj_ptr"].shape[0]
    return {**entry, "maskmem_pos_enc": [p.expand(batch, -1, -1, -1) for p in pos_enc]}


def rebatch(banks: list[dict], combine: Callable[[list[torch.Tensor]], torch.Tensor],
            pos_enc: Sequence[torch.Tensor]) -> dict:
    """A bank of the same layout as ``banks`` (all alike) whose every per-target tensor is
    ``combine`` of theirs (a list, in order); ``maskmem_pos_enc`` expanded to the new size."""
    return {kind: {t: with_pos_enc({k: combine([bank[kind][t][k] for bank in banks]) for k in BATCHED_KEYS},
                                   pos_enc)
                   for t in banks[0][kind]}
            for kind in KINDS}


def take_rows(cohort: Cohort, ids: list[int], pos_enc: Sequence[torch.Tensor]) -> Cohort:
    """A cohort of some of ``cohort``'s targets: their rows copied out of every tensor, in the
    order of ``ids``; the values are unchanged (bit for bit)."""
    entry = next(e for kind in KINDS for e in cohort.bank[kind].values())  # a cohort holds a frame
    rows = torch.tensor([cohort.ids.index(i) for i in ids], device=entry["obj_ptr"].device)
    return Cohort(list(ids), rebatch([cohort.bank], lambda ts: ts[0].index_select(0, rows), pos_enc), cohort.step)


def first_fit(items: Sequence, key: Callable, size: Callable[[object], int], max_batch: int = 0) -> list[list]:
    """``items`` packed by ``key``: each item joins the first pack of its key whose sizes plus its
    own stay within ``max_batch`` (0: no limit), else starts a new one; packs in order of first
    appearance, items in order within each."""
    groups: dict[object, list[list]] = {}
    for item in items:
        packs = groups.setdefault(key(item), [])
        pack = next((p for p in packs if not max_batch or sum(map(size, p)) + size(item) <= max_batch), None)
        if pack is None:
            packs.append([item])
        else:
            pack.append(item)
    return [pack for packs in groups.values() for pack in packs]


def join_equal_layouts(cohorts: list[Cohort], pos_enc: Sequence[torch.Tensor], max_batch: int = 0) -> list[Cohort]:
    """``cohorts`` with those of equal layouts joined (rows concatenated in order, banks moved to
    the latest of their steps: never below 0), in order of first appearance; with ``max_batch`` > 0
    each cohort joins the first one of its layout that has room for its rows (:func:`first_fit`),
    so no joined cohort has more than ``max_batch`` targets (0: no limit)."""
    packs = first_fit(cohorts, Cohort.layout, lambda c: len(c.ids), max_batch)
    return [_joined(pack, pos_enc) for pack in packs]


def _joined(pack: list[Cohort], pos_enc: Sequence[torch.Tensor]) -> Cohort:
    """One cohort of the rows of ``pack`` (cohorts of one layout), in order."""
    if len(pack) == 1:
        return pack[0]
    step = max(c.step for c in pack)
    banks = [c.shifted(step) for c in pack]
    return Cohort([i for c in pack for i in c.ids], rebatch(banks, torch.cat, pos_enc), step)
