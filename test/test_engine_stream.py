"""Hostile streams into the engine: stamps going backwards, resolution changes mid-stream, bursts far
above the camera rate. Each is a documented reset or is handled, tracking goes on, nothing grows."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
from conftest import davis_sequence, grounding_engine, make_tracker

from vrs_node.core.config import PipelineConfig
from vrs_node.core.engine import StreamingEngine
from vrs_node.core.prompts import MaskPrompt
from vrs_node.core.queries import TRIGGER_INSTRUCTION, TRIGGER_PERIOD
from vrs_node.core.results import STATUS_ERROR, STATUS_TRACKING

FRAME_NS = 100_000_000


def test_a_stamp_going_back_starts_a_new_timeline_and_keeps_the_target():
    frames, masks, _ = davis_sequence("blackswan", 16)
    engine, reports = grounding_engine(period_s=0.5, window_frames=8)
    engine.set_instruction("the black swan")
    start = 5_000_000_000
    stamps = [start + i * FRAME_NS for i in range(10)] + [i * FRAME_NS for i in range(6)]  # a looping bag
    stamps[4], stamps[5] = stamps[5], stamps[4]  # 0.1 s out of order: processed as it comes
    results = []
    for i, (image, stamp) in enumerate(zip(frames, stamps)):
        results.append(engine.push(image, stamp))
        if i == 5:
            assert len(engine.window) == 6, "a small step back keeps the window"
        if i == 10:
            assert len(engine.window) == 1, "the old timeline's frames are dropped"
    assert [bool(r.notice) for r in results] == [False] * 10 + [True] + [False] * 5
    assert "time jumped back 5.900 s" in results[10].notice and "target kept" in results[10].notice
    assert engine.stats.time_jumps == 1 and engine.stats.errors == 0
    assert all(r.status == STATUS_TRACKING and r.mask.any() for r in results)
    assert [r.stamp_ns for r in results] == stamps
    # Queries at frames 0, 4 (stamp 0.5 s in, out of order), then the schedule restarts at the
    # jump (frame 10, stamp 0): the next one is due 0.5 s of the new timeline later, at frame 15.
    assert [q.trigger for q in reports] == [TRIGGER_INSTRUCTION, TRIGGER_PERIOD, TRIGGER_PERIOD]
    assert reports[2].grounding.keyframe_stamp_ns <= 5 * FRAME_NS, "the new timeline's frames only"
    assert all(q.applied and q.error is None for q in reports)


def test_a_resolution_change_keeps_the_target_and_masks_follow_the_frame_size():
    frames, masks, _ = davis_sequence("blackswan", 12)
    engine, reports = grounding_engine(period_s=0.3, window_frames=8)
    engine.set_instruction("the black swan")
    sizes = [(854, 480)] * 4 + [(427, 240)] * 4 + [(320, 320)] * 4
    results = [engine.push(cv2.resize(image, size, interpolation=cv2.INTER_AREA), i * FRAME_NS)
               for i, (image, size) in enumerate(zip(frames, sizes))]
    assert [r.mask.shape for r in results] == [(h, w) for w, h in sizes]
    assert [i for i, r in enumerate(results) if r.notice] == [4, 8]
    assert "from 854x480 to 427x240" in results[4].notice and "from 427x240 to 320x320" in results[8].notice
    assert engine.stats.resolution_changes == 2 and engine.stats.errors == 0
    assert all(r.status == STATUS_TRACKING for r in results)
    assert len(reports) >= 3 and all(q.applied and q.error is None for q in reports), \
        "grounding over a window holding two resolutions works"
    # A mask prompt is checked against the frame it is placed on.
    engine.set_prompt(MaskPrompt(masks[0]))
    bad = engine.push(cv2.resize(frames[0], (320, 320)), 20 * FRAME_NS)
    assert bad.status == STATUS_ERROR and "mask prompt is (480, 854), the frame is (320, 320)" in bad.reason
    assert engine.push(frames[1], 21 * FRAME_NS).notice.startswith("resolution changed")


def test_a_burst_far_above_camera_rate_is_bounded_and_keeps_publishing():
    frames, masks, _ = davis_sequence("blackswan", 8)
    results, lock = [], threading.Lock()

    def collect(result):
        with lock:
            results.append(result)

    engine = StreamingEngine(make_tracker(128), PipelineConfig(mode="live", window_frames=4), on_result=collect)
    try:
        engine.set_prompt(MaskPrompt(masks[0]))
        burst = 2000
        for i in range(burst):  # thousands of frames per second, against a tracker at a few per second
            engine.push(frames[i % len(frames)], i * 1_000_000)
            if i % 500 == 0:
                assert len(engine.window) <= 4
        deadline = time.time() + 60
        while time.time() < deadline and engine.stats.processed + engine.stats.dropped < burst:
            time.sleep(0.02)
    finally:
        engine.close()
    stats = engine.stats
    assert stats.pushed == burst == stats.processed + stats.dropped and stats.errors == 0
    assert 0 < stats.processed < burst / 10, "the burst is dropped at the hand-over, not queued"
    assert len(engine.window) <= 4 and engine.window.feature_count() <= 4
    with lock:
        assert len(results) == stats.processed and results[-1].stamp_ns == (burst - 1) * 1_000_000
        assert all(r.status == STATUS_TRACKING for r in results)
    assert np.array_equal([r.stamp_ns for r in results], sorted(r.stamp_ns for r in results))
