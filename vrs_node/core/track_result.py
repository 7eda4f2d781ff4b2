"""One frame's SAM-2 output for one target (:class:`TrackResult`) and its camera-resolution mask.

On the CPU the mask is upsampled with OpenCV only where it can be set (:func:`positive_upsampled`):
inside the bounding box of the positive low-res logits, cropped so that the crop's resize samples
exactly where the whole frame's resize does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vrs_node.models.sam2_build import SamImageTransform

CPU_MASK_TOLERANCE = 1e-3
"""On the CPU, :meth:`TrackResult.mask` may differ from ``camera_logits() > 0`` only at pixels
whose camera-size logit is within this of 0 (OpenCV's and torch's bilinear round differently)."""


@dataclass(frozen=True)
class TrackResult:
    """One frame's SAM-2 output: low-res mask logits (1 x 1 x S/4 x S/4) and the object-score logit.

    The object-score (occlusion) logit > 0 means "target visible"; when it is <= 0 SAM-2 has
    already set every mask logit to ``sam2.modeling.sam2_base.NO_OBJ_SCORE``.
    """

    low_res_logits: torch.Tensor
    object_score: float
    image_hw: tuple[int, int]
    transform: SamImageTransform

    def camera_logits(self) -> torch.Tensor:
        """Mask logits at camera resolution (H x W, float32).

        ``squash``: bilinear (align_corners=False) from S/4 straight to H x W, as the predictor
        does. ``pad``: bilinear to S x S, crop the padding to the content (h', w'), bilinear to
        H x W, as VRS-HQ does.
        """
        def bilinear(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return F.interpolate(logits[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        return self._to_camera(self.low_res_logits.float()[0, 0], bilinear, bilinear)

    def mask(self) -> np.ndarray:
        """Binary mask at camera resolution (H x W bool numpy): the logits brought to camera size as
        :meth:`camera_logits` does, > 0; off the CPU thresholded on the device (only the bool mask
        comes back). On the CPU the bilinear steps are OpenCV's ``INTER_LINEAR`` (torch's
        half-pixel-centre sampling, 2-3x faster at 1080p), rounding differently: the mask equals
        ``camera_logits() > 0`` except where the logit is within :data:`CPU_MASK_TOLERANCE` of 0
        (max |difference| of the logits measured: 9e-4 at S = 1024 and 1080p). On the CPU the last
        step runs only around the positive logits (:func:`positive_upsampled`), and without a
        positive low-res logit (an absent target) the mask is all False at once: bilinear steps of
        values <= 0 stay <= 0 (on a device that check would cost one more synchronisation)."""
        logits = self.low_res_logits
        if logits.device.type != "cpu":
            return (self.camera_logits() > 0).cpu().numpy()
        if not bool((logits > 0).any()):
            return np.zeros(self.image_hw, bool)
        return self._to_camera(logits.float()[0, 0].numpy(), _opencv_bilinear, positive_upsampled)

    def _to_camera(self, logits, bilinear, last):
        """S/4 logits (2-D) brought to camera size in the ``squash`` or ``pad`` geometry of
        :meth:`camera_logits`: ``bilinear(values, (h, w))`` for pad's step to S x S, ``last(values,
        (H, W))`` for the step to the camera size."""
        if self.transform.resize == "pad":
            size = self.transform.image_size
            valid_h, valid_w = self.transform.valid_size(*self.image_hw)
            logits = bilinear(logits, (size, size))[:valid_h, :valid_w]
        return last(logits, tuple(self.image_hw))


def _opencv_bilinear(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """2-D float32 ``values`` resized to ``size`` (h, w) by OpenCV's ``INTER_LINEAR``."""
    return cv2.resize(values, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def positive_upsampled(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``_opencv_bilinear(values, size) > 0`` (H x W bool) for 2-D float32 ``values``, resized only
    inside the bounding box of the positive values.

    Outside it every output pixel interpolates values <= 0, so it is False. The box is widened by
    one value on each side (pixels at the crop's edge then interpolate values <= 0 there, as in the
    whole frame) and aligned per axis to a multiple of ``n / gcd(n, N)`` values (``n`` values to
    ``N`` pixels; its pixel offset is then a whole number), so the crop's resize has the whole
    frame's scale and samples at the same points: only the float rounding of the sample positions
    may differ, far below :data:`CPU_MASK_TOLERANCE`.
    """
    out = np.zeros(size, bool)
    positive = values > 0
    rows, cols = np.flatnonzero(positive.any(axis=1)), np.flatnonzero(positive.any(axis=0))
    if rows.size == 0:
        return out
    (r0, r1), (c0, c1) = (_aligned_span(rows[0], rows[-1], values.shape[0], size[0]),
                          _aligned_span(cols[0], cols[-1], values.shape[1], size[1]))
    y0, y1 = r0 * size[0] // values.shape[0], r1 * size[0] // values.shape[0]
    x0, x1 = c0 * size[1] // values.shape[1], c1 * size[1] // values.shape[1]
    np.greater(_opencv_bilinear(values[r0:r1, c0:c1], (y1 - y0, x1 - x0)), 0, out=out[y0:y1, x0:x1])
    return out


def _aligned_span(first: int, last: int, n: int, pixels: int) -> tuple[int, int]:
    """[start, stop) of the ``n`` values to crop around values ``first..last`` (a margin of one
    each side, clipped to 0..n), both multiples of ``n / gcd(n, pixels)`` or the array's ends."""
    period = n // math.gcd(n, pixels)
    start = max(0, (first - 1) // period * period)
    stop = min(n, -(-(last + 2) // period) * period)
    return start, stop
