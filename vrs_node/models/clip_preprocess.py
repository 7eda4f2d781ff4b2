"""CLIP-224 frame pre-processing, numerically identical to transformers 4.31's ``CLIPImageProcessor``.

VRS-HQ (and the released checkpoint's evaluation) ran ``CLIPImageProcessor`` of transformers 4.31 on
frames read with ``cv2.imread`` + ``cv2.cvtColor(BGR2RGB)``, i.e. on H x W x 3 uint8 RGB arrays.
transformers 5's ``CLIPImageProcessor`` resizes tensors with torchvision instead of PIL and differs
by up to 0.015 per normalised pixel (DAVIS blackswan frame 0), enough to move DPC-KNN cluster
members. :class:`ClipPreprocessor` re-does 4.31's numpy/PIL path step by step:

1. output size: the shorter side becomes ``shortest_edge`` and the longer one
   ``int(shortest_edge * long / short)`` (truncated, not rounded); a square frame becomes S x S;
2. resize of the **uint8** frame with PIL (``Image.fromarray(frame).resize((w, h), resample)``,
   ``reducing_gap=None``; the config's ``resample``, bicubic = 3 for CLIP), back to uint8;
3. centre crop to ``crop_size``: ``top = (H - h) // 2``, ``left = (W - w) // 2`` (floor); where the
   crop is larger than the image (only if ``crop_size`` exceeds ``shortest_edge``), the image is
   zero-padded, centred with offset ``(h - H) // 2`` (likewise for the width), as 4.31's
   ``center_crop`` does -- where that shortfall is odd, 4.31 returns a crop one pixel short, and
   here that is an error;
4. rescale: ``uint8 * rescale_factor`` in float64, then cast to float32;
5. normalise in float32: ``(x - mean) / std`` with mean and std cast to float32 arrays;
6. channels first.

Each stage can be switched off through the same ``do_*`` flags as the processor's. Defaults are 4.31's
``CLIPImageProcessor`` defaults (shortest edge 224, crop 224 x 224, bicubic, 1/255, OpenAI CLIP
mean/std); :meth:`ClipPreprocessor.from_pretrained` reads a vision tower's ``preprocessor_config.json``
(the size forms 4.31 accepts: ``{"shortest_edge": n}`` or an int for ``size``, ``{"height", "width"}``
or an int for ``crop_size``).

Measured: max |diff| 0 against the golden ``clip224_pixels_frame0`` (blackswan 00000, computed by
the reference with 4.31). transformers 5's ``CLIPImageProcessorPil`` follows the same steps and is
bit-identical on every frame size tested (``test/test_clip_preprocess.py`` uses it as an oracle).

Deliberate differences from 4.31, all outside CLIP's configuration: frames must be H x W x 3 uint8
(4.31 guesses the channel axis from the shape -- an image 1 or 3 pixels high is taken as
channels-first -- and rescales float input in [0, 1] before PIL); an odd padding shortfall is an
error (above); with ``do_rescale`` off, normalisation runs on float32 values (4.31 would cast mean
and std to the uint8 dtype of the image).

Decoding: the reference decodes JPEGs with OpenCV (``cv2.imread`` + BGR -> RGB); PIL's decode of
all 180 shared DAVIS-2016 frames is byte-identical to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_CONFIG = "preprocessor_config.json"
BICUBIC = 3
"""``PIL.Image.Resampling.BICUBIC`` (transformers' ``PILImageResampling.BICUBIC``)."""


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) after 4.31's shortest-edge resize: the short side becomes ``shortest_edge``,
    the long side ``int(shortest_edge * long / short)`` (float division, truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """4.31's ``center_crop`` of an H x W x C array: floor offsets ``(H - h) // 2`` and
    ``(W - w) // 2``; zero padding (centred with the same floor rule) where the crop is larger."""
    orig_h, orig_w = image.shape[:2]
    top, left = (orig_h - height) // 2, (orig_w - width) // 2
    if top >= 0 and left >= 0:
        return image[top:top + height, left:left + width]
    new_h, new_w = max(height, orig_h), max(width, orig_w)
    padded = np.zeros((new_h, new_w) + image.shape[2:], dtype=image.dtype)
    pad_top, pad_left = (new_h - orig_h) // 2, (new_w - orig_w) // 2
    padded[pad_top:pad_top + orig_h, pad_left:pad_left + orig_w] = image
    top, left = top + pad_top, left + pad_left
    cropped = padded[max(0, top):min(new_h, top + height), max(0, left):min(new_w, left + width)]
    if cropped.shape[:2] != (height, width):
        # 4.31 floors a negative offset and the pad separately: one pixel short for an odd shortfall.
        raise ValueError(f"a {height} x {width} crop of a {orig_h} x {orig_w} image needs padding by an odd "
                         f"amount, where transformers 4.31 returns {cropped.shape[0]} x {cropped.shape[1]}")
    return cropped


def _size_field(value, name: str, square: bool) -> dict[str, int]:
    """A size entry as 4.31's ``get_size_dict`` reads it (int: shortest edge, or square if ``square``)."""
    if isinstance(value, int):
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    if isinstance(value, Mapping):
        return {str(k): int(v) for k, v in value.items()}
    if isinstance(value, Sequence) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    raise ValueError(f"{name} must be an int, [height, width] or a dict, got {value!r}")


@dataclass(frozen=True)
class ClipPreprocessor:
    """transformers 4.31 ``CLIPImageProcessor`` for H x W x 3 uint8 RGB frames (see the module doc).

    Calling it on N frames returns an N x 3 x crop_height x crop_width float32 tensor (CPU). Every
    frame must be uint8 with 3 channels (frames of different sizes are fine: each is resized on
    its own); nothing else is accepted, so no float-input guessing (4.31's ``do_rescale`` heuristic
    before PIL conversion) is needed.
    """

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    resample: int = BICUBIC
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def clip_defaults(cls, image_size: int = 224) -> "ClipPreprocessor":
        """CLIP's defaults at ``image_size`` (shortest edge and square crop), for a tower without a
        ``preprocessor_config.json``."""
        return cls(shortest_edge=image_size, crop_height=image_size, crop_width=image_size)

    @classmethod
    def from_dict(cls, config: Mapping) -> "ClipPreprocessor":
        """From a ``preprocessor_config.json`` dict; absent keys take 4.31's CLIP defaults."""
        kwargs = {}
        if config.get("size") is not None:
            size = _size_field(config["size"], "size", square=False)
            if "shortest_edge" not in size:
                raise ValueError(f"CLIPImageProcessor's size must give shortest_edge, got {config['size']!r}")
            kwargs["shortest_edge"] = size["shortest_edge"]
        if config.get("crop_size") is not None:
            crop = _size_field(config["crop_size"], "crop_size", square=True)
            if set(crop) != {"height", "width"}:
                raise ValueError(f"crop_size must give height and width, got {config['crop_size']!r}")
            kwargs["crop_height"], kwargs["crop_width"] = crop["height"], crop["width"]
        for key, cast in (("resample", int), ("rescale_factor", float), ("do_resize", bool),
                          ("do_center_crop", bool), ("do_rescale", bool), ("do_normalize", bool)):
            if config.get(key) is not None:
                kwargs[key] = cast(config[key])
        for key in ("image_mean", "image_std"):
            value = config.get(key)
            if value is not None:
                value = [value] * 3 if isinstance(value, (int, float)) else list(value)
                if len(value) != 3:
                    raise ValueError(f"{key} must have 3 values, got {value!r}")
                kwargs[key] = tuple(float(v) for v in value)
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | Path, image_size: int = 224) -> "ClipPreprocessor":
        """From ``directory/preprocessor_config.json`` when that file exists, else
        :meth:`clip_defaults` at ``image_size`` (e.g. a hub name that is not a local directory)."""
        path = Path(directory) / PREPROCESSOR_CONFIG
        if path.is_file():
            return cls.from_dict(json.loads(path.read_text()))
        return cls.clip_defaults(image_size)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of a frame's output (before channels first)."""
        if self.do_resize:
            height, width = shortest_edge_size(height, width, self.shortest_edge)
        if self.do_center_crop:
            height, width = self.crop_height, self.crop_width
        return height, width

    def frame(self, image: np.ndarray) -> np.ndarray:
        """One H x W x 3 uint8 RGB frame -> 3 x h x w float32 array."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 uint8 RGB frame, got {image.dtype} {image.shape}")
        if self.do_resize:
            height, width = shortest_edge_size(image.shape[0], image.shape[1], self.shortest_edge)
            image = np.array(Image.fromarray(image).resize((width, height), resample=self.resample,
                                                           reducing_gap=None))
        if self.do_center_crop:
            image = center_crop(image, self.crop_height, self.crop_width)
        if self.do_rescale:
            image = (image * self.rescale_factor).astype(np.float32)  # float64 product, as 4.31
        if self.do_normalize:
            image = image.astype(np.float32) if image.dtype == np.uint8 else image
            mean = np.array(self.image_mean, dtype=image.dtype)
            std = np.array(self.image_std, dtype=image.dtype)
            image = (image - mean) / std
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def __call__(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """N H x W x 3 uint8 RGB frames -> N x 3 x crop_height x crop_width float32 tensor."""
        if len(images) == 0:
            raise ValueError("no frames to pre-process")
        return torch.from_numpy(np.stack([self.frame(image) for image in images])).float()
