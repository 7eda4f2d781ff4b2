"""sam2's hole filling of low-res mask logits, without its CUDA extension (OpenCV on the CPU).

The video predictor's post-processing (``fill_hole_area``: 8 in ``build_sam2_video_predictor`` and
in VRS-HQ's ``_build_sam2_``): every 8-connected background component (logit <= 0) of the S/4
low-res mask with at most ``fill_hole_area`` pixels gets logit :data:`HOLE_FILL_LOGIT`. sam2 needs
its CUDA extension for it and skips it silently without; here it always runs.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

HOLE_FILL_LOGIT = 0.1
"""Logit a filled hole gets (``sam2.utils.misc.fill_holes_in_mask_scores``)."""


def connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-connected components of binary masks (N x 1 x H x W), in the form of sam2's CUDA
    ``get_connected_components``: (labels, areas), both N x 1 x H x W int32 on ``mask``'s device;
    labels are 0 on zero pixels and > 0 on set pixels, areas give each set pixel the pixel count
    of its component (0 on zero pixels). OpenCV's ``connectedComponentsWithStats``, on the CPU.
    """
    labels, areas = _components(mask != 0)
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(areas).to(mask.device)


def fill_holes_in_mask_scores(mask: torch.Tensor, max_area: int) -> torch.Tensor:
    """sam2's ``fill_holes_in_mask_scores`` (same in VRS-HQ's fork and sam2 1.1.0) without CUDA.

    ``mask``: N x 1 x H x W logits. Every 8-connected component of background pixels (logit <= 0)
    with at most ``max_area`` pixels -- enclosed or touching the border alike -- gets logit
    :data:`HOLE_FILL_LOGIT`; everything else is unchanged. ``max_area`` <= 0, or no such
    component, returns ``mask`` itself. The components are found on the host (numpy and OpenCV:
    torch's per-op overhead would cost more than the labelling of an S/4 mask).
    """
    if max_area <= 0:
        return mask
    labels, areas = _components(mask <= 0)
    holes = (labels > 0) & (areas <= max_area)
    if not holes.any():
        return mask
    return torch.where(torch.from_numpy(holes).to(mask.device), HOLE_FILL_LOGIT, mask)


def _components(mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """:func:`connected_components` of N x 1 x H x W bool masks as host numpy arrays (ValueError
    for another shape)."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected N x 1 x H x W masks, got {tuple(mask.shape)}")
    binary = mask.cpu().numpy().view(np.uint8)
    labels = np.zeros(binary.shape, np.int32)
    areas = np.zeros(binary.shape, np.int32)
    for i in range(binary.shape[0]):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(binary[i, 0], connectivity=8, ltype=cv2.CV_32S)
        area = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        area[0] = 0  # label 0 = the zero pixels
        labels[i, 0], areas[i, 0] = lab, area[lab]
    return labels, areas
