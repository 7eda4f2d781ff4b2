"""Several targets drawn on an image: each in its own colour, with its label (the node's ``overlay``).

:func:`overlay_instances` blends every target's pixels of an instance map (uint8, pixel = target
id, 0 = background) as :func:`~vrs_node.io.image.overlay_mask` blends, in the colour of its id
(:func:`target_color`; id 1 is the single-target overlay's red, so one target id 1 looks as
before), and writes ``"<id> <label>"`` on a tag of that colour above the target's box.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from vrs_node.io.image import ImageConversionError, blend_into

PALETTE = ((255, 0, 0), (0, 200, 0), (30, 120, 255), (255, 210, 0), (255, 0, 255), (0, 220, 220),
           (255, 130, 0), (150, 80, 255), (170, 255, 60), (255, 110, 180))
"""RGB colours of the targets, by id (:func:`target_color`); the first is the mask overlay's red."""
LABEL_CHARS = 32
"""Most characters of a label drawn (longer ones are cut, ``...`` appended)."""
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def target_color(target_id: int) -> tuple[int, int, int]:
    """The RGB colour of target ``target_id`` (1..255): :data:`PALETTE` in turn, from id 1."""
    return PALETTE[(target_id - 1) % len(PALETTE)]


def label_text(target_id: int, label: str) -> str:
    """What is written beside a target: ``"<id> <label>"``, the label cut to :data:`LABEL_CHARS`
    characters and anything outside printable ASCII (which OpenCV's fonts lack) shown as ``?``."""
    if len(label) > LABEL_CHARS:
        label = label[:LABEL_CHARS - 3] + "..."
    return f"{target_id} " + "".join(c if " " <= c <= "~" else "?" for c in label)


def overlay_instances(image_rgb: np.ndarray, instance_map: np.ndarray,
                      targets: Iterable[tuple[int, str, tuple[int, int, int, int] | None]],
                      alpha: float = 0.5) -> np.ndarray:
    """``image_rgb`` (uint8 (H, W, 3)) with each of ``targets`` drawn: (id, label, box), ``box``
    the inclusive ``(x0, y0, x1, y1)`` of its mask in pixels or None (nothing to label).

    The pixels where ``instance_map`` (uint8 (H, W)) holds the id are blended with its
    :func:`target_color` as :func:`~vrs_node.io.image.overlay_mask` blends (``alpha``); the label
    (:func:`label_text`) goes on a tag of that colour (black or white text, whichever reads) just
    above the box's top-left corner, or inside the box at the top edge of the image, in a font
    scaled to the image. Ids not in ``targets`` are left undrawn. Returns a new array; raises
    ``ImageConversionError`` for a map that is not uint8 of the image's size."""
    if instance_map.dtype != np.uint8 or instance_map.shape != image_rgb.shape[:2]:
        raise ImageConversionError(f"instance map must be uint8 of the image's size {image_rgb.shape[:2]}; "
                                   f"got {instance_map.dtype} with shape {instance_map.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is outside [0, 1]")
    out = image_rgb.copy()
    labels = []
    for target_id, label, box in targets:
        blend_into(out, cv2.compare(instance_map, target_id, cv2.CMP_EQ), target_color(target_id), alpha)
        if box is not None:
            labels.append((target_id, label, box))
    scale = max(0.4, min(image_rgb.shape[:2]) / 800)
    thickness = max(1, round(scale * 2))
    for target_id, label, (x0, y0, _, _) in labels:
        text, color = label_text(target_id, label), target_color(target_id)
        (width, height), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
        top = int(y0) - height - 2 * baseline if y0 >= height + 2 * baseline else int(y0)
        cv2.rectangle(out, (int(x0), top), (int(x0) + width, top + height + 2 * baseline), color, cv2.FILLED)
        ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] >= 140 else (255, 255, 255)
        cv2.putText(out, text, (int(x0), top + height + baseline), _FONT, scale, ink, thickness, cv2.LINE_AA)
    return out
