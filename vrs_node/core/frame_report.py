"""One processed frame's :class:`FrameResult` from its targets' SAM-2 results.

Per target (:class:`~vrs_node.core.target_specs.TargetReport`), in this order of precedence:

- ``error``: its prompt could not be applied on this frame (the reason);
- ``grounding``: it follows an instruction that has no answer yet (the scheduler's reason);
- ``no_prompt``: no result yet (its prompt waits for the next frame);
- ``target_absent``: its object-score logit is <= ``score_threshold``;
- ``tracking``: otherwise. Its box and area are its pixels in the instance map.

The frame: ``instance_map`` over the tracking targets (where masks overlap the higher object score
wins, :meth:`~vrs_node.core.target_results.TargetResults.instance_map`), ``mask`` = ``instance_map > 0``,
``object_score`` the highest of the targets' (None when none has one). With one target the frame's
status and reason are that target's (the single-target contract); with several, ``tracking`` if any
is tracked, else the first of ``error``, ``grounding``, ``target_absent``, ``no_prompt`` that some
target has, and the reason lists each target's; with none, ``no_prompt``. (A target whose prompt
failed is reported on that frame before the engine forgets it.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vrs_node.core.frames import Frame
from vrs_node.core.results import (STATUS_ERROR, STATUS_GROUNDING, STATUS_NO_PROMPT, STATUS_TARGET_ABSENT,
                                   STATUS_TRACKING, FrameResult)
from vrs_node.core.target_specs import TargetReport, mask_box
from vrs_node.core.target_results import TargetResults
from vrs_node.core.track_result import TrackResult

NO_PROMPT_REASON = "no prompt yet: set an instruction, or a point, box or mask prompt"
_PRECEDENCE = (STATUS_TRACKING, STATUS_ERROR, STATUS_GROUNDING, STATUS_TARGET_ABSENT, STATUS_NO_PROMPT)


@dataclass(frozen=True)
class TargetState:
    """What the engine knows of a target besides its SAM-2 result: its ``label``, why it waits for a
    grounding (``waiting``, None when it follows no instruction or is answered), the stamp of its
    last applied grounding, and the error of its prompt on this frame (None when none)."""

    label: str
    waiting: str | None
    grounded_stamp_ns: int | None
    error: str | None


def frame_result(frame: Frame, latency_s: float, states: dict[int, TargetState],
                 results: TargetResults | dict[int, TrackResult], score_threshold: float,
                 error: str | None = None) -> FrameResult:
    """The frame's result (module docstring); ``error``: a frame-wide failure reason (then the
    mask is empty and the status ``error``)."""
    if error is not None:
        return FrameResult(frame.index, frame.stamp_ns, frame.frame_id, np.zeros(frame.camera_hw, bool), None,
                           STATUS_ERROR, error, latency_s, frame.image)
    tracked = {i: r for i, r in results.items() if i in states and r.object_score > score_threshold}
    instance = TargetResults(tracked, frame.camera_hw).instance_map()
    union = instance > 0
    regions = {i: union if len(tracked) == 1 else instance == i for i in tracked}  # one target: the union
    reports = tuple(_report(i, states[i], results.get(i), regions.get(i), score_threshold)
                    for i in sorted(states))
    status, reason = _overall(reports, states)
    scores = [r.object_score for r in reports if r.object_score is not None]
    return FrameResult(frame.index, frame.stamp_ns, frame.frame_id, union, max(scores) if scores else None,
                       status, reason, latency_s, frame.image, instance_map=instance, targets=reports,
                       tracks={i: r for i, r in results.items() if i in states})


def _report(target_id: int, state: TargetState, result: TrackResult | None, region: np.ndarray | None,
            score_threshold: float) -> TargetReport:
    """One target's report; ``region``: its pixels in the instance map (None when it is not tracked)."""
    score = None if result is None else result.object_score
    box, area = (None, 0) if region is None else mask_box(region)
    if state.error is not None:
        status, reason = STATUS_ERROR, state.error
    elif result is None and state.waiting is not None:
        status, reason = STATUS_GROUNDING, state.waiting
    elif result is None:
        status, reason = STATUS_NO_PROMPT, "its prompt is applied on the next frame"
    elif score <= score_threshold:
        status, reason = STATUS_TARGET_ABSENT, f"object score {score:.2f} <= {score_threshold:.2f}: target not visible"
    else:
        status, reason = STATUS_TRACKING, "tracking"
    return TargetReport(target_id, state.label, status == STATUS_TRACKING and area > 0, score, box, area,
                        state.grounded_stamp_ns, status, reason)


def _overall(reports: tuple[TargetReport, ...], states: dict[int, TargetState]) -> tuple[str, str]:
    """The frame's status and reason from its targets' (module docstring)."""
    if not reports:
        return STATUS_NO_PROMPT, NO_PROMPT_REASON
    if len(reports) == 1:
        return reports[0].status, reports[0].reason
    status = next(s for s in _PRECEDENCE if any(r.status == s for r in reports))
    tracked = sum(r.status == STATUS_TRACKING for r in reports)
    details = "; ".join(f"{r.id} ({r.label}): {r.reason}" for r in reports)
    return status, f"{tracked} of {len(reports)} targets tracked: {details}"
