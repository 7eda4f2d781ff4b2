"""VRS-HQ's token fusion and keyframe choice: Temporal Dynamic Aggregation and Token-driven
Keyframe Selection (REFERENCE_VRSHQ_VIDEOLISA.md §1.7-1.8; VRS-HQ
``model/VISA_multiseg_cliptree_bf16.py``).

Small pure functions over tensors; the keyframe selection that scores candidate frames with the
SAM-2 decoder on their already-computed image features (no frame is encoded again, where VRS-HQ
re-encodes every candidate) is :func:`vrs_node.core.grounding.select_keyframes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vrs_node.core.track_result import TrackResult

TDA_ALPHA = 0.1
"""VRS-HQ's alpha (``evaluation_multiseg.py``; its code comment says it was 0.25 before)."""


def temporal_dynamic_aggregation(seg_tokens: torch.Tensor, tak_token: torch.Tensor,
                                 alpha: float = TDA_ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse the per-frame SEG tokens into the temporal TAK token.

    With s_i = cos(SEG_i, TAK) (``F.cosine_similarity``, eps 1e-8) and w = softmax_i(s)
    (temperature 1)::

        TAK' = TAK + alpha * sum_i w_i * SEG_i

    ``seg_tokens``: (N, D); ``tak_token``: (D,). Returns (TAK' (D,), w (N,)); w is reused by
    :func:`keyframe_scores`.
    """
    if seg_tokens.ndim != 2 or tak_token.shape != seg_tokens.shape[1:] or len(seg_tokens) == 0:
        raise ValueError(f"expected SEG tokens (N>0, D) and a TAK token (D,), got "
                         f"{tuple(seg_tokens.shape)} and {tuple(tak_token.shape)}")
    weights = torch.softmax(F.cosine_similarity(seg_tokens, tak_token[None], dim=1), dim=0)
    return tak_token + alpha * (weights @ seg_tokens), weights


def keyframe_scores(object_score_logits: torch.Tensor, tda_weights: torch.Tensor) -> torch.Tensor:
    """TKS score per candidate: softmax over candidates of the SAM-2 object-score logits (each
    candidate decoded with TAK' as a fresh conditioning frame) plus its TDA weight (1 : 1)."""
    if object_score_logits.shape != tda_weights.shape or object_score_logits.ndim != 1:
        raise ValueError(f"need one object score and one TDA weight per candidate, got "
                         f"{tuple(object_score_logits.shape)} and {tuple(tda_weights.shape)}")
    return torch.softmax(object_score_logits.float(), dim=0) + tda_weights.float()


@dataclass(frozen=True)
class Keyframe:
    """The chosen candidate (``position`` in the candidate list), every candidate's score and
    object-score logit, and the keyframe's decode with TAK' (its mask and object score)."""

    position: int
    scores: torch.Tensor
    object_scores: torch.Tensor
    result: TrackResult


def choose_keyframe(object_scores: Sequence[float], tda_weights: torch.Tensor) -> tuple[int, torch.Tensor]:
    """TKS's choice given each candidate's object-score logit with TAK': (its position, the
    :func:`keyframe_scores`), the argmax; ties go to the earliest candidate, as
    ``list.index(max(...))`` does in VRS-HQ."""
    if len(object_scores) != len(tda_weights) or not object_scores:
        raise ValueError(f"{len(object_scores)} candidates but {len(tda_weights)} TDA weights")
    scores = keyframe_scores(torch.tensor(list(object_scores)), tda_weights)
    return int(torch.argmax(scores)), scores
