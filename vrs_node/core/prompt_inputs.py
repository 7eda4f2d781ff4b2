"""How each prompt (:mod:`vrs_node.core.prompts`) becomes SAM-2's input on a frame.

- a :class:`~vrs_node.core.prompts.PointsPrompt` -> SAM-2 point inputs in S-pixel units
  (:func:`point_input`, ``SAM2VideoPredictor.add_new_points_or_box``'s arithmetic);
- a :class:`~vrs_node.core.prompts.MaskPrompt` -> the 1 x 1 x S x S {0, 1} mask input
  (:func:`mask_input`, as ``add_new_mask`` resizes it);
- a :class:`~vrs_node.core.prompts.TokenPrompt`'s decode -> the mask input (:func:`decoded_mask_input`).

S is the SAM-2 input size; ``transform.valid_size`` gives the image content inside it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vrs_node.core.prompts import PointsPrompt
from vrs_node.models.sam2_build import SamImageTransform


def decoded_mask_input(low_res_logits: torch.Tensor, image_size: int) -> torch.Tensor:
    """1 x 1 x S x S {0, 1} float mask of a decode: its low-res logits upsampled bilinearly
    (align_corners=False) to S x S and thresholded at 0 -- VRS-HQ's ``out_mask_logits > 0``, where
    ``out_mask_logits`` is ``add_new_points``' output at "video" resolution, which for VRS-HQ (its
    video frames are the padded S x S SAM inputs) is S x S."""
    high_res = F.interpolate(low_res_logits, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (high_res > 0).float()


def mask_input(mask: np.ndarray, image_hw: tuple[int, int], transform: SamImageTransform,
               device: torch.device) -> torch.Tensor:
    """Camera-resolution mask -> 1 x 1 x S x S {0, 1} float on ``device``, as ``add_new_mask``
    resizes it: antialiased bilinear to the content size ``transform.valid_size(*image_hw)``,
    thresholded at 0.5, zero-padded to S x S. ValueError unless the mask is ``image_hw``."""
    mask = np.asarray(mask)
    if mask.shape != tuple(image_hw):
        raise ValueError(f"mask prompt is {mask.shape}, the frame is {tuple(image_hw)}")
    m = torch.from_numpy(mask.astype(bool))[None, None].float().to(device)
    size = transform.image_size
    valid_h, valid_w = transform.valid_size(*image_hw)
    if (valid_h, valid_w) != m.shape[-2:]:
        m = F.interpolate(m, size=(valid_h, valid_w), mode="bilinear", align_corners=False, antialias=True)
        m = (m >= 0.5).float()
    return F.pad(m, (0, size - valid_w, 0, size - valid_h))


def point_input(prompt: PointsPrompt, image_hw: tuple[int, int], transform: SamImageTransform,
                device: torch.device) -> dict:
    """Camera-pixel clicks/box -> SAM-2 point inputs on ``device`` in S-pixel units (box = labels 2,
    3 first): ``xy / (W, H) * transform.valid_size`` in float32."""
    coords, labels = [], []
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        coords += [[x0, y0], [x1, y1]]
        labels += [2, 3]
    if prompt.points is not None:
        coords += np.asarray(prompt.points, dtype=np.float32).tolist()
        labels += np.asarray(prompt.labels).astype(int).tolist()
    h, w = image_hw
    valid_h, valid_w = transform.valid_size(h, w)
    # Same arithmetic as SAM2VideoPredictor.add_new_points_or_box: normalise, then scale.
    xy = torch.tensor(coords, dtype=torch.float32) / torch.tensor([w, h])
    xy = xy * torch.tensor([valid_w, valid_h], dtype=torch.float32)
    return {"point_coords": xy[None].to(device),
            "point_labels": torch.tensor(labels, dtype=torch.int32)[None].to(device)}
