"""Cohorts of different memory layouts tracked in one batched call (vrs_node.core.joint_step): a
single bank's step is sam2's track_step bit for bit; targets conditioned at different steps share
a call once their memories have equal token counts, and each still equals a target tracked alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import box_of, davis_sequence, make_tracker

from vrs_node.core.cohorts import first_fit
from vrs_node.core.joint_step import joint_track_step, read_memory
from vrs_node.core.prompts import MaskPrompt, PointsPrompt
from vrs_node.core.targets import MultiTargetTracker

TOL = 1e-5
"""Batching's tolerance, as in test_targets.py."""
N_FRAMES = 26


@pytest.fixture(scope="module")
def clip():
    """(encoded frames at 128 px, GT masks) of the first N_FRAMES blackswan frames."""
    frames, masks, _ = davis_sequence("blackswan", N_FRAMES)
    tracker = make_tracker(128)
    return [tracker.encode(f) for f in frames], masks


def prompts(masks):
    return {1: MaskPrompt(masks[0]), 2: PointsPrompt(box=(10.0, 10.0, 300.0, 200.0)),
            3: PointsPrompt(points=np.array([[700.0, 100.0]], np.float32), labels=np.array([1]))}


def alone(feats, prompt, start):
    """One-target StreamingTracker results conditioned on frame ``start`` and tracked after it."""
    tracker = make_tracker(128)
    return [tracker.condition(feats[start], prompt)] + [tracker.track(f) for f in feats[start + 1:]]


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_one_bank_is_track_step_bit_for_bit(clip, autocast_dtype):
    feats, masks = clip
    tracker = make_tracker(128, autocast_dtype=autocast_dtype)
    tracker.condition(feats[0], MaskPrompt(masks[0]))
    for f in feats[1:9]:
        tracker.track(f)
    tracker.condition(feats[9], PointsPrompt(box=box_of(masks[9])))  # two conditioning frames
    for f in feats[10:12]:
        tracker.track(f)
    step, bank, frame = tracker._step, tracker._bank, feats[12]
    model = tracker.model
    with torch.inference_mode(), tracker.autocast():
        expected = model.track_step(
            frame_idx=step, is_init_cond_frame=False, current_vision_feats=list(frame.vision_feats),
            current_vision_pos_embeds=[frame.top_pos_embed], feat_sizes=list(frame.feat_sizes), point_inputs=None,
            mask_inputs=None, output_dict=bank, num_frames=tracker.num_frames, run_mem_encoder=True)
        read = read_memory(model, bank, step, frame, 1, tracker.num_frames)
        got = joint_track_step(model, [read], frame)
    # re-conditioning dropped the tracked frames: 2 conditioning + 2 tracked memories of 8 x 8
    # tokens, then 4 pointers (conditioning steps 0 and 9, tracked 10 and 11) of 4 tokens each
    assert read.key == (4 * 64 + 16, 16)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, got[key]), key
        elif isinstance(value, list):
            assert all(torch.equal(a, b) for a, b in zip(value, got[key])), key
        else:
            assert value is got[key] is None, key


def test_targets_added_at_different_steps_share_a_call_and_equal_tracking_alone(clip):
    """Targets 1, 2 from frame 0, 3 from frame 4: separate memories (different layouts) tracked in
    one call once target 3 is 16 steps past its conditioning; each equals its one-target tracker."""
    feats, masks = clip
    k = 4
    targets = prompts(masks)
    trackers = {batch: MultiTargetTracker(make_tracker(128), max_batch=batch) for batch in (0, 2)}
    runs = {batch: [] for batch in trackers}
    calls = {batch: [] for batch in trackers}
    for batch, tracker in trackers.items():
        tracker.add(1, targets[1])
        tracker.add(2, targets[2])
        for n, f in enumerate(feats):
            if n == k:
                tracker.add(3, targets[3])
            runs[batch].append(tracker.track(f))
            calls[batch].append(tracker.batches)
    whole = trackers[0]
    assert whole.cohorts == [(1, 2), (3,)], "different layouts: memories stored apart"
    first_joint = k + 16  # target 3's step 16: 15 tracked pointers, like the others
    assert calls[0][first_joint - 1] == [(1, 2), (3,)]
    assert all(c == [(1, 2, 3)] for c in calls[0][first_joint:]), calls[0]
    assert all(c == [(1, 2), (3,)] for c in calls[2][k + 1:]), "max_batch bounds a call"
    for i, start in ((1, 0), (2, 0), (3, k)):
        expected = alone(feats, targets[i], start)
        for batch in trackers:
            got = [r[i] for r in runs[batch][start:]]
            logit = max(float((a.low_res_logits - b.low_res_logits).abs().max()) for a, b in zip(got, expected))
            score = max(abs(a.object_score - b.object_score) for a, b in zip(got, expected))
            assert max(logit, score) <= TOL, (i, batch, logit, score)
    assert not torch.equal(runs[0][-1][3].low_res_logits, runs[0][-1][1].low_res_logits)


def test_unequal_memories_are_not_joined(clip):
    """A target re-conditioned once keeps two conditioning frames: its memory has one spatial frame
    more than the others', so it never shares their call."""
    feats, masks = clip
    tracker = MultiTargetTracker(make_tracker(128))
    for i, prompt in prompts(masks).items():
        tracker.add(i, prompt)
    for n, f in enumerate(feats):
        if n == 2:
            tracker.set_prompt(3, PointsPrompt(box=box_of(masks[2])))
        tracker.track(f)
    assert tracker.stored_frames(3)[0] == 2 and tracker.stored_frames(1)[0] == 1
    assert tracker.batches == [(1, 2), (3,)]
    with torch.inference_mode():
        reads = [read_memory(tracker.model, c.bank, c.step, feats[0], len(c.ids), tracker._single.num_frames)
                 for c in tracker._cohorts]
        # 1 or 2 conditioning + 6 tracked memories of 8 x 8 tokens, then 16 or 17 pointers of 4 tokens
        assert [r.key for r in reads] == [(7 * 64 + 16 * 4, 16 * 4), (8 * 64 + 17 * 4, 17 * 4)]
        with pytest.raises(ValueError, match="one memory shape"):
            joint_track_step(tracker.model, reads, feats[0])


def test_first_fit_packs_by_key_in_order():
    items = [("a", 2), ("b", 1), ("a", 1), ("a", 2), ("b", 3)]
    packs = first_fit(items, key=lambda x: x[0], size=lambda x: x[1], max_batch=3)
    assert packs == [[("a", 2), ("a", 1)], [("a", 2)], [("b", 1)], [("b", 3)]]
    assert first_fit(items, key=lambda x: x[0], size=lambda x: x[1]) == [
        [("a", 2), ("a", 1), ("a", 2)], [("b", 1), ("b", 3)]]
