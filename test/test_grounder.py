"""One grounding query over a frame window (tiny random models): anchor, lattice, SEG -> frame
mapping, TDA + TKS, per-frame caching (nothing encoded twice)."""

from __future__ import annotations

import pytest
import torch

from conftest import davis_sequence, make_grounder, make_tracker
from vrs_node.core.frames import CLIP_KEY, MLLM_KEY, SAM2_KEY, FrameWindow
from vrs_node.core.grounder import GrounderConfig
from vrs_node.core.sampling import anchor_lattice, sparse_sample
from vrs_node.core.vrshq import keyframe_scores, temporal_dynamic_aggregation
from vrs_node.models.prompt import build_prompt, clean_instruction, tokenize_prompt


@pytest.fixture(scope="module")
def frames():
    return davis_sequence("blackswan", 14)[0]


def filled_window(tracker, frames, capacity=None):
    window = FrameWindow(capacity or len(frames))
    for i, image in enumerate(frames):
        frame = window.append(image, 1000 * i)
        window.set_feature(frame.index, SAM2_KEY, tracker.encode(image))
    return window


class Counting:
    """Wrap a callable and count the items it is asked to compute."""

    def __init__(self, fn, per_call=lambda args: 1):
        self.fn, self.per_call, self.count = fn, per_call, 0

    def __call__(self, *args, **kwargs):
        self.count += self.per_call(args)
        return self.fn(*args, **kwargs)


def test_query_follows_the_vrshq_pipeline(frames):
    tracker = make_tracker(128)
    grounder = make_grounder(tracker, max_dense_frames=5)
    window = filled_window(tracker, frames)
    instruction = clean_instruction("The black swan")
    g = grounder.ground(window, instruction)

    text = grounder.anchor_scorer.embed_text(instruction.text)
    sims = torch.stack([grounder.anchor_scorer.embed_image(f) for f in frames]) @ text
    assert g.anchor == int(torch.argmax(sims))
    assert g.dense_frames == anchor_lattice(len(frames), g.anchor, 5) and g.anchor in g.dense_frames
    assert g.sparse_frames == []
    # The SEG -> frame mapping drives TDA; TKS scores are recomputed from the pieces.
    dense_tokens = [window.get_feature(i, MLLM_KEY) for i in g.dense_frames]
    ids = tokenize_prompt(build_prompt(instruction, len(g.dense_frames)), grounder.tokenizer)
    out = grounder.mllm(ids, dense_tokens, grounder.seg_id, grounder.tak_id)
    tak, weights = temporal_dynamic_aggregation(out.seg, out.tak)
    torch.testing.assert_close(torch.tensor(g.tda_weights), weights)
    scores = keyframe_scores(torch.tensor([tracker.decode_token(window.get_feature(i, SAM2_KEY), tak).object_score
                                           for i in g.dense_frames]), weights)
    torch.testing.assert_close(torch.tensor(g.tks_scores), scores)
    assert g.keyframe == g.dense_frames[int(torch.argmax(scores))]
    assert g.keyframe_stamp_ns == 1000 * g.keyframe
    assert g.mask.shape == frames[0].shape[:2] and g.mask.dtype == bool
    assert g.keyframe_features is window.get_feature(g.keyframe, SAM2_KEY)
    assert set(g.timings_s) == {"clip_anchor", "mllm_frame_tokens", "mllm_prefill", "tks"}


def test_per_frame_inputs_are_computed_once_and_sam2_never_again(frames):
    tracker = make_tracker(128)
    grounder = make_grounder(tracker, max_dense_frames=11, sparse_frames=4)
    window = filled_window(tracker, frames[:8], capacity=8)
    clip = grounder.anchor_scorer.embed_image = Counting(grounder.anchor_scorer.embed_image)
    tokens = grounder.mllm.frame_tokens = Counting(grounder.mllm.frame_tokens, lambda args: len(args[0]))
    text = grounder.anchor_scorer.embed_text = Counting(grounder.anchor_scorer.embed_text)
    encoder = tracker.model.forward_image = Counting(tracker.model.forward_image)
    instruction = clean_instruction("the swan")

    first = grounder.ground(window, instruction)
    assert (clip.count, tokens.count, text.count, encoder.count) == (8, 8, 1, 0)
    second = grounder.ground(window, instruction)
    assert (clip.count, tokens.count, text.count, encoder.count) == (8, 8, 1, 0)
    assert first.keyframe == second.keyframe and first.tks_scores == second.tks_scores
    # New frames: only they are computed; evicted frames take their cache entries along.
    for i, image in enumerate(frames[8:11]):
        frame = window.append(image, 10_000 + i)
        window.set_feature(frame.index, SAM2_KEY, tracker.encode(image))
    grounder.ground(window, instruction)
    assert clip.count == 11 and tokens.count <= 11 and text.count == 1
    assert window.feature_count() <= 3 * window.capacity
    assert not any(window.has_feature(i, CLIP_KEY) for i in range(3))


def test_sparse_frames_are_the_videolisa_sample_of_the_window(frames):
    tracker = make_tracker(128)
    grounder = make_grounder(tracker, max_dense_frames=3, sparse_frames=6)
    window = filled_window(tracker, frames)
    g = grounder.ground(window, clean_instruction("the swan"))
    assert g.sparse_frames == sparse_sample(len(frames), 6)
    assert len(g.dense_frames) == 3


def test_frames_without_sam2_features_are_left_out_and_an_empty_window_is_an_error(frames):
    tracker = make_tracker(128)
    grounder = make_grounder(tracker)
    window = FrameWindow(4)
    window.append(frames[0], 0)
    with pytest.raises(ValueError, match="no encoded frame"):
        grounder.ground(window, clean_instruction("the swan"))
    frame = window.append(frames[1], 1)
    window.set_feature(frame.index, SAM2_KEY, tracker.encode(frames[1]))
    g = grounder.ground(window, clean_instruction("the swan"))
    assert g.dense_frames == [frame.index] and g.keyframe == frame.index


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_dense_frames"):
        GrounderConfig(max_dense_frames=0)
    with pytest.raises(ValueError, match="sparse_frames"):
        GrounderConfig(sparse_frames=-1)


def test_frames_evicted_during_the_query_still_give_a_keyframe(frames):
    """Live mode: the tracking thread keeps appending while a query runs, evicting its frames."""
    tracker = make_tracker(128)
    grounder = make_grounder(tracker, max_dense_frames=5)
    window = filled_window(tracker, frames[:6], capacity=6)
    prefill = grounder.mllm.prefill

    def prefill_while_frames_arrive(*args, **kwargs):
        for i, image in enumerate(frames[6:], 6):  # the whole window is replaced meanwhile
            window.set_feature(window.append(image, 1000 * i).index, SAM2_KEY, tracker.encode(image))
        return prefill(*args, **kwargs)

    grounder.mllm.prefill = prefill_while_frames_arrive
    g = grounder.ground(window, clean_instruction("the black swan"))
    assert all(i < 6 for i in g.dense_frames) and set(g.dense_frames).isdisjoint(window.indices())
    assert g.keyframe in g.dense_frames and g.keyframe_features is not None and g.mask.shape == frames[0].shape[:2]
