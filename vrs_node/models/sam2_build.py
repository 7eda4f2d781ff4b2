"""Build SAM-2 (``sam2`` 1.1.0 ``SAM2Base``) from sam2's own config files, and its image transform.

Everything that knows SAM-2 configs, overrides, checkpoints and pre-processing lives here; the
streaming driver (``vrs_node.core.tracker``) only sees a built ``SAM2Base`` and a
:class:`SamImageTransform`.

Overrides applied to every build (the ones ``sam2.build_sam.build_sam2_video_predictor`` applies,
so a model built here tracks exactly like sam2's video predictor on the same weights):

- ``binarize_mask_from_pts_for_mem_enc=true`` (prompted frames are encoded into memory binarised);
- the three ``dynamic_multimask_*`` decoder settings of ``build_sam2``'s post-processing.

``fill_hole_area`` is a video-predictor option, not a ``SAM2Base`` one: the streaming tracker applies
it (``vrs_node.core.hole_filling.fill_holes_in_mask_scores``, on the CPU; sam2 needs its CUDA extension
for it and silently skips it without).

With ``vrshq=True`` the decoder settings of VRS-HQ's ``_build_sam2_`` are used instead: the three
multimask switches off (``multimask_output_in_sam``, ``multimask_output_for_tracking``,
``use_multimask_token_for_obj_ptr``; REFERENCE_VRSHQ_VIDEOLISA.md §2) and
``dynamic_multimask_via_stability`` off (sam2's post-processing turns it on: a single-mask output
whose stability score is below 0.98 would be swapped for the best of the multimask outputs).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

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

    importlib.import_module("sam2")  # initialises hydra's config module "sam2"

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


BACKENDS = ("device", "reference")
"""Where :class:`SamImageTransform` resizes: on the model's device with torch, or with PIL on the host."""

DEVICE_BACKEND_MAX_ABS = 0.036
"""Largest |Δ| allowed between the ``device`` and ``reference`` backends' normalised inputs (same
frame, same mode and size), tested in ``test/test_tracker.py``: two uint8 levels at the smallest
std, 2 / (255 x 0.224) = 0.0350 (squash) and 2 / 57.12 = 0.0350 (pad). Normalisation and padding
are the same code in both backends, so only the resized uint8 values differ.

Measured (torch 2.13, Pillow 13; DAVIS blackswan, all 50 frames at 854 x 480 and 5 of them
upscaled to 1920 x 1080; S = 256 and 1024): CPU uint8 kernel at most 2 levels (0.0350; bicubic
squash to 1024, an enlargement), 1 level (0.0175) elsewhere, 0.19-0.54 % of the values differ;
the float two-pass path (CUDA's, run on the CPU) at most 2 levels as well, 0.001-3.5 % differing
(3.5 %: bilinear enlargement, where PIL's fixed-point rounding of ties differs). Uniform noise at
1080p: 2 levels (uint8 kernel), 1 level (float path). No mode is exact in general: some size
pairs are on these frames (854 x 480 -> 1024 pad, DAVIS 1080p -> 256 pad), but not for every
content (random sizes and noise differ)."""


@dataclass(frozen=True)
class SamImageTransform:
    """Camera frame (H x W x 3 uint8 RGB) -> normalised SAM-2 input (1 x 3 x S x S float32).

    ``squash``: resized to S x S bicubic (PIL's default filter), /255 in float64, then to float32
    and ImageNet mean/std -- byte for byte what ``sam2.utils.misc.load_video_frames`` does, so the
    tracker equals the video predictor. ``pad``: VRS-HQ's input (``RVOSEvalDataset``) byte for byte:
    longest side resized to S bilinear (SAM-1's ``ResizeLongestSide``: torchvision's resize of a PIL
    image, size ``int(side * S / longest + 0.5)``), ``(x - mean) / std`` on the 0-255 scale in
    float32 (:data:`SAM1_PIXEL_MEAN`, :data:`SAM1_PIXEL_STD`), zero-padded bottom/right.

    ``backend`` (:data:`BACKENDS`) says where the resize runs:

    - ``"reference"``: PIL on the host (``Image.resize``), then the tensor goes to the device:
      exactly the references above. The equivalence test with sam2's ``SAM2VideoPredictor``,
      ``vrs-parity`` and the VRS-HQ parity tests use it.
    - ``"device"`` (default; what the node runs): the uint8 frame goes to the device once (on CUDA
      from page-locked memory, ``non_blocking=True``) and is resized there by
      ``torch.nn.functional.interpolate(antialias=True)``, whose antialiased bicubic (a = -0.5)
      and bilinear filters are PIL's. On the CPU torch's uint8 kernel runs (made to match PIL; its
      weights have 16-bit precision where PIL's have 22). Elsewhere (CUDA has no uint8 antialiased
      kernel) the resize runs in float32 as PIL's two passes, width then height, each rounded and
      clamped to 0..255 as PIL stores its intermediate image. It agrees with the reference within
      :data:`DEVICE_BACKEND_MAX_ABS`.

    The content (the resized image inside the S x S input) is :meth:`valid_size` of the camera
    size, which ``camera_hw`` gives when the image is a reduced decode of a larger camera frame.
    """

    image_size: int
    resize: str = "squash"
    backend: str = "device"

    def __post_init__(self) -> None:
        if self.resize not in ("squash", "pad"):
            raise ValueError(f"resize must be 'squash' or 'pad', got {self.resize!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """(h', w') of the image content inside the S x S input (the rest is padding)."""
        if self.resize == "squash":
            return self.image_size, self.image_size
        scale = self.image_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def __call__(self, image: np.ndarray, device: str | torch.device = "cpu",
                 camera_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """The normalised 1 x 3 x S x S float32 tensor on ``device``; the content is
        ``valid_size(*camera_hw)`` (default: the image's own size)."""
        device = torch.device(device)
        size = self.valid_size(*(camera_hw or image.shape[:2]))
        if self.backend == "reference":
            from PIL import Image

            pil_filter = Image.Resampling.BICUBIC if self.resize == "squash" else Image.Resampling.BILINEAR
            resized = np.array(Image.fromarray(image).resize(size[::-1], pil_filter))
            return self._normalise_and_pad(torch.from_numpy(resized).permute(2, 0, 1)[None]).to(device)
        x = _upload(image, device).permute(2, 0, 1)[None]
        x = _resize(x, size, "bicubic" if self.resize == "squash" else "bilinear")
        return self._normalise_and_pad(x)

    def _normalise_and_pad(self, x: torch.Tensor) -> torch.Tensor:
        """1 x 3 x h' x w' resized pixels (uint8, or whole-number floats) -> the normalised, zero-padded,
        contiguous 1 x 3 x S x S float32 input on ``x``'s device (:func:`_normalise`). uint8 pixels
        on the CPU are looked up per channel in :func:`_lookup_table` (OpenCV's ``LUT``) instead:
        the same values, without the float64 temporaries."""
        out_shape = (1, 3, self.image_size, self.image_size)
        if x.device.type != "cpu" or x.dtype != torch.uint8:
            x = _normalise(x.contiguous(), self.resize)
            pad_h, pad_w = self.image_size - x.shape[-2], self.image_size - x.shape[-1]
            return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        pixels = x[0].contiguous().numpy()
        h, w = pixels.shape[1:]
        out = (torch.empty if (h, w) == out_shape[2:] else torch.zeros)(out_shape, dtype=torch.float32)
        planes, table = out[0].numpy(), _lookup_table(self.resize)
        for c in range(3):
            cv2.LUT(pixels[c], table[c], dst=planes[c, :h, :w])
        return out


def _normalise(x: torch.Tensor, resize: str) -> torch.Tensor:
    """The references' normalisation of contiguous 1 x 3 x h x w pixels (uint8 or whole-number
    floats) to float32, on ``x``'s device: squash ``(float32(float64(x) / 255) - mean) / std``;
    pad ``(float32(x) - mean) / std`` (:func:`_normalisation`)."""
    mean, std = _normalisation(resize, x.device)
    if resize == "squash":
        return x.double().div_(255.0).float().sub_(mean).div_(std)
    return (x.float() - mean).div_(std)


@functools.lru_cache(maxsize=None)
def _normalisation(resize: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of ``resize``'s normalisation on ``device``, copied there once."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if resize == "squash" else (SAM1_PIXEL_MEAN, SAM1_PIXEL_STD)
    return mean.to(device), std.to(device)


@functools.lru_cache(maxsize=None)
def _lookup_table(resize: str) -> np.ndarray:
    """3 x 256 float32: :func:`_normalise` of every uint8 level in each channel, elementwise the
    same arithmetic as on an image, so a lookup gives the identical values."""
    levels = torch.arange(256, dtype=torch.uint8).expand(1, 3, 1, 256).contiguous()
    return _normalise(levels, resize)[0, :, 0].numpy()


def _upload(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """``image`` as an H x W x 3 uint8 tensor on ``device``, copied once: on CUDA into a
    page-locked buffer (torch's caching host allocator reuses it once the copy is done) and from
    there with ``non_blocking=True``; on the CPU not copied at all.

    ``torch.from_numpy`` warns (once per process) on a read-only array, and frames from a
    ``FrameWindow`` are read-only views; the tensor is only read here, so it is made over a
    writable view of the same memory when the memory's owner is writable (else over a copy).
    """
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:
        view = image.view()
        try:
            view.flags.writeable = True
        except ValueError:  # read-only at its source (e.g. an array over bytes)
            view = image.copy()
        image = view
    host = torch.from_numpy(image)
    if device.type != "cuda":
        return host.to(device)
    staging = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
    staging.copy_(host)
    return staging.to(device, non_blocking=True)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased ``mode`` ("bicubic" or "bilinear") resize of 1 x 3 x H x W uint8 ``x`` to
    ``size`` (h, w): uint8 on the CPU (torch's uint8 kernel), whole-number float32 elsewhere
    (:func:`_resize_float`). A frame already at ``size`` is returned as it is (PIL copies it)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.device.type == "cpu":
        return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    return _resize_float(x.contiguous().float(), size, mode)  # CUDA's kernel wants NCHW (copies otherwise)


def _resize_float(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """PIL's resize in float32: the width pass, then the height pass (a pass is skipped when that
    side keeps its size, as PIL does), each rounded (half to even) and clamped to 0..255 since PIL
    stores the intermediate image as uint8. For devices without uint8 antialiased interpolation."""
    for step in ((x.shape[-2], size[1]), tuple(size)):
        if tuple(x.shape[-2:]) != step:
            x = F.interpolate(x, size=step, mode=mode, antialias=True, align_corners=False).round_().clamp_(0, 255)
    return x
