"""CLIP-224 pre-processing against the reference (transformers 4.31's CLIPImageProcessor) and the
tiny CLIP tower of the VRS-HQ golden.

Golden data: ``../shared/golden/vrshq_tiny`` beside the repository (override with ``VRS_GOLDEN_DIR``),
produced by the authors' code under transformers 4.31; the tests fail, not skip, when it is missing.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import DAVIS, VRSHQ_GOLDEN as GOLDEN, davis_sequence
from vrs_node.models.clip_preprocess import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipPreprocessor, center_crop,
                                             shortest_edge_size)

CLIP_DIR = ("checkpoint", "clip-vit-tiny-patch14-224")


def golden_path(*parts: str) -> Path:
    path = GOLDEN.joinpath(*parts)
    assert path.exists(), f"VRS-HQ tiny golden missing: {path} (set VRS_GOLDEN_DIR)"
    return path


def golden_arrays() -> dict[str, np.ndarray]:
    return dict(np.load(golden_path("golden", "the_black_swan.fp32.npz")))


def reference_frame(index: int) -> np.ndarray:
    """A blackswan frame read as the reference dataset reads it: cv2.imread + BGR -> RGB."""
    path = DAVIS / "blackswan" / "JPEGImages" / f"{index:05d}.jpg"
    bgr = cv2.imread(str(path))
    assert bgr is not None, f"DAVIS sample missing: {path} (set VRS_DAVIS_DIR)"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --- golden --------------------------------------------------------------------------------------

def test_frame0_pixels_equal_the_reference_processor():
    want = golden_arrays()["clip224_pixels_frame0"]
    frame = reference_frame(0)
    # the node gets decoded RGB frames (PIL in the tests): the same bytes as OpenCV's decode here
    assert np.array_equal(frame, davis_sequence("blackswan", 1)[0][0])
    pixels = ClipPreprocessor.from_pretrained(golden_path(*CLIP_DIR))([frame])
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == torch.float32
    assert np.abs(pixels[0].numpy() - want).max() <= 1e-5


def test_the_golden_preprocessor_config_is_clip_224():
    assert ClipPreprocessor.from_pretrained(golden_path(*CLIP_DIR)) == ClipPreprocessor.clip_defaults(224)


@pytest.fixture(scope="module")
def golden_tower():
    from transformers import CLIPVisionModel

    return CLIPVisionModel.from_pretrained(golden_path(*CLIP_DIR)).eval()


def test_tiny_clip_tower_reproduces_the_golden_patch_features_and_tokens(golden_tower):
    """Lattice frames 1 and 3 -> our pre-processing -> transformers 5 CLIPVisionModel (layer -2, no
    CLS) -> DPC-KNN, against the reference's features and merged tokens."""
    from vrs_node.models.dpc_knn import merge_visual_tokens

    golden = golden_arrays()
    pixels = ClipPreprocessor.from_pretrained(golden_path(*CLIP_DIR))([reference_frame(1), reference_frame(3)])
    with torch.no_grad():
        hidden = golden_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    features = torch.from_numpy(golden["clip_patch_features_2frames"])
    assert hidden.shape == features.shape == (2, 256, 64)
    assert (hidden - features).abs().max() <= 1e-5
    tokens = merge_visual_tokens(hidden, generator=torch.Generator().manual_seed(0))
    assert (tokens - torch.from_numpy(golden["dpc_knn_tokens_2frames"])).abs().max() <= 1e-5


# --- the 4.31 steps ------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width, want", [
    (480, 854, (224, 398)),   # DAVIS: 224 * 854 / 480 = 398.53 -> truncated
    (854, 480, (398, 224)),   # portrait: the width is the short side
    (3, 7, (224, 522)),       # 522.67: truncated, not rounded
    (224, 224, (224, 224)),
    (100, 100, (224, 224)),   # upscaling
])
def test_shortest_edge_size_truncates_the_long_side(height, width, want):
    assert shortest_edge_size(height, width, 224) == want


def test_center_crop_floors_the_offsets():
    image = np.arange(7 * 10).reshape(7, 10, 1)
    crop = center_crop(image, 4, 5)
    assert crop[0, 0, 0] == image[1, 2, 0] and crop.shape == (4, 5, 1)   # (7-4)//2 = 1, (10-5)//2 = 2
    assert np.array_equal(center_crop(image, 7, 10), image)


def test_center_crop_pads_an_even_shortfall_and_refuses_an_odd_one():
    image = np.full((2, 3, 1), 7, dtype=np.uint8)
    crop = center_crop(image, 4, 5)
    want = np.zeros((4, 5, 1), dtype=np.uint8)
    want[1:3, 1:4] = 7
    assert np.array_equal(crop, want)
    with pytest.raises(ValueError, match="odd"):
        center_crop(image, 5, 5)


def test_pipeline_step_by_step_on_an_odd_non_square_frame():
    """The documented contract written out with PIL's own crop and float64 arithmetic."""
    from PIL import Image

    frame = np.random.default_rng(0).integers(0, 256, (37, 91, 3), dtype=np.uint8)
    out = ClipPreprocessor()([frame])[0].numpy()
    resized = Image.fromarray(frame).resize((550, 224), Image.Resampling.BICUBIC)   # int(224 * 91 / 37) = 550
    crop = np.array(resized.crop((163, 0, 163 + 224, 224)), dtype=np.float64) / 255  # (550 - 224) // 2 = 163
    want = ((crop - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD).transpose(2, 0, 1)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.abs(out - want).max() < 2e-6


@pytest.mark.parametrize("shape", [(37, 91, 3), (91, 37, 3), (301, 225, 3), (224, 224, 3), (5, 9, 3)])
def test_equals_transformers_pil_clip_processor(shape):
    """transformers 5's PIL backend (CLIPImageProcessorPil) follows the same 4.31 steps (and equals
    the golden); its default torchvision backend does not."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    frame = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    oracle = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    want = oracle(images=[frame], return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    assert torch.equal(ClipPreprocessor()([frame]), want)


def test_frames_of_different_sizes_in_one_call():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((240, 427, 3), (500, 300, 3))]
    both = ClipPreprocessor()(frames)
    assert both.shape == (2, 3, 224, 224)
    assert torch.equal(both[1], ClipPreprocessor()(frames[1:])[0])


def test_other_crop_and_resample_from_the_config():
    pre = ClipPreprocessor.from_dict({"size": 50, "crop_size": {"height": 60, "width": 40}, "resample": 2,
                                      "image_mean": 0.5, "image_std": [0.5, 0.5, 0.5]})
    assert (pre.shortest_edge, pre.crop_height, pre.crop_width, pre.resample) == (50, 60, 40, 2)
    out = pre([np.full((50, 70, 3), 255, dtype=np.uint8)])[0]
    assert out.shape == (3, 60, 40)
    assert torch.all(out[:, 5:55] == 1.0) and torch.all(out[:, :5] == -1.0)   # zero padding, normalised


# --- configuration and input checks ----------------------------------------------------------------

def test_openai_style_int_sizes_and_defaults():
    assert ClipPreprocessor.from_dict({"size": 336, "crop_size": 336}) == ClipPreprocessor.clip_defaults(336)
    assert ClipPreprocessor.from_dict({}) == ClipPreprocessor()
    with pytest.raises(ValueError, match="shortest_edge"):
        ClipPreprocessor.from_dict({"size": {"height": 224, "width": 224}})


def test_a_tower_without_preprocessor_config_gets_clip_defaults(tmp_path):
    assert ClipPreprocessor.from_pretrained(tmp_path, image_size=112) == ClipPreprocessor.clip_defaults(112)
    assert ClipPreprocessor.from_pretrained("openai/clip-vit-large-patch14") == ClipPreprocessor()


@pytest.mark.parametrize("frame", [np.zeros((20, 30, 3), np.float32), np.zeros((20, 30), np.uint8),
                                   np.zeros((20, 30, 4), np.uint8)])
def test_only_uint8_rgb_frames_are_accepted(frame):
    with pytest.raises(ValueError, match="uint8 RGB"):
        ClipPreprocessor()([frame])
    with pytest.raises(ValueError, match="no frames"):
        ClipPreprocessor()([])
