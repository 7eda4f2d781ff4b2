"""The ``precision`` setting (fp32 | bf16 | auto): how it resolves, and bf16 against fp32 on the CPU.

The models are the ``tiny-random`` profile's (seeded random weights): these tests prove that the
precision reaches every model and how closely bf16 follows fp32, never segmentation quality. The
tolerances below are the measured agreement (on this repository's CPU machine) with a margin of
about two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from conftest import davis_sequence
from vrs_node.core.prompts import MaskPrompt
from vrs_node.core.track_result import TrackResult
from vrs_node.core.tracker import FrameFeatures, StreamingTracker
from vrs_node.models.mllm import ATTENTION
from vrs_node.models.precision import resolve_precision, tracker_precision_options
from vrs_node.models.profiles import LoadedModels, build_grounding_models, get_profile, load_models
from vrs_node.models.prompt import build_prompt, clean_instruction, tokenize_prompt

TRACK_FRAMES = 20
"""Frames tracked in each precision: the mask prompt on blackswan frame 0, then 19 tracked frames."""

TRACK_MIN_IOU = 0.97
"""Smallest per-frame IoU of the bf16 mask with the fp32 mask (camera resolution) over
:data:`TRACK_FRAMES`. Measured: 0.986 (mean 0.995). The random model's tracked masks cover ~90 %
of the frame, so this bounds the pixels whose logit changes sign, not a segmentation."""

TRACK_MAX_LOGIT_DIFF = 0.5
"""Largest |Δ| of the low-res (S/4) mask logits, bf16 against fp32, over every frame. Measured:
0.269 (0.1 on some frames: a pixel one side fills as a hole, logit 0.1, the other not)."""

TRACK_MAX_SCORE_DIFF = 0.035
"""Largest |Δ| of the object-score logit (about 5.17 on tracked frames). Measured: 0.017."""

TOKEN_DECODE_MAX_LOGIT_DIFF = 0.5
"""Largest |Δ| of a token decode's low-res logits (a seeded random 256-d token on frame 0).
Measured: 0.100 (a pixel one side fills as a hole)."""

MLLM_MAX_TOKEN_DIFF = 0.015
"""Largest |Δ| of the 256-d SEG and TAK embeddings of the tiny MLLM in bf16 against fp32 (4 dense
frames, 2 of them also sparse; |SEG| <= 0.74). Measured: SEG 0.0069, TAK 0.0053."""

CLIP_MAX_EMBEDDING_DIFF = 0.006
"""Largest |Δ| of the tiny CLIP anchor scorer's unit-norm embeddings, bf16 against fp32.
Measured: images 0.0020, text 0.0029."""


def test_auto_is_fp32_on_cpu_and_bf16_on_cuda():
    assert resolve_precision("auto", "cpu") == resolve_precision("auto", torch.device("cpu")) == torch.float32
    assert resolve_precision("auto", torch.device("cuda")) == torch.bfloat16  # pure function: no GPU needed
    for device in ("cpu", torch.device("cuda")):
        assert resolve_precision("fp32", device) == torch.float32
        assert resolve_precision("bf16", device) == torch.bfloat16
    assert tracker_precision_options("auto", "cpu") == {"autocast_dtype": None}
    assert tracker_precision_options("auto", torch.device("cuda")) == {"autocast_dtype": torch.bfloat16}
    assert tracker_precision_options("bf16", "cpu") == {"autocast_dtype": torch.bfloat16}


@pytest.mark.parametrize("value", ["fp16", "BF16", "float32", ""])
def test_other_values_are_refused_naming_the_allowed_ones(value):
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'fp32', 'bf16'\]"):
        resolve_precision(value, "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        load_models(get_profile("tiny-random"), precision=value)


@dataclass
class Run:
    """One precision's tracking run (:func:`runs`)."""

    models: LoadedModels
    tracker: StreamingTracker
    first: FrameFeatures
    results: list[TrackResult]
    decoded: TrackResult


@pytest.fixture(scope="module")
def runs(blackswan) -> dict[str, Run]:
    """precision -> the tiny-random models loaded in it, their tracker, frame 0's features, the
    results of the mask prompt on frame 0 and tracking up to :data:`TRACK_FRAMES`, and the decode
    of a seeded random token on frame 0."""
    frames, masks, _ = blackswan
    token = torch.randn(256, generator=torch.Generator().manual_seed(0))
    out = {}
    for precision in ("fp32", "bf16"):
        models = load_models(get_profile("tiny-random"), "cpu", precision=precision)
        tracker = StreamingTracker(models.sam2, models.transform, **models.tracker_options)
        first = tracker.encode(frames[0])
        results = [tracker.condition(first, MaskPrompt(masks[0]))]
        results += [tracker.track(tracker.encode(f)) for f in frames[1:TRACK_FRAMES]]
        out[precision] = Run(models, tracker, first, results, tracker.decode_token(first, token))
    return out


def test_the_tracker_refuses_an_autocast_dtype_autocast_cannot_run(runs):
    models = runs["fp32"].models
    with pytest.raises(ValueError, match="autocast_dtype"):
        StreamingTracker(models.sam2, models.transform, autocast_dtype=torch.float32)


def test_bf16_keeps_float32_sam2_weights_and_runs_it_under_autocast(runs):
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert (fp32.models.precision, bf16.models.precision) == ("fp32", "bf16")
    assert fp32.models.tracker_options["autocast_dtype"] is None and fp32.tracker.autocast_dtype is None
    assert bf16.models.tracker_options["autocast_dtype"] == bf16.tracker.autocast_dtype == torch.bfloat16
    for run in (fp32, bf16):
        assert {p.dtype for p in run.models.sam2.parameters()} == {torch.float32}
    # The encoder's convolutions ran in bf16: the mask decoder's high-res levels come out bf16
    # (the top level is an FPN sum with a float32 top-down path, as on CUDA).
    assert [f.dtype for f in bf16.first.vision_feats[:2]] == [torch.bfloat16] * 2
    assert {f.dtype for f in fp32.first.vision_feats} == {torch.float32}
    for run in (fp32, bf16):
        assert {r.low_res_logits.dtype for r in [*run.results, run.decoded]} == {torch.float32}
        assert {type(r.object_score) for r in run.results} == {float}
        bank = [*run.tracker._bank["cond_frame_outputs"].values(),
                *run.tracker._bank["non_cond_frame_outputs"].values()]
        assert {out["maskmem_features"].dtype for out in bank} == {run.tracker.memory_dtype}


def test_bf16_memory_is_stored_in_memory_dtype(blackswan):
    frames, masks, _ = blackswan
    models = load_models(get_profile("tiny-random"), "cpu", precision="bf16", image_size=128)
    tracker = StreamingTracker(models.sam2, models.transform,
                               **{**models.tracker_options, "memory_dtype": torch.float32})
    tracker.condition(tracker.encode(frames[0]), MaskPrompt(masks[0]))
    tracker.track(tracker.encode(frames[1]))
    bank = [*tracker._bank["cond_frame_outputs"].values(), *tracker._bank["non_cond_frame_outputs"].values()]
    assert {out["maskmem_features"].dtype for out in bank} == {torch.float32}


def test_bf16_tracking_agrees_with_fp32(runs):
    fp32, bf16 = runs["fp32"].results, runs["bf16"].results
    ious, logit_diffs, score_diffs = [], [], []
    for a, b in zip(fp32, bf16):
        ma, mb = a.mask(), b.mask()
        ious.append(np.logical_and(ma, mb).sum() / max(np.logical_or(ma, mb).sum(), 1))
        logit_diffs.append(float((a.low_res_logits - b.low_res_logits).abs().max()))
        score_diffs.append(abs(a.object_score - b.object_score))
    assert len(ious) == TRACK_FRAMES
    assert min(ious) >= TRACK_MIN_IOU, [round(float(i), 4) for i in ious]
    assert max(logit_diffs) <= TRACK_MAX_LOGIT_DIFF, logit_diffs
    assert max(score_diffs) <= TRACK_MAX_SCORE_DIFF, score_diffs
    # bf16 really ran: every tracked frame differs from fp32.
    assert min(logit_diffs[1:]) > 0 and min(score_diffs[1:]) > 0


def test_bf16_token_decode_agrees_with_fp32(runs):
    a, b = runs["fp32"].decoded, runs["bf16"].decoded
    diff = float((a.low_res_logits - b.low_res_logits).abs().max())
    assert 0 < diff <= TOKEN_DECODE_MAX_LOGIT_DIFF


def mllm_run(precision: str, frames: list[np.ndarray], sdpa_calls: list) -> dict:
    """The tiny-random grounding models in ``precision``, the SEG/TAK tokens of one prefill over
    ``frames`` (the first two also sparse), the CLIP anchor embeddings, and the query dtypes of the
    SDPA calls (``sdpa_calls`` collects them) made by the vision tower and by the prefill."""
    models = build_grounding_models(get_profile("tiny-random"), precision=precision)
    mllm, tokenizer = models.mllm, models.tokenizer
    ids = tokenize_prompt(build_prompt(clean_instruction("the black swan"), len(frames)), tokenizer)
    sdpa_calls.clear()
    tokens = mllm.frame_tokens(frames)
    vision_calls = list(sdpa_calls)
    sdpa_calls.clear()
    out = mllm(ids, tokens, *models.special_ids, sparse=tokens[:2])
    return {"models": models, "tokens": out, "vision_sdpa": vision_calls, "llm_sdpa": list(sdpa_calls),
            "images": torch.stack([models.anchor_scorer.embed_image(f) for f in frames]),
            "text": models.anchor_scorer.embed_text("the black swan")}


def test_the_mllm_in_bf16_holds_bf16_weights_uses_sdpa_and_agrees_with_fp32(monkeypatch):
    frames = davis_sequence("blackswan", 4)[0]
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda query, *args, **kwargs: calls.append(query.dtype) or sdpa(query, *args, **kwargs))
    fp32, bf16 = mllm_run("fp32", frames, calls), mllm_run("bf16", frames, calls)
    for run, dtype in ((fp32, torch.float32), (bf16, torch.bfloat16)):
        mllm = run["models"].mllm
        assert {p.dtype for p in mllm.parameters()} == {dtype}
        assert mllm.llm.config._attn_implementation == mllm.vision_tower.config._attn_implementation == ATTENTION
        # every attention layer of both towers went through SDPA, in the weights' dtype
        assert run["vision_sdpa"] == [dtype] * mllm.config.vision.num_hidden_layers
        assert run["llm_sdpa"] == [dtype] * mllm.config.llm.num_hidden_layers
        assert run["models"].anchor_scorer.input_dtype == dtype
        assert run["tokens"].seg.dtype == run["tokens"].tak.dtype == torch.float32
    assert ATTENTION == "sdpa"
    assert torch.bfloat16 in {p.dtype for p in bf16["models"].anchor_scorer.model.parameters()}
    seg_diff = float((fp32["tokens"].seg - bf16["tokens"].seg).abs().max())
    tak_diff = float((fp32["tokens"].tak - bf16["tokens"].tak).abs().max())
    assert 0 < seg_diff <= MLLM_MAX_TOKEN_DIFF and 0 < tak_diff <= MLLM_MAX_TOKEN_DIFF
    assert 0 < float((fp32["images"] - bf16["images"]).abs().max()) <= CLIP_MAX_EMBEDDING_DIFF
    assert 0 < float((fp32["text"] - bf16["text"]).abs().max()) <= CLIP_MAX_EMBEDDING_DIFF
