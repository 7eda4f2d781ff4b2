"""Build SAM-2 (``sam2`` 1.1.0 ``SAM2Base``) from sam2's own config files, and its image transform.

Everything that knows SAM-2 configs, overrides, checkpoints and pre-processing lives here; the
streaming driver (``vrs_node.core.tracker``) only sees a built ``SAM2Base`` and a
:class:`SamImageTransform`.

Overrides applied to every build (the ones ``sam2.build_sam.build_sam2_video_predictor`` applies,
so a model built here tracks exactly like sam2's video predictor on the same weights):

- ``binarize_mask_from_pts_for_mem_enc=true`` (prompted frames are encoded into memory binarised);
- the three ``dynamic_multimask_*`` decoder settings of ``build_sam2``'s post-processing.

``fill_hole_area`` is a video-predictor option, not a ``SAM2Base`` one: the streaming tracker applies
it (``vrs_node.core.tracker.fill_holes_in_mask_scores``, on the CPU; sam2 needs its CUDA extension
for it and silently skips it without).

With ``vrshq=True`` the decoder settings of VRS-HQ's ``_build_sam2_`` are used instead: the three
multimask switches off (``multimask_output_in_sam``, ``multimask_output_for_tracking``,
``use_multimask_token_for_obj_ptr``; REFERENCE_VRSHQ_VIDEOLISA.md §2) and
``dynamic_multimask_via_stability`` off (sam2's post-processing turns it on: a single-mask output
whose stability score is below 0.98 would be swapped for the best of the multimask outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SAM2_CONFIGS = {
    "sam2.1-hiera-t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1-hiera-s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1-hiera-b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1-hiera-l": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2-hiera-t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2-hiera-s": "configs/sam2/sam2_hiera_s.yaml",
    "sam2-hiera-b+": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2-hiera-l": "configs/sam2/sam2_hiera_l.yaml",
}
"""Architecture name -> config file inside the ``sam2`` package."""

VIDEO_PREDICTOR_OVERRIDES = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
)

VRSHQ_OVERRIDES = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=false",
    "++model.multimask_output_in_sam=false",
    "++model.multimask_output_for_tracking=false",
    "++model.use_multimask_token_for_obj_ptr=false",
)

FILL_HOLE_AREA = 8
"""Hole filling of sam2's ``build_sam2_video_predictor`` and of VRS-HQ's ``_build_sam2_``: background
components of at most this many low-res pixels become foreground (the streaming tracker does it)."""

IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
SAM1_PIXEL_MEAN = torch.tensor((123.675, 116.28, 103.53), dtype=torch.float32)[:, None, None]
SAM1_PIXEL_STD = torch.tensor((58.395, 57.12, 57.375), dtype=torch.float32)[:, None, None]
"""SAM-1's (and VRS-HQ's) normalisation on the 0-255 scale: ImageNet mean/std x 255."""


@dataclass(frozen=True)
class Sam2Spec:
    """What to build: architecture, input resolution, overrides, optional checkpoint.

    ``image_size`` must be a multiple of 32 (Hiera's stride-32 level). ``resize`` is ``"squash"``
    (stock SAM-2: the frame is resized to image_size x image_size, aspect ratio not kept) or
    ``"pad"`` (VRS-HQ / SAM-1: the longest side is resized to image_size, aspect ratio kept, and
    the rest is zero-padded at the bottom and right).
    """

    arch: str = "sam2.1-hiera-t"
    image_size: int = 1024
    resize: str = "squash"
    vrshq: bool = False
    checkpoint: str | None = None
    extra_overrides: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.arch not in SAM2_CONFIGS:
            raise ValueError(f"unknown SAM-2 architecture {self.arch!r}; known: {sorted(SAM2_CONFIGS)}")
        if self.image_size <= 0 or self.image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if self.resize not in ("squash", "pad"):
            raise ValueError(f"resize must be 'squash' or 'pad', got {self.resize!r}")

    def hydra_overrides(self) -> list[str]:
        """The hydra overrides this spec applies on top of the sam2 config file."""
        feat = self.image_size // 16
        overrides = [
            f"++model.image_size={self.image_size}",
            # RoPE tables sized for the real feature map (else rebuilt on the first call).
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]",
            *VIDEO_PREDICTOR_OVERRIDES,
        ]
        if self.vrshq:
            overrides += VRSHQ_OVERRIDES
        return overrides + list(self.extra_overrides)

    def tracker_options(self) -> dict:
        """``StreamingTracker`` keyword arguments that match this model's reference predictor:
        ``fill_hole_area`` 8 (both), memory features stored in bf16 (sam2's video predictor) or kept
        float32 (VRS-HQ's fork drops that cast; its fp32 path keeps memory in float32)."""
        return {"fill_hole_area": FILL_HOLE_AREA,
                "memory_dtype": torch.float32 if self.vrshq else torch.bfloat16}


def build_sam2_model(spec: Sam2Spec, device: str | torch.device = "cpu", seed: int | None = 0):
    """Build a ``SAM2Base`` in eval mode on ``device`` from sam2's config + ``spec``'s overrides.

    Without a checkpoint the weights are sam2's random initialisation, seeded by ``seed`` so two
    builds are identical. With ``spec.checkpoint`` the file is loaded with
    ``torch.load(weights_only=True)`` (no pickle code execution); both sam2's release layout
    (``{"model": state_dict}``) and a bare state dict are accepted, and every key must match.
    """
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import sam2  # noqa: F401  (initialises hydra's config module "sam2")

    cfg = compose(config_name=SAM2_CONFIGS[spec.arch], overrides=spec.hydra_overrides())
    OmegaConf.resolve(cfg)
    if seed is not None:
        torch.manual_seed(seed)
    model = instantiate(cfg.model, _recursive_=True)
    if spec.checkpoint is not None:
        load_sam2_checkpoint(model, spec.checkpoint)
    return model.to(device).eval()


def load_sam2_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Load SAM-2 weights from ``path`` strictly (every key present, none unexpected)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM-2 checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"SAM-2 checkpoint {path} does not match the architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )


@dataclass(frozen=True)
class SamImageTransform:
    """Camera frame (H x W x 3 uint8 RGB) -> normalised SAM-2 input (1 x 3 x S x S float32).

    ``squash``: ``PIL.Image.resize((S, S))`` (bicubic, PIL's default), /255, ImageNet mean/std --
    byte for byte what ``sam2.utils.misc.load_video_frames`` does, so the tracker equals the video
    predictor. ``pad``: VRS-HQ's input (``RVOSEvalDataset``) byte for byte: longest side resized to
    S with PIL bilinear (SAM-1's ``ResizeLongestSide``: torchvision's resize of a PIL image, size
    ``int(side * S / longest + 0.5)``), ``(x - mean) / std`` on the 0-255 scale in float32
    (:data:`SAM1_PIXEL_MEAN`, :data:`SAM1_PIXEL_STD`), zero-padded bottom/right.
    """

    image_size: int
    resize: str = "squash"

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """(h', w') of the image content inside the S x S input (the rest is padding)."""
        if self.resize == "squash":
            return self.image_size, self.image_size
        scale = self.image_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def __call__(self, image: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """Return the normalised 1 x 3 x S x S float32 tensor on ``device``."""
        from PIL import Image

        size = self.image_size
        h, w = image.shape[:2]
        new_h, new_w = self.valid_size(h, w)
        if self.resize == "squash":
            resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
            x = torch.from_numpy(resized / 255.0).permute(2, 0, 1).to(torch.float32)
            x = (x - IMAGENET_MEAN) / IMAGENET_STD
            return x[None].to(device)
        resized = np.array(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
        x = (torch.from_numpy(resized).permute(2, 0, 1) - SAM1_PIXEL_MEAN) / SAM1_PIXEL_STD
        x = torch.nn.functional.pad(x, (0, size - new_w, 0, size - new_h))
        return x[None].to(device)
