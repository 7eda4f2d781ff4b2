"""StreamingTracker against sam2's own SAM2VideoPredictor, and its bounded memory."""

from __future__ import annotations

import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import box_of, make_tracker

from vrs_node.core.hole_filling import HOLE_FILL_LOGIT, connected_components, fill_holes_in_mask_scores
from vrs_node.core.prompt_inputs import point_input
from vrs_node.core.prompts import MaskPrompt, PointsPrompt, TokenPrompt
from vrs_node.core.track_result import CPU_MASK_TOLERANCE, TrackResult, positive_upsampled
from vrs_node.core.tracker import StreamingTracker
from vrs_node.models.sam2_build import (DEVICE_BACKEND_MAX_ABS, SAM2_CONFIGS, Sam2Spec, SamImageTransform,
                                        _resize_float)

N_FRAMES = 20


def predictor_reference(tracker: StreamingTracker, jpgs, prompt_fn, monkeypatch):
    """Run sam2's SAM2VideoPredictor (same weights) on the JPEG files; per-frame outputs.

    The predictor fills holes (``fill_hole_area=8``) with our CPU connected components in place of
    its CUDA extension (without it, it skips the filling with a warning); ``filled`` counts the
    pixels it filled, so a test can check that the filling was exercised.
    """
    import sam2.utils.misc
    from sam2.build_sam import build_sam2_video_predictor

    filled = []

    def counting_components(mask):
        labels, areas = connected_components(mask)
        filled.append(int(((labels > 0) & (areas <= predictor.fill_hole_area)).sum()))
        return labels, areas

    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", counting_components)
    spec = Sam2Spec(image_size=tracker.model.image_size)
    predictor = build_sam2_video_predictor(SAM2_CONFIGS[spec.arch], device="cpu",
                                           hydra_overrides_extra=spec.hydra_overrides()[:3])
    predictor.load_state_dict(tracker.model.state_dict())
    assert predictor.fill_hole_area == tracker.fill_hole_area == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the filling must not be skipped
        state = predictor.init_state(str(jpgs[0].parent))
        prompt_fn(predictor, state)
        out = {}
        for idx, _, video_res in predictor.propagate_in_video(state):
            bank = state["output_dict_per_obj"][0]
            stored = bank["cond_frame_outputs"].get(idx) or bank["non_cond_frame_outputs"][idx]
            out[idx] = (video_res[0, 0].clone(), float(stored["object_score_logits"]))
    out["filled"] = sum(filled)
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, blackswan):
    """The first N_FRAMES blackswan JPEGs in a folder of their own (the predictor reads folders)."""
    folder = tmp_path_factory.mktemp("clip")
    for path in blackswan[2][:N_FRAMES]:
        shutil.copy(path, folder)
    return sorted(folder.glob("*.jpg"))


def assert_matches_predictor(tracker, frames, reference, prompt):
    worst_logit = worst_score = 0.0
    nonempty = 0
    for i, image in enumerate(frames[:N_FRAMES]):
        feats = tracker.encode(image)
        result = tracker.condition(feats, prompt) if i == 0 else tracker.track(feats)
        ref_logits, ref_score = reference[i]
        worst_logit = max(worst_logit, float((result.camera_logits() - ref_logits).abs().max()))
        worst_score = max(worst_score, abs(result.object_score - ref_score))
        nonempty += bool(result.mask().any())
    assert len(reference) == N_FRAMES + 1
    assert nonempty == N_FRAMES, "the comparison is only meaningful on non-empty masks"
    assert reference["filled"] > 0, "no hole was filled: the comparison does not exercise the filling"
    assert worst_logit <= 1e-5 and worst_score <= 1e-5, (worst_logit, worst_score)


def test_mask_prompt_equals_video_predictor(blackswan, clip_dir, monkeypatch):
    frames, masks, _ = blackswan
    tracker = make_tracker(256, backend="reference")
    reference = predictor_reference(tracker, clip_dir, lambda p, s: p.add_new_mask(s, 0, 1, masks[0]),
                                    monkeypatch)
    assert_matches_predictor(tracker, frames, reference, MaskPrompt(masks[0]))


def test_click_and_box_prompts_equal_video_predictor(blackswan, clip_dir, monkeypatch):
    frames, masks, _ = blackswan
    ys, xs = np.nonzero(masks[0])
    click = np.array([[xs.mean(), ys.mean()]], np.float32)
    tracker = make_tracker(128, backend="reference")
    reference = predictor_reference(
        tracker, clip_dir,
        lambda p, s: p.add_new_points_or_box(s, 0, 1, points=click, labels=[1], box=box_of(masks[0])),
        monkeypatch)
    assert_matches_predictor(tracker, frames, reference,
                             PointsPrompt(points=click, labels=np.array([1]), box=box_of(masks[0])))


def test_without_hole_filling_the_tracker_differs_from_the_predictor(blackswan, clip_dir, monkeypatch):
    """The equivalence above depends on the filling: a tracker that skips it does not match."""
    frames, masks, _ = blackswan
    reference = predictor_reference(make_tracker(256, backend="reference"), clip_dir,
                                    lambda p, s: p.add_new_mask(s, 0, 1, masks[0]), monkeypatch)
    with pytest.raises(AssertionError, match="worst|<="):
        assert_matches_predictor(make_tracker(256, backend="reference", fill_hole_area=0), frames, reference,
                                 MaskPrompt(masks[0]))


def test_state_is_constant_over_1000_frames(blackswan):
    """Entries and bytes of the memory bank stop growing after warm-up (features reused: the
    backbone does not touch the bank, so this tests the bank, not the encoder's speed)."""
    frames, masks, _ = blackswan
    tracker = make_tracker(128, max_cond_frames=3)
    feats = [tracker.encode(f) for f in frames[:8]]
    tracker.condition(feats[0], MaskPrompt(masks[0]))
    sizes = []
    for step in range(1, 1101):
        tracker.track(feats[step % len(feats)])
        if step in (200, 400, 600):  # re-prompts: conditioning frames are bounded too
            tracker.condition(feats[step % len(feats)], PointsPrompt(box=box_of(masks[0])))
        sizes.append(tracker.state_size())
    full = 3 + tracker.keep_non_cond  # 3 conditioning frames + 15 recent outputs
    assert max(entries for entries, _ in sizes) == full
    assert set(sizes[700:]) == {sizes[-1]}, "state changed after warm-up"
    assert sizes[-1][0] == full and max(nbytes for _, nbytes in sizes) == sizes[-1][1]
    assert len(tracker._bank["cond_frame_outputs"]) == 3


def test_catch_up_equals_condition_then_track(blackswan):
    frames, masks, _ = blackswan
    feats_a = None
    results = []
    for _ in range(2):
        tracker = make_tracker(128)
        feats_a = [tracker.encode(f) for f in frames[:6]]
        tracker.condition(feats_a[0], MaskPrompt(masks[0]))
        tracker.track(feats_a[1])
        results.append(tracker)
    caught = results[0].catch_up(feats_a[2], PointsPrompt(box=box_of(masks[2])), feats_a[3:6])
    manual = [results[1].condition(feats_a[2], PointsPrompt(box=box_of(masks[2])))]
    manual += [results[1].track(f) for f in feats_a[3:6]]
    assert len(caught) == 4
    for a, b in zip(caught, manual):
        assert torch.equal(a.low_res_logits, b.low_res_logits)
    # the running track of the old prompt was dropped, the old conditioning frame kept
    assert len(results[0]._bank["cond_frame_outputs"]) == 2
    assert min(results[0]._bank["non_cond_frame_outputs"]) > max(results[0]._bank["cond_frame_outputs"])


def test_token_prompt_decodes_without_touching_memory(blackswan):
    frames, masks, _ = blackswan
    tracker = make_tracker(128)
    feats = tracker.encode(frames[0])
    token = torch.randn(256, generator=torch.Generator().manual_seed(1))
    before = tracker.state_size()
    scored = tracker.decode_token(feats, token)
    assert tracker.state_size() == before and not tracker.has_prompt
    assert scored.low_res_logits.shape == (1, 1, 32, 32)
    other = tracker.decode_token(feats, -token)
    assert not torch.equal(scored.low_res_logits, other.low_res_logits), "the token must matter"
    conditioned = tracker.condition(feats, TokenPrompt(token))
    # VRS-HQ: the decode upsampled to S x S, thresholded, used as the mask input (mask as output)
    size = tracker.model.image_size
    mask = (F.interpolate(scored.low_res_logits, size=(size, size), mode="bilinear", align_corners=False) > 0)
    assert mask.any()
    low = F.interpolate(mask.float() * 20 - 10, size=(size // 4, size // 4), mode="bilinear",
                        align_corners=False, antialias=True)
    assert torch.equal(conditioned.low_res_logits, fill_holes_in_mask_scores(low, 8))
    assert conditioned.object_score == 10.0
    assert tracker.has_prompt and tracker.state_size()[0] == 1
    assert tracker.track(tracker.encode(frames[1])).mask().shape == masks[1].shape


def test_token_prompt_with_its_decode_conditions_as_the_token_alone(blackswan):
    """A TokenPrompt carrying its frame's decode (a grounding's keyframe, as the engine hands it
    over) conditions exactly as decoding the token there again: same output, same memory."""
    frames, _, _ = blackswan
    token = torch.randn(256, generator=torch.Generator().manual_seed(1))
    runs = []
    for carry_decode in (False, True):
        tracker = make_tracker(128)
        feats = tracker.encode(frames[0])
        decoded = tracker.decode_token(feats, token).low_res_logits if carry_decode else None
        first = tracker.condition(feats, TokenPrompt(token, decoded))
        runs.append((first, tracker.track(tracker.encode(frames[1]))))
    (a0, a1), (b0, b1) = runs
    assert torch.equal(a0.low_res_logits, b0.low_res_logits) and a0.object_score == b0.object_score
    assert torch.equal(a1.low_res_logits, b1.low_res_logits) and a1.object_score == b1.object_score


def test_token_prompt_is_appended_after_two_padding_points(blackswan):
    """The decoder sees sparse prompts [NaP, NaP, token] (VRS-HQ), checked by intercepting it."""
    frames, _, _ = blackswan
    tracker = make_tracker(128)
    seen = {}
    decoder = tracker.model.sam_mask_decoder
    handle = decoder.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(sparse=kwargs["sparse_prompt_embeddings"]), with_kwargs=True)
    token = torch.randn(256)
    try:
        tracker.decode_token(tracker.encode(frames[0]), token)
    finally:
        handle.remove()
    sparse = seen["sparse"]
    nap = tracker.model.sam_prompt_encoder.not_a_point_embed.weight[0]
    assert sparse.shape == (1, 3, 256)
    assert torch.allclose(sparse[0, 0], nap) and torch.allclose(sparse[0, 1], nap)
    assert torch.equal(sparse[0, 2], token)


def test_pad_transform_crops_padding_before_resizing():
    """Pad mode: logits are cut to the content (h', w') of the S x S input before going to H x W."""
    transform = SamImageTransform(64, "pad")
    assert transform.valid_size(30, 60) == (32, 64)
    low = torch.full((1, 1, 16, 16), -5.0)
    low[..., :8, :] = 5.0   # the content rows (h' = 32 -> 8 low-res rows) are all "object"
    result = TrackResult(low, 1.0, (30, 60), transform)
    mask = result.mask()
    assert mask.shape == (30, 60)
    assert mask.all(), "padding rows leaked into the camera-resolution mask"
    squash = TrackResult(low, 1.0, (30, 60), SamImageTransform(64, "squash")).mask()
    assert not squash.all()


def test_pad_transform_keeps_aspect_and_zero_pads():
    image = np.full((30, 60, 3), 255, np.uint8)
    x = SamImageTransform(64, "pad")(image)
    assert x.shape == (1, 3, 64, 64)
    assert torch.all(x[0, :, 32:, :] == 0) and torch.all(x[0, :, :32, :] > 0)


def test_reference_backend_is_the_video_predictors_input_byte_for_byte(blackswan, clip_dir):
    """The reference backend gives exactly what sam2's ``load_video_frames`` feeds the predictor;
    the device backend does not (its resize is torch's), which is why the equivalence tests above
    run the reference backend."""
    from sam2.utils.misc import load_video_frames

    frames, _, _ = blackswan
    images, height, width = load_video_frames(str(clip_dir[0].parent), 256, offload_video_to_cpu=True,
                                              compute_device=torch.device("cpu"))
    assert (height, width) == frames[0].shape[:2]
    for i in (0, 7):
        assert torch.equal(SamImageTransform(256, "squash", "reference")(frames[i])[0], images[i])
    assert not torch.equal(SamImageTransform(256, "squash")(frames[0])[0], images[0])


def hd_frames(frames):
    """Two DAVIS frames upscaled to 1920 x 1080 and one of uniform noise: 1080p cameras."""
    from PIL import Image

    rng = np.random.default_rng(0)
    upscaled = [np.array(Image.fromarray(f).resize((1920, 1080), Image.Resampling.BICUBIC)) for f in frames]
    return upscaled + [rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)]


@pytest.mark.parametrize("path", ["device", "float"])
@pytest.mark.parametrize("size", [256, 1024])
@pytest.mark.parametrize("resize", ["squash", "pad"])
def test_device_backend_agrees_with_the_reference(blackswan, resize, size, path):
    """Device backend against the PIL reference, within DEVICE_BACKEND_MAX_ABS (two uint8 levels):
    on DAVIS frames (854 x 480) and at 1080p. ``float`` runs the float32 two-pass resize CUDA
    uses (there is no uint8 antialiased kernel there) on the CPU."""
    frames, _, _ = blackswan
    reference = SamImageTransform(size, resize, "reference")
    device = SamImageTransform(size, resize)
    mode = "bicubic" if resize == "squash" else "bilinear"
    worst, differing, total = 0.0, 0, 0
    for image in frames[:3] + hd_frames(frames[:2]):
        if path == "device":
            x = device(image)
        else:
            pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
            x = device._normalise_and_pad(_resize_float(pixels, device.valid_size(*image.shape[:2]), mode))
        expected = reference(image)
        assert x.shape == expected.shape == (1, 3, size, size) and x.dtype == torch.float32
        delta = (x - expected).abs()
        worst = max(worst, float(delta.max()))
        differing, total = differing + int((delta > 0).sum()), total + delta.numel()
    assert worst <= DEVICE_BACKEND_MAX_ABS, worst
    assert differing / total <= 0.04, differing / total  # measured <= 3.5 %: nearly every value is PIL's


def test_device_backend_keeps_the_padding_zero_and_reads_read_only_frames():
    """A read-only frame (as a FrameWindow holds it) is read without torch's non-writable warning."""
    image = np.full((30, 60, 3), 255, np.uint8)
    image.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = SamImageTransform(64, "pad")(image)
    assert x.shape == (1, 3, 64, 64) and x.is_contiguous()
    assert torch.all(x[0, :, 32:, :] == 0) and torch.all(x[0, :, :32, :] > 0)
    assert torch.equal(x, SamImageTransform(64, "pad", "reference")(image))


@pytest.mark.parametrize("resize", ["squash", "pad"])
def test_cpu_lookup_normalisation_equals_the_arithmetic(resize):
    """uint8 pixels on the CPU are normalised by table lookup: bit for bit the references'
    arithmetic (which whole-number float pixels still run), for every level in every channel,
    with and without padding."""
    rng = np.random.default_rng(1)
    transform = SamImageTransform(64, resize)
    for h, w in ((64, 64), (40, 64), (7, 5)):
        pixels = torch.from_numpy(rng.integers(0, 256, (1, 3, h, w), dtype=np.uint8))
        if h * w >= 256:
            pixels.view(3, -1)[:, :256] = torch.arange(256, dtype=torch.uint8)
        looked_up = transform._normalise_and_pad(pixels)
        assert looked_up.shape == (1, 3, 64, 64) and looked_up.is_contiguous()
        assert torch.equal(looked_up, transform._normalise_and_pad(pixels.float()))


@pytest.mark.parametrize("backend", ["device", "reference"])
def test_transform_fits_a_reduced_image_as_the_camera_frame(backend):
    """With ``camera_hw`` the content is valid_size(camera): a 21 x 129 camera frame decoded at 1/2
    (11 x 65) fills 10 rows of a 64-pixel pad input, as the camera frame would (alone: 11 rows)."""
    transform = SamImageTransform(64, "pad", backend)
    image = np.full((11, 65, 3), 255, np.uint8)
    assert transform.valid_size(21, 129) == (10, 64) and transform.valid_size(11, 65) == (11, 64)
    x = transform(image, camera_hw=(21, 129))
    assert torch.all(x[0, :, :10] > 0) and torch.all(x[0, :, 10:] == 0)
    assert torch.all(transform(image)[0, :, :11] > 0)


def test_transform_options_are_checked():
    with pytest.raises(ValueError, match="backend"):
        SamImageTransform(64, "squash", "pil")
    with pytest.raises(ValueError, match="resize"):
        SamImageTransform(64, "crop")


@pytest.mark.parametrize("resize", ["squash", "pad"])
@pytest.mark.parametrize("size, camera_hw", [(64, (45, 70)), (256, (1080, 1920)), (1024, (480, 640)),
                                             (1024, (1080, 1920)), (1024, (200, 150))])
def test_mask_is_the_camera_logits_above_zero(resize, size, camera_hw):
    """TrackResult.mask() on the CPU (OpenCV's bilinear) is camera_logits() > 0 (torch's), an H x W
    bool array, except at pixels whose logit is within CPU_MASK_TOLERANCE of 0; logits at exactly 0
    stay background; up- and downsampling, both geometries."""
    low = torch.randn(1, 1, size // 4, size // 4, generator=torch.Generator().manual_seed(5)) * 8
    low[0, 0, 4:8, 4:8] = 0.0
    result = TrackResult(low, 1.0, camera_hw, SamImageTransform(size, resize))
    mask, logits = result.mask(), result.camera_logits().numpy()
    assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == camera_hw
    differ = mask != (logits > 0)
    assert np.all(np.abs(logits[differ]) < CPU_MASK_TOLERANCE) and differ.sum() <= 1e-5 * mask.size
    assert 0.3 < mask.mean() < 0.7 and not mask[logits == 0].any()


def blobs(n: int, centres, radius: float) -> np.ndarray:
    """n x n float32 logits: positive discs of ``radius`` (in values) at ``centres`` ((row, col)
    fractions of n), about -8 elsewhere; the logit falls off linearly from each centre."""
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    distance = np.min([np.hypot(yy - r * n, xx - c * n) for r, c in centres], axis=0)
    return np.maximum(radius - distance, -8.0).astype(np.float32)


@pytest.mark.parametrize("camera_hw", [(1080, 1920), (720, 1280), (1001, 777), (45, 70), (30, 30)])
@pytest.mark.parametrize("centres", [[(0.5, 0.45)], [(0.0, 0.0), (0.9, 0.7)], [(0.3, 1.0)]])
def test_positive_upsampled_equals_the_whole_frames_resize(camera_hw, centres):
    """Upsampling only the aligned box around the positive values gives the whole frame's OpenCV
    resize > 0, up to pixels whose value is within 1e-5 of 0 (the sample positions' rounding): small
    objects, objects at the borders, two apart, camera sizes with and without a common divisor."""
    values = blobs(64, centres, 6.0)
    full = cv2.resize(values, camera_hw[::-1], interpolation=cv2.INTER_LINEAR)
    mask = positive_upsampled(values, camera_hw)
    assert mask.shape == camera_hw and mask.dtype == bool and 0 < mask.sum() < mask.size
    differ = mask != (full > 0)
    assert np.all(np.abs(full[differ]) < 1e-5), np.abs(full[differ]).max()
    assert not positive_upsampled(np.full((64, 64), -1.0, np.float32), camera_hw).any()


@pytest.mark.parametrize("resize", ["squash", "pad"])
@pytest.mark.parametrize("size, camera_hw", [(256, (1080, 1920)), (1024, (480, 640)), (64, (45, 70))])
def test_a_small_targets_mask_is_the_camera_logits_above_zero(resize, size, camera_hw):
    """TrackResult.mask() of a small object (the mask upsampled around it only) is still
    camera_logits() > 0 within CPU_MASK_TOLERANCE, in both geometries."""
    low = torch.from_numpy(blobs(size // 4, [(0.4, 0.6)], size / 64))[None, None]
    result = TrackResult(low, 1.0, camera_hw, SamImageTransform(size, resize))
    mask, logits = result.mask(), result.camera_logits().numpy()
    differ = mask != (logits > 0)
    assert np.all(np.abs(logits[differ]) < CPU_MASK_TOLERANCE) and 0 < mask.mean() < 0.2


@pytest.mark.parametrize("resize", ["squash", "pad"])
def test_an_absent_targets_mask_is_empty_and_one_positive_logit_shows(resize):
    """Low-res logits all <= 0 (SAM-2's NO_OBJ_SCORE, or zeros) give an all-False camera mask, as
    camera_logits() > 0 does; a single positive logit among them still shows at camera size."""
    hw, transform = (1080, 1920), SamImageTransform(256, resize)
    for low in (torch.full((1, 1, 64, 64), -1024.0), torch.zeros(1, 1, 64, 64)):
        result = TrackResult(low, -5.0, hw, transform)
        mask = result.mask()
        assert mask.shape == hw and mask.dtype == bool and not mask.any() and not (result.camera_logits() > 0).any()
    low = torch.full((1, 1, 64, 64), -1.0)
    low[0, 0, 30, 40] = 20.0
    result = TrackResult(low, 3.0, hw, transform)
    assert np.array_equal(result.mask(), result.camera_logits().numpy() > 0) and result.mask().any()


def test_encode_with_the_camera_size_maps_prompts_in_camera_pixels(blackswan):
    """A frame decoded at half size and encoded with its camera size: features carry the camera
    size, a click in camera pixels becomes the same SAM-2 point as on the full frame, and the mask
    comes back at camera size."""
    import cv2

    frames, masks, _ = blackswan
    tracker = make_tracker(128)
    half = cv2.resize(frames[0], (427, 240), interpolation=cv2.INTER_AREA)
    feats = tracker.encode(half, camera_hw=(480, 854))
    assert feats.image_hw == (480, 854) and tracker.encode(half).image_hw == (240, 427)
    prompt = PointsPrompt(points=np.array([[800.0, 400.0]]), labels=np.array([1]))
    full = tracker.encode(frames[0])
    assert torch.equal(point_input(prompt, feats.image_hw, tracker.transform, tracker.device)["point_coords"],
                       point_input(prompt, full.image_hw, tracker.transform, tracker.device)["point_coords"])
    assert tracker.condition(feats, MaskPrompt(masks[0])).mask().shape == (480, 854)
    with pytest.raises(ValueError, match="camera_hw"):
        tracker.encode(frames[0], camera_hw=(240, 427))


def test_mask_prompt_of_wrong_size_is_refused(blackswan):
    frames, masks, _ = blackswan
    tracker = make_tracker(128)
    with pytest.raises(ValueError, match="mask prompt"):
        tracker.condition(tracker.encode(frames[0]), MaskPrompt(masks[0][:-1]))
    with pytest.raises(RuntimeError, match="no prompt"):
        tracker.track(tracker.encode(frames[0]))


# --- hole filling (sam2's fill_holes_in_mask_scores on the CPU) -----------------------------------


def logits_with_background(shape, background_pixels, value=-3.0):
    """Foreground logits (2.0) with the given (row, col) pixels set to ``value`` (background)."""
    mask = torch.full((1, 1, *shape), 2.0)
    for r, c in background_pixels:
        mask[0, 0, r, c] = value
    return mask


def square(r0, c0, h, w):
    return [(r, c) for r in range(r0, r0 + h) for c in range(c0, c0 + w)]


def test_fill_holes_fills_area_8_not_area_9():
    eight = logits_with_background((16, 16), square(3, 3, 2, 4))
    nine = logits_with_background((16, 16), square(3, 3, 3, 3))
    filled = fill_holes_in_mask_scores(eight, 8)
    assert torch.all(filled[0, 0, 3:5, 3:7] == HOLE_FILL_LOGIT) and HOLE_FILL_LOGIT == pytest.approx(0.1)
    assert filled.dtype == eight.dtype and torch.equal(filled[eight > 0], eight[eight > 0])
    assert torch.equal(fill_holes_in_mask_scores(nine, 8), nine)
    assert torch.equal(fill_holes_in_mask_scores(nine, 9)[0, 0, 3:6, 3:6], torch.full((3, 3), HOLE_FILL_LOGIT))


def test_fill_holes_uses_8_connectivity():
    """Two blobs of 5 and 4 pixels touching only at a corner are one 9-pixel component."""
    pixels = [(2, 2), (2, 3), (2, 4), (3, 2), (3, 3)] + [(4, 4), (4, 5), (5, 4), (5, 5)]
    mask = logits_with_background((12, 12), pixels)
    assert torch.equal(fill_holes_in_mask_scores(mask, 8), mask)
    labels, areas = connected_components(mask <= 0)
    assert len(set(labels[labels > 0].tolist())) == 1 and set(areas[areas > 0].tolist()) == {9}


def test_fill_holes_semantics_of_sam2():
    """Background = logit <= 0 (0 included); components touching the border count too; the
    foreground is untouched; each mask of a batch on its own; max_area 0 = off."""
    mask = logits_with_background((10, 10), [(0, 0), (0, 1), (5, 5)], value=0.0)
    filled = fill_holes_in_mask_scores(mask, 8)
    assert filled[0, 0, 0, 0] == filled[0, 0, 0, 1] == filled[0, 0, 5, 5] == HOLE_FILL_LOGIT
    assert torch.equal(fill_holes_in_mask_scores(mask, 0), mask)
    batch = torch.cat([mask, logits_with_background((10, 10), square(2, 2, 3, 3))])
    out = fill_holes_in_mask_scores(batch, 8)
    assert torch.equal(out[0], filled[0]) and torch.equal(out[1], batch[1])


def test_fill_holes_leaves_an_all_background_or_all_foreground_mask():
    background = torch.full((2, 1, 16, 16), -1024.0)
    assert torch.equal(fill_holes_in_mask_scores(background, 8), background)
    foreground = torch.full((1, 1, 16, 16), 3.0)
    assert torch.equal(fill_holes_in_mask_scores(foreground, 8), foreground)
    labels, areas = connected_components(torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    assert not labels.any() and not areas.any()


def test_tracker_fills_holes_in_its_outputs(blackswan):
    """A decode with a hole of <= 8 low-res pixels comes out filled; fill_hole_area=0 keeps it."""
    frames, _, _ = blackswan
    token = torch.randn(256, generator=torch.Generator().manual_seed(3))
    filled_tracker, raw_tracker = make_tracker(128), make_tracker(128, fill_hole_area=0)
    raw = raw_tracker.decode_token(raw_tracker.encode(frames[0]), token).low_res_logits
    assert not torch.equal(fill_holes_in_mask_scores(raw, 8), raw), "the decode has no small hole to fill"
    assert torch.equal(filled_tracker.decode_token(filled_tracker.encode(frames[0]), token).low_res_logits,
                       fill_holes_in_mask_scores(raw, 8))
