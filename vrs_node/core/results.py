"""What the streaming engine reports: one :class:`FrameResult` per processed frame (its ``status`` one
of the ``STATUS_*`` strings) and the :class:`EngineStats` counters. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATUS_NO_PROMPT = "no_prompt"
STATUS_TRACKING = "tracking"
STATUS_TARGET_ABSENT = "target_absent"
STATUS_ERROR = "error"
STATUS_GROUNDING = "grounding"


@dataclass(frozen=True)
class FrameResult:
    """The engine's answer for one processed frame.

    ``mask`` is H x W bool at camera resolution; ``object_score`` the SAM-2 object-score logit
    (None before any prompt); ``status`` one of the ``STATUS_*`` strings and ``reason`` a sentence
    for people; ``latency_s`` from ``push`` to the result; ``image`` the frame's image (a read-only
    view of the pushed array, no copy: smaller than ``mask`` when it was pushed with a larger
    ``camera_hw``); ``notice`` a sentence about a stream discontinuity first seen at this frame
    ("" when none; see the module docstring).
    """

    index: int
    stamp_ns: int
    frame_id: str
    mask: np.ndarray
    object_score: float | None
    status: str
    reason: str
    latency_s: float
    image: np.ndarray
    notice: str = ""


@dataclass
class EngineStats:
    """Counters since the engine started."""

    pushed: int = 0
    processed: int = 0
    dropped: int = 0
    errors: int = 0
    catchup_frames: int = 0
    queries: int = 0
    query_errors: int = 0
    time_jumps: int = 0
    resolution_changes: int = 0
