"""TDA and TKS against a direct transcription of the formulas, and cases with a known keyframe
(TKS through :func:`~vrs_node.core.grounding.select_keyframes`, as the grounders run it)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_tracker

from vrs_node.core.frames import FrameWindow
from vrs_node.core.grounding import Reasoning, select_keyframes
from vrs_node.core.vrshq import keyframe_scores, temporal_dynamic_aggregation
from vrs_node.models.prompt import clean_instruction


def transcribed_tda(seg, tak, alpha):
    """TAK' = TAK + alpha * sum_i softmax_i(cos(SEG_i, TAK)) SEG_i, written out in plain Python."""
    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / max(math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)), 1e-8)
    sims = [cos(s, tak) for s in seg]
    exps = [math.exp(s) for s in sims]
    weights = [e / sum(exps) for e in exps]
    fused = [t + alpha * sum(w * s[d] for w, s in zip(weights, seg)) for d, t in enumerate(tak)]
    return fused, weights


def test_tda_equals_the_formula_on_fixed_tensors():
    gen = torch.Generator().manual_seed(7)
    seg = torch.randn(5, 256, generator=gen, dtype=torch.float64)
    tak = torch.randn(256, generator=gen, dtype=torch.float64)
    fused, weights = temporal_dynamic_aggregation(seg, tak, alpha=0.1)
    want_fused, want_weights = transcribed_tda(seg.tolist(), tak.tolist(), 0.1)
    assert torch.allclose(weights, torch.tensor(want_weights, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(fused, torch.tensor(want_fused, dtype=torch.float64), atol=1e-12)
    assert math.isclose(float(weights.sum()), 1.0)


def test_tda_weights_follow_similarity_and_alpha_zero_is_identity():
    tak = torch.tensor([1.0, 0.0])
    seg = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # cos = 1, 0, -1
    fused, weights = temporal_dynamic_aggregation(seg, tak, alpha=0.0)
    assert torch.equal(fused, tak)
    assert weights[0] > weights[1] > weights[2]
    assert math.isclose(float(weights[0] / weights[2]), math.e ** 2, rel_tol=1e-6)
    with pytest.raises(ValueError):
        temporal_dynamic_aggregation(seg, torch.zeros(3))


def test_keyframe_scores_formula():
    logits = torch.tensor([2.0, -1.0, 0.5])
    weights = torch.tensor([0.2, 0.5, 0.3])
    exps = [math.exp(v) for v in logits.tolist()]
    want = [e / sum(exps) + w for e, w in zip(exps, weights.tolist())]
    assert torch.allclose(keyframe_scores(logits, weights), torch.tensor(want))


def select_keyframe(tracker, candidates, token, tda_weights):
    """TKS of one reasoning over ``candidates`` (features), its lattice frames 0.. of a fresh
    window; the fields TKS does not read are placeholders."""
    window = FrameWindow(len(candidates))
    dense = [window.append(np.zeros((8, 8, 3), np.uint8), i) for i in range(len(candidates))]
    reasoning = Reasoning(instruction=clean_instruction("the swan"), anchor=0, dense=dense,
                          candidates=list(candidates), sparse_frames=[], input_ids=[], tokens=None, token=token,
                          tda_weights=tda_weights, timings_s={})
    (grounding,) = select_keyframes(tracker, [reasoning])
    return grounding


def test_select_keyframe_picks_the_known_frame(blackswan):
    """Constructed cases: identical candidates (equal object scores) -> the largest TDA weight
    wins and a tie goes to the earliest; equal TDA weights -> the highest object score wins."""
    frames, _, _ = blackswan
    tracker = make_tracker(128)
    feats = tracker.encode(frames[0])
    token = torch.randn(256, generator=torch.Generator().manual_seed(3))
    same = [feats, feats, feats]  # identical frames -> identical object scores
    chosen = select_keyframe(tracker, same, token, torch.tensor([0.1, 0.7, 0.2]))
    assert chosen.keyframe == 1
    tied = select_keyframe(tracker, same, token, torch.full((3,), 1 / 3))
    assert tied.keyframe == 0, "ties go to the earliest candidate, as in VRS-HQ"
    others = [tracker.encode(f) for f in frames[1:4]]
    scored = [tracker.decode_token(f, token).object_score for f in others]
    best = max(range(3), key=lambda i: (scored[i], -i))
    chosen = select_keyframe(tracker, others, token, torch.full((3,), 1 / 3))
    assert chosen.keyframe == best and chosen.tks_object_scores == pytest.approx(scored, abs=1e-5)
    assert chosen.object_score == scored[best]
    assert tracker.state_size() == (0, 0), "keyframe selection must not touch the memory bank"


def test_select_keyframe_does_not_encode_frames(blackswan, monkeypatch):
    frames, _, _ = blackswan
    tracker = make_tracker(128)
    feats = [tracker.encode(f) for f in frames[:3]]
    calls = []
    monkeypatch.setattr(tracker.model, "forward_image", lambda *a: calls.append(1))
    select_keyframe(tracker, feats, torch.randn(256), torch.full((3,), 1 / 3))
    assert not calls
