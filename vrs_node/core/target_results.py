"""TargetResults: one frame's per-target tracking results and the masks combined from them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from vrs_node.core.track_result import TrackResult


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
