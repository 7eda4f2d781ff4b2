"""CLIP anchor scorer on a tiny open_clip model: embeddings, truncation, the anchor rule."""

from __future__ import annotations

import torch
from conftest import davis_sequence

from vrs_node.models.clip_anchor import ClipAnchorScorer


def test_embeddings_are_unit_norm_and_deterministic():
    frames, _, _ = davis_sequence("blackswan", 2)
    a, b = ClipAnchorScorer.tiny(seed=0), ClipAnchorScorer.tiny(seed=0)
    ea, eb = a.embed_image(frames[0]), b.embed_image(frames[0])
    assert ea.shape == (32,) and torch.isclose(ea.norm(), torch.tensor(1.0))
    assert torch.equal(ea, eb)
    assert not torch.equal(ea, a.embed_image(frames[1]))
    t = a.embed_text("the black swan")
    assert t.shape == (32,) and torch.isclose(t.norm(), torch.tensor(1.0))


def test_long_text_is_truncated_not_fatal():
    scorer = ClipAnchorScorer.tiny()
    long_text = "the swan that floats on the pond instead of flying away " * 40
    assert torch.equal(scorer.embed_text(long_text), scorer.embed_text(long_text + " and more words"))


def test_anchor_is_the_most_similar_frame():
    text = torch.nn.functional.normalize(torch.tensor([1.0, 0.0, 0.0]), dim=0)
    images = torch.nn.functional.normalize(torch.tensor([[0.0, 1, 0], [0.9, 0.1, 0], [0.5, 0.5, 0]]), dim=1)
    assert ClipAnchorScorer.anchor(images, text) == 1


def test_anchor_over_real_frames_matches_a_brute_force_search():
    frames, _, _ = davis_sequence("car-shadow", 6)
    scorer = ClipAnchorScorer.tiny(seed=1)
    images = torch.stack([scorer.embed_image(f) for f in frames])
    text = scorer.embed_text("the car driving out of the shadow")
    sims = [float(torch.dot(i, text)) for i in images]
    assert ClipAnchorScorer.anchor(images, text) == sims.index(max(sims))
