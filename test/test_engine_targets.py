"""Several targets in the engine (issue 14): prompts and instructions side by side, one instance map,
a target added on a past frame catching up alone, removal, batched grounding of due instructions,
per-target errors, and refusals that change nothing. Tiny-random models: plumbing, not quality."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FRAME_NS, box_of, davis_sequence, grounding_engine, push_all

from vrs_node.core.prompts import MaskPrompt, PointsPrompt
from vrs_node.core.results import STATUS_ERROR, STATUS_GROUNDING, STATUS_TRACKING
from vrs_node.core.target_specs import TargetSpec

@pytest.fixture(scope="module")
def clip():
    return davis_sequence("blackswan", 12)


def boxes(clip):
    """Two different box targets: the swan's GT box and a box on the water."""
    return TargetSpec(prompt=PointsPrompt(box=box_of(clip[1][0]))), TargetSpec(prompt=PointsPrompt(box=(10, 10, 300, 200)))


def test_two_prompt_targets_give_an_instance_map_and_a_report_each(clip):
    frames = clip[0][:6]
    engine, _ = grounding_engine(window_frames=6)
    swan, water = boxes(clip)
    assert engine.add_target(swan) == 1 and engine.add_target(water, 7) == 7
    assert engine.target_labels() == {1: "box", 7: "box"}
    results = push_all(engine, frames)
    for r in results:
        assert r.status == STATUS_TRACKING and [t.id for t in r.targets] == [1, 7]
        assert r.instance_map.dtype == np.uint8 and set(np.unique(r.instance_map)) <= {0, 1, 7}
        assert np.array_equal(r.mask, r.instance_map > 0)
        assert r.object_score == max(t.object_score for t in r.targets)
        for t in r.targets:
            own = r.instance_map == t.id
            assert t.present == own.any() and t.area == int(own.sum())
            if t.box is not None:
                ys, xs = np.nonzero(own)
                assert t.box == (xs.min(), ys.min(), xs.max(), ys.max())
    assert {1, 7} <= set(np.unique(results[-1].instance_map)), "both targets are in the map"
    # the engine's map is the tracker's: where masks overlap, the higher object score wins
    assert engine.target_tracker.cohorts == [(1, 7)], "targets prompted together are tracked as one batch"


def test_target_batch_bounds_the_targets_tracked_in_one_call(clip):
    """The engine's target_batch is the tracker's max_batch: three targets set together are tracked
    as a batch of 2 and one of 1, each reported every frame."""
    engine, _ = grounding_engine(window_frames=4, target_batch=2)
    swan, water = boxes(clip)
    engine.set_targets([(1, swan), (2, water), (3, swan)])
    results = push_all(engine, clip[0][:3])
    assert engine.target_tracker.cohorts == engine.target_tracker.batches == [(1, 2), (3,)]
    assert all([t.id for t in r.targets] == [1, 2, 3] and r.status == STATUS_TRACKING for r in results)


def test_targets_added_on_different_frames_share_one_tracking_call_once_their_memories_align(clip):
    """Box targets added on frames 0 and 2 keep separate memories (different layouts); from frame
    2 + 16 on, their memories have the same size and one batched call tracks both."""
    engine, _ = grounding_engine(window_frames=4)
    swan, water = boxes(clip)
    calls = []
    frames = (clip[0] * 2)[:20]
    for i, image in enumerate(frames):
        if i in (0, 2):
            engine.add_target(swan if i == 0 else water)
        engine.push(image, i * FRAME_NS, "camera")
        calls.append(engine.target_tracker.batches)
    assert engine.target_tracker.cohorts == [(1,), (2,)]
    assert calls[2] == [(1,)] and calls[17] == [(1,), (2,)] and calls[18:] == [[(1, 2)]] * 2


def test_where_targets_overlap_one_id_wins_and_the_other_is_reported_hidden(clip):
    """Two targets with the same box have the same masks and object scores: every shared pixel goes
    to the lower id (a tie); the other is tracked but not present (area 0, no box)."""
    frames = clip[0][:3]
    engine, _ = grounding_engine(window_frames=4)
    swan, _ = boxes(clip)
    engine.set_targets([(5, swan), (3, swan)])
    r = push_all(engine, frames)[-1]
    low, high = r.targets
    assert (low.id, high.id) == (3, 5) and low.object_score == high.object_score
    assert set(np.unique(r.instance_map)) == {0, 3}
    assert low.present and low.area == int(r.mask.sum()) and low.status == high.status == STATUS_TRACKING
    assert not high.present and high.area == 0 and high.box is None


def test_a_target_added_on_a_past_frame_catches_up_alone(clip):
    """A box given on frame 3's stamp while frame 6 arrives: the new target is conditioned on frame
    3 and caught up through 4-5; the earlier target's masks are exactly those of a run without it."""
    frames = clip[0][:9]
    swan, water = boxes(clip)
    with_added, _ = grounding_engine(window_frames=8)
    alone, _ = grounding_engine(window_frames=8)
    for engine in (with_added, alone):
        engine.add_target(swan)
    results_added = []
    for i, image in enumerate(frames):
        if i == 6:
            assert with_added.add_target(TargetSpec(prompt=water.prompt, stamp_ns=3 * FRAME_NS)) == 2
        results_added.append(with_added.push(image, i * FRAME_NS))
    results_alone = push_all(alone, frames)
    assert with_added.stats.catchup_frames == 2, "frames 4 and 5 are tracked for the new target only"
    assert [t.id for t in results_added[6].targets] == [1, 2]
    for a, b in zip(results_added, results_alone):
        one_a = next(t for t in a.targets if t.id == 1)
        one_b = next(t for t in b.targets if t.id == 1)
        assert one_a.object_score == one_b.object_score, "the earlier target is untouched"
    assert with_added.target_tracker.stored_frames(2) == (1, 5), "conditioned on 3, tracked 4-8"


def test_removing_a_target_leaves_the_others_tracking(clip):
    frames = clip[0][:6]
    engine, _ = grounding_engine(window_frames=6)
    swan, water = boxes(clip)
    engine.set_targets([(None, swan), (None, water)])
    results = push_all(engine, frames, actions={3: lambda e: e.remove_target(2)})
    assert [t.id for t in results[2].targets] == [1, 2]
    assert all([t.id for t in r.targets] == [1] and 2 not in r.instance_map for r in results[3:])
    assert all(r.status == STATUS_TRACKING for r in results)
    assert engine.target_tracker.ids == (1,)


def test_refused_commands_change_nothing(clip):
    frames = clip[0][:2]
    engine, _ = grounding_engine(window_frames=4, max_targets=2)
    swan, water = boxes(clip)
    engine.add_target(swan, 1)
    push_all(engine, frames)
    before = (engine.target_labels(), engine.prompt_pending, engine.target_tracker.ids)
    refusals = [
        (lambda: engine.remove_target(9), "no target with id 9"),
        (lambda: engine.add_target(water, 1), "taken"),
        (lambda: engine.add_target(water, 0), r"in 1\.\.255"),
        (lambda: engine.add_target(water, "2"), "an int"),
        (lambda: engine.set_targets([(None, swan)] * 3), "at most max_targets = 2"),
        (lambda: engine.set_targets([(2, swan), (2, water)]), "taken"),
        (lambda: engine.add_target(TargetSpec(instruction="   ")), "empty"),
        (lambda: engine.set_targets([(None, swan), (None, TargetSpec(instruction=""))]), "empty"),
        (lambda: engine.add_target(TargetSpec(prompt=water.prompt, stamp_ns=123)), "no frame with stamp 123"),
        (lambda: engine.add_target(TargetSpec(prompt=PointsPrompt(box=(5000, 5000, 6000, 6000)))), "outside the 854x480 image"),
        (lambda: engine.add_target("the swan"), "TargetSpec"),
    ]
    for refuse, reason in refusals:
        with pytest.raises(ValueError, match=reason):
            refuse()
        assert (engine.target_labels(), engine.prompt_pending, engine.target_tracker.ids) == before
    engine.add_target(water)
    with pytest.raises(ValueError, match="at most max_targets = 2"):
        engine.add_target(water)


def test_a_prompt_that_does_not_fit_fails_its_target_only(clip):
    frames = clip[0][:4]
    engine, _ = grounding_engine(window_frames=4)
    swan, _ = boxes(clip)
    engine.add_target(swan)
    push_all(engine, frames[:2])
    engine.add_target(TargetSpec(prompt=MaskPrompt(np.ones((10, 10), bool))))
    failed, after = push_all(engine, frames[2:4], start=2)
    assert [(t.id, t.status) for t in failed.targets] == [(1, STATUS_TRACKING), (2, STATUS_ERROR)]
    assert "mask" in failed.targets[1].reason and failed.status == STATUS_TRACKING
    assert [t.id for t in after.targets] == [1] and engine.target_labels() == {1: "box"}
    assert engine.stats.errors == 1


def test_instructions_due_together_are_grounded_in_one_batch(clip):
    frames = clip[0][:4]
    engine, reports = grounding_engine(window_frames=4, period_s=0)
    calls = []
    real = engine.grounder.ground_many

    def counted(window, instructions):
        calls.append([i.text for i in instructions])
        return real(window, instructions)

    engine.grounder.ground_many = counted
    ids = engine.set_targets([(None, TargetSpec(instruction="the black swan")),
                              (None, TargetSpec(instruction="the water")),
                              (4, TargetSpec(prompt=PointsPrompt(box=(10, 10, 300, 200))))])
    assert ids == [1, 2, 4]
    first = push_all(engine, frames[:1])[0]
    assert calls == [["the black swan", "the water"]], "one batched query for both instructions"
    assert sorted((q.target_id, q.instruction.text, q.applied) for q in reports) == [
        (1, "the black swan", True), (2, "the water", True)]
    assert [t.status for t in first.targets] == [STATUS_TRACKING] * 3
    assert all(t.grounded_stamp_ns == 0 for t in first.targets[:2]) and first.targets[2].grounded_stamp_ns is None
    assert engine.instruction.text == "the black swan"
    # set_instruction means exactly one target again
    engine.set_instruction("the water")
    waiting = engine.target_labels()
    assert waiting == {1: "the water"}


def test_a_failed_batch_leaves_each_instruction_waiting(clip):
    frames = clip[0][:2]
    engine, reports = grounding_engine(window_frames=4, period_s=0)

    def broken(window, instructions):
        raise RuntimeError("MLLM exploded")

    engine.grounder.ground_many = broken
    engine.set_targets([(None, TargetSpec(instruction="the swan")), (None, TargetSpec(instruction="the water"))])
    results = push_all(engine, frames)
    assert [(q.target_id, q.error) for q in reports] == [(1, "RuntimeError: MLLM exploded"),
                                                        (2, "RuntimeError: MLLM exploded")]
    assert all(t.status == STATUS_GROUNDING and "MLLM exploded" in t.reason for t in results[-1].targets)
    assert results[-1].status == STATUS_GROUNDING and engine.stats.query_errors == 2
