"""What the streaming engine reports: one :class:`FrameResult` per processed frame (its ``status`` one
of the ``STATUS_*`` strings) and the :class:`EngineStats` counters. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vrs_node.core.target_specs import TargetReport

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

    With several targets ``mask`` is their union and ``object_score`` the highest of theirs;
    ``instance_map`` (H x W uint8) holds each pixel's target id (0 = background; where masks
    overlap the target with the higher object score wins) and ``targets`` one
    :class:`~vrs_node.core.target_specs.TargetReport` per target, ids ascending. ``tracks`` maps
    each target with a SAM-2 result on this frame to its
    :class:`~vrs_node.core.track_result.TrackResult` (low-res logits on the model's device, cheap to keep):
    a target's own mask, before overlaps are resolved, is ``tracks[id].mask()`` when its object
    score is above the threshold (what replaying several expressions together scores).
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
    instance_map: np.ndarray | None = None
    targets: tuple[TargetReport, ...] = ()
    tracks: Mapping[int, Any] = field(default_factory=dict)


@dataclass
class EngineStats:
    """Counters since the engine started. ``catchup_frames``: frames tracked by catch-ups, of which
    ``prepared_catchup_frames`` on the grounding thread (:mod:`vrs_node.core.catchup`)."""

    pushed: int = 0
    processed: int = 0
    dropped: int = 0
    errors: int = 0
    catchup_frames: int = 0
    prepared_catchup_frames: int = 0
    queries: int = 0
    query_errors: int = 0
    superseded: int = 0
    time_jumps: int = 0
    resolution_changes: int = 0
