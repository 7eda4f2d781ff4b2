"""What conditions the tracker on a frame, and how each prompt becomes SAM-2's input.

- :class:`PointsPrompt`: clicks and/or a box in camera pixels -> SAM-2 point inputs in S-pixel
  units (:func:`point_input`, ``SAM2VideoPredictor.add_new_points_or_box``'s arithmetic);
- :class:`MaskPrompt`: a camera-resolution mask -> the 1 x 1 x S x S {0, 1} mask input
  (:func:`mask_input`, as ``add_new_mask`` resizes it);
- :class:`TokenPrompt`: a 256-d token (VRS-HQ's TAK') decoded on the frame; its thresholded S x S
  decode is the mask input (the tracker decodes it, :mod:`vrs_node.core.tracker`).

S is the SAM-2 input size; ``transform.valid_size`` gives the image content inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vrs_node.models.sam2_build import SamImageTransform


@dataclass(frozen=True)
class MaskPrompt:
    """A binary mask at camera resolution (H x W, bool or 0/1)."""

    mask: np.ndarray


@dataclass(frozen=True)
class PointsPrompt:
    """Clicks and/or a box in camera pixels.

    ``points``: (N, 2) x, y; ``labels``: (N,) 1 = positive, 0 = negative; ``box``: (x0, y0, x1, y1).
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if (self.points is None) != (self.labels is None):
            raise ValueError("points and labels must be given together")
        if self.points is None and self.box is None:
            raise ValueError("a points prompt needs points or a box")
        if self.points is not None and (
            np.ndim(self.points) != 2 or np.shape(self.points)[1] != 2
            or np.shape(self.labels) != (np.shape(self.points)[0],)
        ):
            raise ValueError(f"points must be (N, 2) with (N,) labels, got {np.shape(self.points)} "
                             f"and {np.shape(self.labels)}")


@dataclass(frozen=True)
class TokenPrompt:
    """A 256-d embedding appended to the decoder's sparse prompt (VRS-HQ's [NaP, NaP, token]).

    As a conditioning prompt it does what VRS-HQ does with TAK' on the keyframe: decode the token
    on a fresh state (``add_new_points``), upsample the low-res logits (holes filled) to the S x S
    model input, threshold at 0 and condition with that binary mask (``add_new_mask``).

    ``low_res_logits`` (optional): that decode's 1 x 1 x S/4 x S/4 logits (holes filled) on the
    frame this prompt conditions, already computed -- a grounding's keyframe decode
    (``Grounding.keyframe_result.low_res_logits``). Given, they are thresholded where they are
    (on the device) instead of decoding the token again; they must be the decode of ``token`` on
    that frame's features, which gives the same mask.
    """

    token: torch.Tensor
    low_res_logits: torch.Tensor | None = None


Prompt = MaskPrompt | PointsPrompt | TokenPrompt


def checked_prompt(prompt) -> Prompt:
    """``prompt`` if it is a Prompt, else TypeError saying what it is."""
    if not isinstance(prompt, (MaskPrompt, PointsPrompt, TokenPrompt)):
        raise TypeError(f"a prompt is a PointsPrompt, MaskPrompt or TokenPrompt, not {type(prompt).__name__}")
    return prompt


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
