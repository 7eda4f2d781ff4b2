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
    binary = _host_binary(mask != 0)
    labels = np.zeros(binary.shape, np.int32)
    areas = np.zeros(binary.shape, np.int32)
    for i in range(binary.shape[0]):
        labels[i, 0], label_areas = _label(binary[i, 0])
        areas[i, 0] = label_areas[labels[i, 0]]
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
    background = _host_binary(mask <= 0)
    holes = np.zeros(background.shape, bool)
    for i in range(background.shape[0]):
        labels, label_areas = _label(background[i, 0])
        small = label_areas <= max_area
        small[0] = False  # label 0 = the foreground
        holes[i, 0] = small[labels]
    if not holes.any():
        return mask
    return torch.where(torch.from_numpy(holes).to(mask.device), HOLE_FILL_LOGIT, mask)


def _host_binary(mask: torch.Tensor) -> np.ndarray:
    """N x 1 x H x W bool masks as a uint8 0/1 numpy array on the host (ValueError for another shape)."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected N x 1 x H x W masks, got {tuple(mask.shape)}")
    return mask.cpu().numpy().view(np.uint8)


def _label(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, area of each label) of a 2-D uint8 0/1 image's 8-connected components; label 0 is
    the zero pixels, and its area is given as 0."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8, ltype=cv2.CV_32S)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
    areas[0] = 0
    return labels, areas
