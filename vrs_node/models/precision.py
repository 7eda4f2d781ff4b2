"""The ``precision`` setting: ``fp32`` | ``bf16`` | ``auto``, and what each means for each model.

In ``bf16`` the MLLM holds bfloat16 weights (SDPA attention), the CLIP anchor scorer is open_clip's
``precision="bf16"``, and SAM-2 keeps float32 weights and runs under
``torch.autocast(dtype=torch.bfloat16)`` (:func:`tracker_precision_options`), as sam2's own
predictor and demos run on CUDA. ``auto`` is bf16 on CUDA (what VRS-HQ was evaluated in) and fp32
elsewhere.
"""

from __future__ import annotations

import torch

from vrs_node.models.config import PRECISION_CHOICES

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""The ``precision`` setting's explicit values (:data:`PRECISION_CHOICES` less ``"auto"``) and their
dtypes; ``"auto"`` picks one by device (:func:`resolve_precision`)."""


def resolve_precision_name(precision: str, device: str | torch.device) -> str:
    """The :data:`PRECISIONS` name ``precision`` stands for on ``device``: ``"fp32"`` and
    ``"bf16"`` as given; ``"auto"`` -> ``"bf16"`` on CUDA (what VRS-HQ was evaluated in), ``"fp32"``
    elsewhere. ValueError naming the allowed values for anything else."""
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISION_CHOICES)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """The dtype of ``precision`` on ``device`` (:func:`resolve_precision_name`): float32 for
    ``"fp32"``, bfloat16 for ``"bf16"``, ``"auto"`` = bfloat16 on CUDA, float32 elsewhere."""
    return PRECISIONS[resolve_precision_name(precision, device)]


def tracker_precision_options(precision: str, device: str | torch.device) -> dict:
    """The ``StreamingTracker`` options of ``precision`` on ``device``: ``autocast_dtype`` None in
    fp32 (float32 weights, plain float32), ``torch.bfloat16`` in bf16 (float32 weights under
    ``torch.autocast``, as sam2's own predictor and demos run on CUDA)."""
    dtype = resolve_precision(precision, device)
    return {"autocast_dtype": None if dtype == torch.float32 else dtype}
