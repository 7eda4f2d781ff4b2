"""Shared fixtures: the shared DAVIS-2016 sample and tiny-random SAM-2 models.

The DAVIS data lives in ``../shared/data/davis2016`` beside the repository (override with
``VRS_DAVIS_DIR``), the VRS-HQ goldens in ``../shared/golden/vrshq_tiny`` (``VRS_GOLDEN_DIR``);
tests that need them fail, not skip, when they are missing.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vrs_node.core.process_exit import safe_exit_code
from vrs_node.core.tracker import StreamingTracker
from vrs_node.models.profiles import build_sam2_for_profile, get_profile

# Keep DDS traffic on this machine and away from other test runs (set before rclpy.init).
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))

REPO = Path(__file__).resolve().parents[1]
DAVIS = Path(os.environ.get("VRS_DAVIS_DIR", REPO.parent / "shared" / "data" / "davis2016"))
VRSHQ_GOLDEN = Path(os.environ.get("VRS_GOLDEN_DIR", REPO.parent / "shared" / "golden" / "vrshq_tiny"))
"""The authors' VRS-HQ code's tiny checkpoint and golden outputs (shared/golden/vrshq_tiny/README.md)."""
FUZZ_EXAMPLES: Counter = Counter()
"""Examples run to completion per fuzzed input surface (test_fuzz.py); printed at the session's end."""


_EXIT_STATUS = [0]
"""The session's exit status, kept for :func:`pytest_unconfigure`."""


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS[0] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """The run ends with pytest's own status even when a test left a worker thread inside torch (a
    live test that failed before closing its engine, say): Python's exit would abort the process
    then (SIGABRT; vrs_node.core.process_exit)."""
    safe_exit_code(_EXIT_STATUS[0])


def pytest_terminal_summary(terminalreporter):
    """Print how many examples each fuzzed input surface ran (also under -q), so CI output shows them."""
    if FUZZ_EXAMPLES:
        terminalreporter.section("fuzz examples run per input surface")
        for surface, count in sorted(FUZZ_EXAMPLES.items()):
            terminalreporter.write_line(f"{surface}: {count}")


def davis_sequence(name: str = "blackswan", count: int | None = None):
    """(RGB frames, GT masks as bool, frame paths) of a shared DAVIS-2016 sequence."""
    jpgs = sorted((DAVIS / name / "JPEGImages").glob("*.jpg"))[:count]
    assert jpgs, f"DAVIS sample missing: {DAVIS / name} (set VRS_DAVIS_DIR)"
    frames = [np.array(Image.open(p).convert("RGB")) for p in jpgs]
    masks = [np.array(Image.open(DAVIS / name / "Annotations" / (p.stem + ".png"))) > 0 for p in jpgs]
    return frames, masks, jpgs


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight (x0, y0, x1, y1) box of a binary mask."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


@pytest.fixture(scope="session")
def blackswan():
    """First 24 frames of blackswan with ground truth."""
    return davis_sequence("blackswan", 24)


def make_tracker(image_size: int = 128, backend: str = "device", **kwargs) -> StreamingTracker:
    """A tracker over tiny-random SAM-2 (seeded: every call builds identical weights); ``backend``
    is its image transform's (``"reference"``: PIL, as sam2's video predictor pre-processes)."""
    model, transform = build_sam2_for_profile(get_profile("tiny-random"), image_size=image_size)
    return StreamingTracker(model, dataclasses.replace(transform, backend=backend), **kwargs)


def make_grounder(tracker: StreamingTracker, **config):
    """A Grounder with the tiny-random profile's language models (seeded) over ``tracker``."""
    from vrs_node.core.grounder import Grounder, GrounderConfig
    from vrs_node.models.profiles import build_grounding_models

    models = build_grounding_models(get_profile("tiny-random"))
    return Grounder(models.mllm, models.tokenizer, models.anchor_scorer, tracker, GrounderConfig(**config),
                    models.special_ids)


def grounding_engine(**config):
    """A sync engine over the tiny-random models at 128 px, built by build_pipeline with ``PipelineConfig(**config)``; (engine, its query reports)."""
    from vrs_node.core.config import PipelineConfig
    from vrs_node.core.pipeline import build_pipeline
    from vrs_node.models.profiles import load_models

    reports = []
    engine = build_pipeline(load_models(get_profile("tiny-random"), image_size=128),
                            PipelineConfig(**config), on_query=reports.append)
    return engine, reports


class HeldCall:
    """A stand-in for a model call still running (a grounding query, a reasoning batch): a call
    sets ``inside``, waits (at most 60 s) for ``release``, then returns ``then(*args, **kwargs)``."""

    def __init__(self, then):
        self.then, self.inside, self.release = then, threading.Event(), threading.Event()

    def __call__(self, *args, **kwargs):
        self.inside.set()
        assert self.release.wait(60)
        return self.then(*args, **kwargs)


def failed_queries(window, instructions, **options):
    """Every instruction's answer a failure: what a held query returns once released."""
    return [RuntimeError("held, then released")] * len(instructions)


def failed_call(*args, **kwargs):
    """Raise, as a model call that failed: what a held reasoning batch does once released."""
    raise RuntimeError("held, then released")


FRAME_NS = 33_333_333
"""Stamp step of :func:`push_all` (30 Hz)."""


def push_all(engine, frames, start=0, actions=None):
    """Push ``frames`` (sync engine) stamped ``i * FRAME_NS`` from ``i = start``; ``actions[i]``
    (a callable on the engine) runs before frame ``i``. The results, in order."""
    results = []
    for i, image in enumerate(frames, start):
        if actions and i in actions:
            actions[i](engine)
        results.append(engine.push(image, i * FRAME_NS, "camera"))
    return results


@pytest.fixture
def ros_nodes():
    """rclpy initialised for one test; nodes appended to the yielded list are destroyed after it."""
    import rclpy

    rclpy.init()
    nodes = []
    yield nodes
    for node in nodes:
        node.destroy_node()
    rclpy.shutdown()


def ros_session(make):
    """Fixture body: rclpy initialised for one test, yielding ``start(**params)`` = ``make(**params)``;
    everything started is ``close()``-d after the test."""
    import rclpy

    rclpy.init()
    made = []
    yield lambda **params: made.append(make(**params)) or made[-1]
    for item in made:
        item.close()
    rclpy.shutdown()


@pytest.fixture
def ros():
    """``ros(**params)`` starts a :class:`ros_harness.Harness` (a VrsNode with ``params`` beside a
    peer node), closed after the test."""
    from ros_harness import Harness

    yield from ros_session(Harness)
