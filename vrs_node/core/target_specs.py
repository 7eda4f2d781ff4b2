"""What a target is, as the engine's callers give it and as each frame reports it. Torch-free.

A target has an id (1-255, :data:`MAX_TARGET_ID`; 0 is the background of the instance map), a
label and a source: an instruction that the MLLM grounds, or a geometric prompt (box and/or
points, or a mask). :class:`TargetSpec` is what a caller asks for; :class:`TargetReport` is one
target's part of a processed frame (``FrameResult.targets``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import cv2
import numpy as np

MAX_TARGET_ID = 255
"""Target ids are 1..255: an instance map pixel (uint8) holds one, 0 is the background."""
DEFAULT_MAX_TARGETS = 8
"""Default of ``max_targets``: the most targets an engine follows at once."""


def check_target_id(target_id) -> int:
    """``target_id`` as an int if it is one in 1..:data:`MAX_TARGET_ID`, else ValueError with the reason."""
    if isinstance(target_id, bool) or not isinstance(target_id, (int, np.integer)):
        raise ValueError(f"a target id is an int in 1..{MAX_TARGET_ID}, got {target_id!r}")
    if not 1 <= target_id <= MAX_TARGET_ID:
        raise ValueError(f"a target id is in 1..{MAX_TARGET_ID} (0 is the background), got {target_id}")
    return int(target_id)


def check_known_target(target_id, ids: Collection[int]) -> None:
    """ValueError with the reason unless ``target_id`` is a valid id (:func:`check_target_id`) in ``ids``."""
    check_target_id(target_id)
    if target_id not in ids:
        raise ValueError(f"no target with id {target_id!r}; targets: {sorted(ids)}")


def check_new_target(target_id, ids: Collection[int], max_targets: int) -> None:
    """ValueError with the reason unless ``target_id`` is a valid id not in ``ids`` and ``ids``
    holds fewer than ``max_targets``."""
    check_target_id(target_id)
    if target_id in ids:
        raise ValueError(f"target id {target_id} is already tracked: remove it first or use set_prompt")
    if len(ids) >= max_targets:
        raise ValueError(f"already {len(ids)} targets, the most this tracker takes (max_targets)")


@dataclass(frozen=True)
class TargetSpec:
    """A target to follow: exactly one of ``instruction`` (text, grounded by the MLLM) and
    ``prompt`` (a :class:`~vrs_node.core.prompts.PointsPrompt` or
    :class:`~vrs_node.core.prompts.MaskPrompt` in camera pixels, optionally on the window frame
    stamped ``stamp_ns``). ``label``: the instruction's text, else ``box``, ``points`` or ``mask``."""

    instruction: str | None = None
    prompt: object | None = None
    stamp_ns: int | None = None

    def __post_init__(self) -> None:
        if (self.instruction is None) == (self.prompt is None):
            raise ValueError("a target has exactly one of an instruction and a prompt")
        if self.instruction is not None and self.stamp_ns is not None:
            raise ValueError("stamp_ns belongs to a prompt; an instruction is grounded over the window")

    @property
    def label(self) -> str:
        """The instruction's text as given, or the kind of prompt (``box``, ``points``, ``mask``)."""
        if self.instruction is not None:
            return self.instruction
        if hasattr(self.prompt, "mask"):
            return "mask"
        return "points" if getattr(self.prompt, "points", None) is not None else "box"


@dataclass(frozen=True)
class TargetReport:
    """One target in one processed frame.

    ``present``: its object score is above the threshold and its mask is not empty;
    ``object_score``: SAM-2's object-score logit (None before its first prompt or grounding);
    ``box``: ``(x0, y0, x1, y1)`` of its mask in camera pixels, inclusive (None when empty);
    ``area``: mask pixels; ``grounded_stamp_ns``: the stamp of the keyframe of its last applied
    grounding (None for a prompt target or before the first answer); ``status``/``reason`` as a
    :class:`~vrs_node.core.results.FrameResult`'s, for this target alone."""

    id: int
    label: str
    present: bool
    object_score: float | None
    box: tuple[int, int, int, int] | None
    area: int
    grounded_stamp_ns: int | None
    status: str
    reason: str

    def to_dict(self) -> dict:
        """JSON-ready: the fields by name (``box`` a list or None)."""
        return {"id": self.id, "label": self.label, "present": self.present,
                "object_score": self.object_score, "box": None if self.box is None else list(self.box),
                "area": self.area, "grounded_stamp_ns": self.grounded_stamp_ns, "status": self.status,
                "reason": self.reason}


def mask_box(mask: np.ndarray) -> tuple[tuple[int, int, int, int] | None, int]:
    """(inclusive bounding box ``(x0, y0, x1, y1)`` of a bool H x W mask, or None when empty; its
    area in pixels), by OpenCV's ``boundingRect``/``countNonZero`` (a fraction of a millisecond at 1080p)."""
    pixels = np.ascontiguousarray(mask).view(np.uint8)
    area = cv2.countNonZero(pixels)
    if area == 0:
        return None, 0
    x, y, w, h = cv2.boundingRect(pixels)
    return (x, y, x + w - 1, y + h - 1), area
