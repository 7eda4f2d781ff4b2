"""StreamingEngine: statuses, prompts at any time, catch-up, sync determinism, live mode."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import torch
from conftest import box_of, make_tracker

from vrs_node.core.config import PipelineConfig
from vrs_node.core.catchup import catchup_schedule
from vrs_node.core.engine import StreamingEngine
from vrs_node.core.prompts import MaskPrompt, PointsPrompt
from vrs_node.core.results import STATUS_ERROR, STATUS_NO_PROMPT, STATUS_TARGET_ABSENT, STATUS_TRACKING


def run_sync(frames, prompts, **config):
    """Push every frame through a sync engine; ``prompts``: push position -> set_prompt args."""
    engine = StreamingEngine(make_tracker(128), PipelineConfig(**config))
    results = []
    for i, image in enumerate(frames):
        if i in prompts:
            engine.set_prompt(*prompts[i])
        results.append(engine.push(image, 1_000 + i * 33_333_333, "camera"))
    return engine, results


def test_empty_mask_and_reason_before_a_prompt_then_tracking(blackswan):
    frames, masks, _ = blackswan
    engine, results = run_sync(frames[:6], {3: (PointsPrompt(box=box_of(masks[3])), None)})
    for r in results[:3]:
        assert r.status == STATUS_NO_PROMPT and "prompt" in r.reason
        assert r.mask.shape == masks[0].shape and not r.mask.any() and r.object_score is None
    for r in results[3:]:
        assert r.status == STATUS_TRACKING and r.mask.any() and r.object_score > 0
    assert [r.index for r in results] == list(range(6))
    assert [r.stamp_ns for r in results] == [1_000 + i * 33_333_333 for i in range(6)]
    assert all(r.frame_id == "camera" for r in results)
    assert engine.stats.processed == 6 and engine.stats.errors == 0


def test_sync_mode_is_reproducible(blackswan):
    frames, masks, _ = blackswan
    prompts = {0: (MaskPrompt(masks[0]), None)}
    _, first = run_sync(frames[:8], prompts)
    _, second = run_sync(frames[:8], prompts)
    for a, b in zip(first, second):
        assert np.array_equal(a.mask, b.mask) and a.object_score == b.object_score


def test_prompt_on_a_past_frame_catches_up(blackswan):
    """A prompt for frame 1 given at frame 5: the tracker conditions on 1, tracks 2-4, then 5 --
    exactly what a prompt on frame 1 followed by tracking gives."""
    frames, masks, _ = blackswan
    prompt = PointsPrompt(box=box_of(masks[1]))
    late, late_results = run_sync(frames[:7], {5: (prompt, 1)})
    _, direct_results = run_sync(frames[:7], {1: (prompt, None)})
    assert late.stats.catchup_frames == 3
    by_stamp, stamp_results = run_sync(frames[:7], {5: (prompt, None, 1_000 + 33_333_333)})
    assert by_stamp.stats.catchup_frames == 3
    assert np.array_equal(stamp_results[-1].mask, direct_results[-1].mask)
    assert [r.status for r in late_results[:5]] == [STATUS_NO_PROMPT] * 5
    for a, b in zip(late_results[5:], direct_results[5:]):
        assert np.array_equal(a.mask, b.mask) and a.object_score == b.object_score


def test_catchup_schedule_bounds_and_ends_on_newest():
    assert catchup_schedule(5, 8) == [0, 1, 2, 3, 4]
    assert catchup_schedule(0, 8) == []
    strided = catchup_schedule(40, 8)
    assert len(strided) <= 8 and strided[-1] == 39 and strided == sorted(set(strided))


def test_prompt_outside_the_window_is_an_error_and_the_engine_keeps_going(blackswan):
    frames, masks, _ = blackswan
    _, results = run_sync(frames[:8], {5: (PointsPrompt(box=box_of(masks[0])), 0),
                                       6: (MaskPrompt(masks[0][:-2]), None),
                                       7: (PointsPrompt(box=box_of(masks[7])), None)},
                          window_frames=4)
    assert results[5].status == STATUS_ERROR and "no longer in the window" in results[5].reason
    assert results[6].status == STATUS_ERROR and "mask prompt" in results[6].reason
    assert results[7].status == STATUS_TRACKING


def test_target_absent_below_the_score_threshold(blackswan):
    frames, masks, _ = blackswan
    _, results = run_sync(frames[:3], {0: (MaskPrompt(masks[0]), None)}, score_threshold=1e6)
    assert all(r.status == STATUS_TARGET_ABSENT and not r.mask.any() for r in results)
    assert all(r.object_score is not None and "not visible" in r.reason for r in results)


def test_clear_prompt(blackswan):
    frames, masks, _ = blackswan
    engine = StreamingEngine(make_tracker(128))
    engine.set_prompt(MaskPrompt(masks[0]))
    assert engine.push(frames[0], 0).status == STATUS_TRACKING
    engine.clear_prompt()
    assert engine.push(frames[1], 1).status == STATUS_NO_PROMPT


def test_window_and_feature_cache_stay_bounded(blackswan):
    frames, masks, _ = blackswan
    engine, _ = run_sync(frames * 2, {0: (MaskPrompt(masks[0]), None)}, window_frames=5)
    assert len(engine.window) == 5 and engine.window.feature_count() == 5


def test_malformed_image_is_refused_with_a_clear_error():
    engine = StreamingEngine(make_tracker(128))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        engine.push(np.zeros((10, 10), np.uint8), 0)
    assert engine.stats.pushed == 0


def test_reduced_frames_with_their_camera_size_give_camera_size_masks_and_camera_pixel_prompts(blackswan):
    """Every other frame decoded at half size (427 x 240) and pushed with camera_hw=(480, 854), as
    the node does with a JPEG stream: a click at x = 800 (inside the camera frame, outside the
    reduced image) is accepted, SAM-2 gets the same points as for full-size frames, every mask is
    480 x 854, and switching between full and reduced decodes is no resolution change."""
    frames, masks, _ = blackswan
    ys, xs = np.nonzero(masks[0])
    click = PointsPrompt(points=np.array([[800.0, 400.0], [xs.mean(), ys.mean()]]), labels=np.array([0, 1]))
    points = {}
    for run in ("full", "reduced"):
        tracker = make_tracker(128)
        track_step = tracker.model.track_step
        points[run] = []

        def spy(*args, _seen=points[run], _track_step=track_step, **kwargs):
            if kwargs["point_inputs"] is not None:
                _seen.append(kwargs["point_inputs"]["point_coords"])
            return _track_step(*args, **kwargs)

        tracker.model.track_step = spy
        engine = StreamingEngine(tracker)
        results = []
        for i, image in enumerate(frames[:4]):
            camera_hw = None
            if run == "reduced" and i % 2 == 0:
                image, camera_hw = cv2.resize(image, (427, 240), interpolation=cv2.INTER_AREA), (480, 854)
            if i == 1:
                assert engine.set_prompt(click) == ""  # fitted to frame 0 (reduced: its camera size)
            results.append(engine.push(image, i * 33_333_333, "cam", camera_hw))
        assert [r.mask.shape for r in results] == [(480, 854)] * 4
        assert [r.status for r in results] == [STATUS_NO_PROMPT] + [STATUS_TRACKING] * 3
        assert all(r.notice == "" for r in results) and engine.stats.resolution_changes == 0
        assert results[0].image.shape == ((240, 427, 3) if run == "reduced" else (480, 854, 3))
    assert len(points["reduced"]) == 1 and torch.equal(points["reduced"][0], points["full"][0])
    engine = StreamingEngine(make_tracker(128))
    with pytest.raises(ValueError, match="camera_hw"):
        engine.push(frames[0], 0, camera_hw=(240, 427))
    assert engine.stats.pushed == 0
    engine.push(frames[0], 0)
    assert "resolution changed from 854x480 to 1708x960" in engine.push(frames[1], 1, camera_hw=(960, 1708)).notice


def test_live_mode_newest_frame_wins_and_drops_are_counted(blackswan):
    frames, masks, _ = blackswan
    results, done = [], threading.Event()

    def collect(result):
        results.append(result)
        done.set()

    engine = StreamingEngine(make_tracker(128), PipelineConfig(mode="live"), on_result=collect)
    try:
        engine.set_prompt(MaskPrompt(masks[0]))
        started = time.perf_counter()
        for i, image in enumerate(frames[:12]):  # a burst far faster than the tracker
            assert engine.push(image, i) is None
        push_time = time.perf_counter() - started
        deadline = time.time() + 60
        while time.time() < deadline and engine.stats.processed + engine.stats.dropped < 12:
            time.sleep(0.05)
    finally:
        engine.close()
    assert engine.stats.processed + engine.stats.dropped == 12
    assert engine.stats.dropped > 0, "a burst must drop frames, not queue them"
    assert results[-1].stamp_ns == 11, "the newest frame is always processed"
    stamps = [r.stamp_ns for r in results]
    assert stamps == sorted(stamps)
    assert push_time < 0.5 * sum(r.latency_s for r in results), "push must not wait for the model"
    assert all(r.status == STATUS_TRACKING for r in results)
