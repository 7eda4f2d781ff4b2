"""Grounding work kept off the tracking thread: catch-ups prepared on the grounding thread
(vrs_node.core.catchup: MultiTargetTracker's prepare_catch_up + install against catch_up at once,
a stale preparation refused, preparing on another thread while tracking runs, the engine preparing
a grounding's catch-up on its grounding thread) and the lower CPU priority of periodic re-queries."""

from __future__ import annotations

import itertools
import os
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import FRAME_NS, davis_sequence, grounding_engine, make_grounder, make_tracker, push_all

from vrs_node.core.catchup import CatchUps
from vrs_node.core.config import PipelineConfig
from vrs_node.core.engine import StreamingEngine
from vrs_node.core.frames import SAM2_KEY, FrameWindow
from vrs_node.core.prompts import MaskPrompt, PointsPrompt
from vrs_node.core.queries import QueryScheduler
from vrs_node.core.results import STATUS_TRACKING, EngineStats
from vrs_node.core.target_specs import TargetSpec
from vrs_node.core.targets import MultiTargetTracker
from vrs_node.models.prompt import clean_instruction


@pytest.fixture(scope="module")
def clip():
    return davis_sequence("blackswan", 12)


@pytest.fixture(scope="module")
def feats(clip):
    tracker = make_tracker(128)
    return [tracker.encode(f) for f in clip[0]]


@pytest.fixture(scope="module")
def prompts(clip):
    return {1: MaskPrompt(clip[1][0]), 2: PointsPrompt(box=(10.0, 10.0, 300.0, 200.0)),
            3: PointsPrompt(points=np.array([[700.0, 100.0]], np.float32), labels=np.array([1]))}


def two_targets(feats, prompts, upto: int) -> MultiTargetTracker:
    """Targets 1 and 2 prompted on frame 0 and tracked through frames 1..upto-1."""
    tracker = MultiTargetTracker(make_tracker(128))
    tracker.add(1, prompts[1])
    tracker.add(2, prompts[2])
    for f in feats[:upto]:
        tracker.track(f)
    return tracker


def spy_calls(tracker: MultiTargetTracker, monkeypatch) -> list:
    """A list that gets the ids of each batched call (one list per ``_track_cohorts``) of ``tracker``."""
    calls, track = [], tracker._track_cohorts

    def spy(*args):
        results, batches = track(*args)
        calls.append(batches)
        return results, batches

    monkeypatch.setattr(tracker, "_track_cohorts", spy)
    return calls


TOL = 1e-5
"""A target tracked in a batch of two rows and alone differ by float rounding (test_targets.TOL)."""


def close(a, b, tol=TOL) -> bool:
    """Low-res logits and object scores within ``tol``, result by result."""
    return len(a) == len(b) and all((x.low_res_logits - y.low_res_logits).abs().max() <= tol
                                    and abs(x.object_score - y.object_score) <= tol for x, y in zip(a, b))


def same(a, b) -> bool:
    """Bit-equal low-res logits and object scores, result by result."""
    return len(a) == len(b) and all(torch.equal(x.low_res_logits, y.low_res_logits) and x.object_score == y.object_score
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("target_id, keep_memory", [(3, False), (1, True)])
def test_prepared_then_installed_later_equals_catching_up_when_prepared(feats, prompts, target_id, keep_memory):
    """Prepared at frame 6 through frames 4-5 (keyframe 3), installed at frame 9 after frames 6-8:
    bit-equal to catch_up at frame 6 with the target then tracked through frames 6-8 (a new target,
    and a known one keeping its conditioning frames); the following frames equal too, within
    batching's rounding (the other target was tracked in a batch of two meanwhile, alone there).
    A new target's memory starts at step 0 either way, so it also equals catch_up at frame 9
    through frames 4-8."""
    key, prepared_at, installed_at = 3, 6, 9
    prepared_tracker = two_targets(feats, prompts, prepared_at)
    prepared = prepared_tracker.prepare_catch_up(target_id, feats[key], prompts[3], feats[key + 1:prepared_at],
                                                 keep_memory=keep_memory)
    assert prepared_tracker.ids == (1, 2) and len(prepared.results) == prepared_at - key
    for f in feats[prepared_at:installed_at]:
        prepared_tracker.track(f)
    since = prepared_tracker.install(prepared, feats[prepared_at:installed_at])
    at_once = two_targets(feats, prompts, prepared_at)
    caught = at_once.catch_up(target_id, feats[key], prompts[3], feats[key + 1:prepared_at])
    caught += [at_once.track(f)[target_id] for f in feats[prepared_at:installed_at]]
    assert same(prepared.results + since, caught)
    assert prepared_tracker.ids == at_once.ids and prepared_tracker.cohorts == at_once.cohorts
    for f in feats[installed_at:]:
        a, b = prepared_tracker.track(f), at_once.track(f)
        assert list(a) == list(b) and close(list(a.values()), list(b.values()))
    assert prepared_tracker.state_size() == at_once.state_size()
    if not keep_memory:
        late = two_targets(feats, prompts, installed_at)
        assert same(prepared.results + since, late.catch_up(target_id, feats[key], prompts[3],
                                                             feats[key + 1:installed_at]))


def test_extending_a_preparation_equals_preparing_through_all_frames(feats, prompts):
    tracker = two_targets(feats, prompts, 8)
    whole = tracker.prepare_catch_up(3, feats[2], prompts[3], feats[3:8], keep_memory=False)
    parts = tracker.prepare_catch_up(3, feats[2], prompts[3], feats[3:5], keep_memory=False)
    for f in feats[5:8]:
        tracker.extend_catch_ups([parts], f)
    assert len(parts.results) == 6 and same(parts.results, whole.results)
    assert parts.cohort.layout() == whole.cohort.layout() and parts.cohort.step == whole.cohort.step


def test_catch_ups_extended_together_each_equal_their_own(feats, prompts, monkeypatch):
    """Two new targets on keyframe 2 extended through frames 3-7 together: one batched call a
    frame, each within batching's rounding of its own preparation; two catch-ups of one target
    are refused."""
    tracker = two_targets(feats, prompts, 8)
    together = [tracker.prepare_catch_up(i, feats[2], prompts[3], [], keep_memory=False) for i in (3, 4)]
    calls = spy_calls(tracker, monkeypatch)
    for f in feats[3:8]:
        tracker.extend_catch_ups(together, f)
    assert calls == [[(3, 4)]] * 5
    for prepared in together:
        alone = tracker.prepare_catch_up(prepared.target_id, feats[2], prompts[3], feats[3:8], keep_memory=False)
        assert len(prepared.results) == 6 and close(prepared.results, alone.results)
        assert prepared.cohort.layout() == alone.cohort.layout()
    with pytest.raises(ValueError, match="one target"):
        tracker.extend_catch_ups([together[0], together[0]], feats[8])


def test_a_querys_catch_ups_are_prepared_together_the_targets_due_at_a_frame_in_one_call(clip, feats, prompts,
                                                                                         monkeypatch):
    """CatchUps.prepare of three answers, keyframes 2, 2 and 5, the newest frame 9: each target
    tracked through frames up to 8 (the newest left to the tracking thread), within batching's
    rounding of its catch-up prepared alone; frames 3-5 in one call for the two targets of
    keyframe 2, frames 6-8 in one call for them and one for the third (memories of other sizes)."""
    window = FrameWindow(12)
    for i, image in enumerate(clip[0][:10]):
        window.set_feature(window.append(image, i * FRAME_NS).index, SAM2_KEY, feats[i])

    def answer(keyframe):
        return SimpleNamespace(keyframe=keyframe, keyframe_features=feats[keyframe], prompt=prompts[3])

    def catch_ups(tracker):
        return CatchUps(window, tracker, PipelineConfig, EngineStats())

    tracker = two_targets(feats, prompts, 10)
    calls = spy_calls(tracker, monkeypatch)
    together = catch_ups(tracker).prepare([(3, answer(2), True), (4, answer(2), True), (1, answer(5), False)])
    assert calls == [[(3, 4)]] * 3 + [[(3, 4), (1,)]] * 3
    for target_id, keyframe, new_target in [(3, 2, True), (4, 2, True), (1, 5, False)]:
        prepared, through = together[target_id]
        alone, alone_through = catch_ups(two_targets(feats, prompts, 10)).prepare([(target_id, answer(keyframe), new_target)])[target_id]
        assert through == alone_through == 8 and len(prepared.results) == 9 - keyframe
        assert close(prepared.results, alone.results)
    assert catch_ups(tracker).prepare([(5, answer(9), True)]) == {}, "keyframe = newest: nothing to prepare"


def test_a_preparation_whose_memory_changed_is_refused_and_changes_nothing(feats, prompts):
    tracker = two_targets(feats, prompts, 4)
    stale = tracker.prepare_catch_up(1, feats[2], prompts[3], feats[3:4], keep_memory=True)
    fresh = tracker.prepare_catch_up(2, feats[2], prompts[3], feats[3:4], keep_memory=False)
    tracker.set_prompt(1, prompts[2])
    tracker.track(feats[4])  # target 1 re-conditioned: a new memory version
    before = (tracker.ids, tracker.cohorts, tracker.state_size())
    assert tracker.install(stale, [feats[4]]) is None
    assert (tracker.ids, tracker.cohorts, tracker.state_size()) == before
    assert len(tracker.install(fresh, [feats[4]])) == 1, "a new memory is built on nothing: never stale"
    removed = two_targets(feats, prompts, 4)
    stale = removed.prepare_catch_up(2, feats[2], prompts[3], [], keep_memory=True)
    removed.remove(2)
    removed.add(2, prompts[2])
    removed.track(feats[4])
    assert removed.install(stale, []) is None, "removed and added again: another memory"


def test_preparing_on_another_thread_while_tracking_gives_the_same_results(feats, prompts):
    """A catch-up prepared on a thread while the main thread tracks the other targets: the same
    values as both done one after the other."""
    key, start, end = 2, 5, 10
    expected_tracker = two_targets(feats, prompts, start)
    expected = expected_tracker.prepare_catch_up(1, feats[key], prompts[3], feats[key + 1:start])
    expected_tracked = [expected_tracker.track(f) for f in feats[start:end]]
    tracker = two_targets(feats, prompts, start)
    out, tracked = {}, []
    worker = threading.Thread(target=lambda: out.setdefault(
        "prepared", tracker.prepare_catch_up(1, feats[key], prompts[3], feats[key + 1:start])))
    worker.start()
    for f in feats[start:end]:
        tracked.append(tracker.track(f))
    worker.join(120)
    assert same(out["prepared"].results, expected.results)
    for a, b in zip(tracked, expected_tracked):
        assert same(list(a.values()), list(b.values()))
    assert same(tracker.install(out["prepared"], feats[start:end]),
                expected_tracker.install(expected, feats[start:end]))


def test_sync_groundings_catch_up_through_prepared_catch_ups(clip):
    """In sync mode a grounding's catch-up is prepared and installed within the same push: every
    catch-up frame is a prepared one."""
    engine, reports = grounding_engine(period_s=5 * FRAME_NS / 1e9, window_frames=6)
    engine.set_instruction("the black swan")
    push_all(engine, clip[0])
    assert len(reports) >= 2 and all(q.applied for q in reports)
    assert engine.stats.catchup_frames > 0
    assert engine.stats.prepared_catchup_frames == engine.stats.catchup_frames


def test_an_engines_batched_query_prepares_its_answers_catch_ups_in_one_call(clip, monkeypatch):
    """Two instructions grounded by one query (sync mode, periodic re-queries on past keyframes):
    the engine hands both answers to one CatchUps.prepare, and every catch-up frame is prepared."""
    calls, real_prepare = [], CatchUps.prepare
    monkeypatch.setattr(CatchUps, "prepare", lambda self, answers: calls.append(
        sorted(target_id for target_id, _, _ in answers)) or real_prepare(self, answers))
    engine, reports = grounding_engine(period_s=5 * FRAME_NS / 1e9, window_frames=6)
    ids = engine.set_targets([(None, TargetSpec(instruction="the black swan")),
                              (None, TargetSpec(instruction="the water"))])
    push_all(engine, clip[0])
    assert len(reports) >= 4 and all(q.applied for q in reports)
    assert calls and all(call == sorted(ids) for call in calls), calls
    assert engine.stats.catchup_frames > 0
    assert engine.stats.prepared_catchup_frames == engine.stats.catchup_frames


def test_a_failing_preparation_leaves_the_catch_up_to_the_tracking_thread(clip, caplog, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no memory for a preparation")

    monkeypatch.setattr(CatchUps, "prepare", broken)
    engine, reports = grounding_engine(period_s=5 * FRAME_NS / 1e9, window_frames=6)
    engine.set_instruction("the black swan")
    results = push_all(engine, clip[0])
    assert all(q.applied for q in reports) and results[-1].status == STATUS_TRACKING
    assert engine.stats.catchup_frames > 0 and engine.stats.prepared_catchup_frames == 0
    assert "preparing the answer" in caplog.text and "no memory for a preparation" in caplog.text


def test_live_groundings_prepare_their_catch_up_on_the_grounding_thread(clip):
    """The answer comes back while frames go on being tracked: its catch-up is tracked on the
    grounding thread through the frames before the newest, the tracking thread only through those
    it processed since the preparation's last pass."""
    tracker = make_tracker(128)
    grounder = make_grounder(tracker)
    real_ground = grounder.ground_many

    def late_ground(window, instructions):
        newest = window.latest.index
        answers = real_ground(window, instructions)
        until = time.time() + 60
        while time.time() < until and window.latest.index < newest + 4:  # 4 more frames before the answer
            time.sleep(0.01)
        return answers

    grounder.ground_many = late_ground
    results, reports = [], []
    config = PipelineConfig(mode="live", period_s=0, window_frames=30)  # a first query runs at tracking's priority
    engine = StreamingEngine(tracker, config, grounder=grounder, on_result=results.append, on_query=reports.append)
    prepared_on = []
    real_prepare = engine.target_tracker.prepare_catch_up
    engine.target_tracker.prepare_catch_up = lambda *a, **k: prepared_on.append(
        threading.current_thread().name) or real_prepare(*a, **k)
    answered_at = None
    try:
        engine.set_instruction("the black swan")
        deadline = time.time() + 180
        for i in itertools.count():  # one frame at a time (none dropped), until 2 frames after the answer
            assert time.time() < deadline, f"no answer after {i} frames"
            engine.push(clip[0][i % len(clip[0])], i * FRAME_NS)
            until = time.time() + 60
            while time.time() < until and len(results) <= i:
                time.sleep(0.01)
            answered_at = answered_at if answered_at is not None or not reports else i
            if answered_at is not None and i >= answered_at + 2:
                break
    finally:
        engine.close()
    assert prepared_on == ["vrs-grounding"] and reports[0].applied
    assert engine.stats.dropped == 0 and engine.stats.prepared_catchup_frames >= 2
    on_tracking_thread = engine.stats.catchup_frames - engine.stats.prepared_catchup_frames
    assert 0 <= on_tracking_thread <= answered_at
    assert results[-1].status == STATUS_TRACKING


def test_periodic_requeries_run_at_a_lower_cpu_priority_first_queries_at_trackings(clip):
    """grounding_nice is added to the niceness of the thread that re-queries a tracked target
    periodically; a target's first query (and the tracking thread) keep the process's."""
    tracker = make_tracker(128)
    grounder = make_grounder(tracker)
    calls, real_ground = [], grounder.ground_many

    def spy(window, instructions):
        calls.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return real_ground(window, instructions)

    tracking = []
    grounder.ground_many = spy
    reports = []
    engine = StreamingEngine(tracker, PipelineConfig(mode="live", period_s=0.05, grounding_nice=7), grounder=grounder,
                             on_result=lambda r: tracking.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())),
                             on_query=reports.append)
    try:
        engine.set_instruction("the black swan")
        deadline = time.time() + 120
        for i in itertools.count():  # stamps 0.1 s apart: a periodic query is due at every frame once grounded
            if time.time() > deadline or [r.trigger for r in reports][:2] == ["instruction", "period"]:
                break
            engine.push(clip[0][i % len(clip[0])], i * 100_000_000)
            time.sleep(0.1)
    finally:
        engine.close()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert [r.trigger for r in reports][:2] == ["instruction", "period"] and all(r.applied for r in reports[:2])
    assert calls[:2] == [("vrs-grounding", base), ("vrs-grounding-periodic", min(19, base + 7))]
    assert tracking and set(tracking) == {base}


@pytest.mark.parametrize("due, grounded, urgent", [
    ("instruction", False, True), ("instruction", True, True), ("lost", True, True),
    ("period", False, True),  # a retry after a failed first query: still without a mask
    ("period", True, False)])
def test_only_periodic_requeries_of_a_grounded_target_run_niced(due, grounded, urgent):
    """The thread a due query goes to: the niced one takes only periodic re-queries of targets
    that have an answer; any other due query sends the batch to the thread at tracking's priority."""
    scheduler = QueryScheduler(object(), FrameWindow(4), PipelineConfig, EngineStats(), lambda *a: None)
    scheduler.follow(1, clean_instruction("the black swan"))
    scheduler.follow(2, clean_instruction("the water"))
    for followed, state in zip(scheduler._followed.values(), [(None, True), (due, grounded)]):
        followed.due, followed.grounded = state
    assert scheduler._urgent() is urgent
