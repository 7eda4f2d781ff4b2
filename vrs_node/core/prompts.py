"""What conditions the tracker on a frame. Torch-free (the command line and the prompt parsers
import it); :mod:`vrs_node.core.prompt_inputs` turns each prompt into SAM-2's input.

- :class:`PointsPrompt`: clicks and/or a box in camera pixels;
- :class:`MaskPrompt`: a camera-resolution mask;
- :class:`TokenPrompt`: a 256-d token (VRS-HQ's TAK') decoded on the frame; its thresholded S x S
  decode is the mask input (the tracker decodes it, :mod:`vrs_node.core.tracker`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


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
