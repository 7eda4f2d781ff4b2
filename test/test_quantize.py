"""Reasoner quantization (``reasoner_quantization``: none | int8 | nf4) with bitsandbytes.

On a tiny MLLM (seeded random weights, real structure): the LLaMA's linear layers really become
bitsandbytes layers, the SEG/TAK embeddings stay close to the unquantized model's, and the weight
memory is what the plan from the shapes says. The 7B figures are computed on the ``meta`` device.
bitsandbytes 0.50 runs both modes on the CPU, so every case runs here; the same checks on CUDA
(agreement, and a quantized reasoner moved to host memory and back) are part of
``bench/device_check.py`` (its ``cuda_checks`` part), since CI has no GPU.

Tolerances: ``vrs_node.models.quantize.AGREEMENT`` (with the measured figures).
"""

from __future__ import annotations

import sys

import bitsandbytes as bnb
import pytest
import torch
from torch import nn
from transformers import LlamaConfig

from conftest import davis_sequence
from vrs_node.models.byte_tokenizer import byte_tokenizer
from vrs_node.models.mllm import MllmConfig, VrshqMLLM, special_token_ids, tiny_config, vrshq_7b_config
from vrs_node.models.prompt import build_prompt, clean_instruction, tokenize_prompt
from vrs_node.models.quantize import (AGREEMENT, QUANTIZATION_MODES, bnb_linears, check_supported,
                                      embedding_agreement, linear_quantized_bytes, planned_weight_bytes, quantization_report, quantize_reasoner,
                                      quantizable_linears, weight_bytes, weight_tensors)



@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def frames():
    return davis_sequence("blackswan", 4)[0]


def tiny_mllm(tokenizer, dtype=torch.float32, device="cpu", config: MllmConfig | None = None) -> VrshqMLLM:
    """The seeded tiny MLLM (identical weights on every call)."""
    torch.manual_seed(0)
    return VrshqMLLM(config or tiny_config(len(tokenizer))).eval().to(device, dtype)


def grounding(mllm, tokenizer, frames):
    seg_id, tak_id = special_token_ids(tokenizer)
    ids = tokenize_prompt(build_prompt(clean_instruction("the black swan"), len(frames)), tokenizer)
    return mllm(ids, mllm.frame_tokens(frames), seg_id, tak_id)


def assert_close_embeddings(out, ref, mode):
    max_rel, min_cos = AGREEMENT[mode]
    for name in ("seg", "tak"):
        rel, cos = embedding_agreement(getattr(out, name), getattr(ref, name))
        assert rel < max_rel and cos > min_cos, f"{mode} {name}: relative error {rel:.4f}, cosine {cos:.5f}"


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_every_llm_linear_becomes_a_bnb_layer_and_nothing_else_changes(tokenizer, mode):
    mllm = tiny_mllm(tokenizer)
    plain = quantizable_linears(mllm)
    projector = mllm.mm_projector.weight.detach().clone()
    assert len(plain) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    quantize_reasoner(mllm, mode)
    expected = bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit
    for name in plain:
        layer = mllm.llm.get_submodule(name)
        assert type(layer) is expected and not layer.training
        assert layer.weight.dtype == (torch.int8 if mode == "int8" else torch.uint8)
    if mode == "nf4":
        assert {m.weight.quant_type for m in bnb_linears(mllm)} == {"nf4"}
        assert {m.compute_dtype for m in bnb_linears(mllm)} == {torch.float32}  # the model's dtype
    else:
        assert {m.state.threshold for m in bnb_linears(mllm)} == {6.0}
        assert not any(m.state.has_fp16_weights for m in bnb_linears(mllm))
    report = quantization_report(mllm)
    assert (report.mode, report.quantized_layers, report.plain_llm_linears) == (mode, 14, 0)
    assert report.layer_classes == (expected.__name__,)
    # the projector, the SEG/TAK head and the vision tower stay plain, in the model's dtype
    assert type(mllm.mm_projector) is nn.Linear and torch.equal(mllm.mm_projector.weight, projector)
    assert mllm.dtype == torch.float32
    assert not bnb_linears(mllm.vision_tower) and not bnb_linears(mllm.text_hidden_fcs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantized_seg_and_tak_stay_close_to_the_unquantized_model(tokenizer, frames, mode, dtype):
    ref = grounding(tiny_mllm(tokenizer, dtype), tokenizer, frames)
    mllm = quantize_reasoner(tiny_mllm(tokenizer, dtype), mode, device="cpu")
    assert {t.device.type for t in weight_tensors(mllm)} == {"cpu"}
    assert_close_embeddings(grounding(mllm, tokenizer, frames), ref, mode)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_biases_are_carried_over(tokenizer, frames, mode):
    base = tiny_config(len(tokenizer))
    config = MllmConfig(vision=base.vision, llm=LlamaConfig(**{**base.llm.to_dict(), "attention_bias": True}))
    ref_model = tiny_mllm(tokenizer, config=config)
    with torch.no_grad():
        for m in quantizable_linears(ref_model).values():
            if m.bias is not None:
                m.bias.normal_(0, 0.5)  # LLaMA initialises biases to 0: make them matter
    biases = {n: m.bias.detach().clone() for n, m in quantizable_linears(ref_model).items() if m.bias is not None}
    ref = grounding(ref_model, tokenizer, frames)
    mllm = quantize_reasoner(ref_model, mode)
    assert biases and all(torch.equal(mllm.llm.get_submodule(n).bias, b) for n, b in biases.items())
    assert_close_embeddings(grounding(mllm, tokenizer, frames), ref, mode)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_measured_memory_equals_the_plan_and_shrinks_by_the_expected_ratio(tokenizer, dtype):
    itemsize = torch.empty((), dtype=dtype).element_size()
    plain = tiny_mllm(tokenizer, dtype)
    linear_plain = sum(m.weight.numel() * itemsize for m in quantizable_linears(plain).values())
    assert weight_bytes(plain) == planned_weight_bytes(plain, "none") == sum(
        t.numel() * t.element_size() for t in list(plain.parameters()) + list(plain.buffers()))
    for mode, bytes_per_weight in (("int8", 1), ("nf4", 0.5 + 4 / 64)):
        mllm = tiny_mllm(tokenizer, dtype)
        planned = planned_weight_bytes(mllm, mode)
        quantize_reasoner(mllm, mode)
        assert weight_bytes(mllm) == planned
        # the LLaMA's linear weights shrink to 1 byte (int8) / 0.5625 byte (nf4) per weight, plus
        # one fp32 scale per row (int8) / the 16-entry code table per layer (nf4)
        saved = weight_bytes(plain) - weight_bytes(mllm)
        linear_quantized = linear_plain - saved
        assert linear_quantized == sum(linear_quantized_bytes(m.out_features, m.in_features, mode)
                                       for m in quantizable_linears(plain).values())
        ratio = linear_quantized / linear_plain
        assert bytes_per_weight / itemsize < ratio < bytes_per_weight / itemsize * 1.07


def test_7b_weight_memory_per_mode():
    """VRS-HQ-7B's weight bytes in bf16 (planned from a ``meta`` model: nothing is allocated)."""
    with torch.device("meta"):
        mllm = VrshqMLLM(vrshq_7b_config())
    params = sum(p.numel() for p in mllm.parameters())
    sizes = {mode: planned_weight_bytes(mllm, mode, torch.bfloat16) for mode in QUANTIZATION_MODES}
    # floating-point buffers (LLaMA's rotary frequencies) become bf16 too; CLIP's position ids stay int64
    assert sizes["none"] == 2 * params + sum(b.numel() * (2 if b.is_floating_point() else 8) for b in mllm.buffers())
    assert sizes == {"none": 13_865_122_568, "int8": 7_394_556_680, "nf4": 4_555_879_176}  # 13.9 / 7.4 / 4.6 GB
    assert 0.53 < sizes["int8"] / sizes["none"] < 0.54 and 0.32 < sizes["nf4"] / sizes["none"] < 0.33


def test_unknown_modes_and_unsupported_devices_are_refused_before_any_change(tokenizer):
    mllm = tiny_mllm(tokenizer)
    with pytest.raises(ValueError, match="unknown reasoner_quantization 'fp8'"):
        quantize_reasoner(mllm, "fp8")
    with pytest.raises(RuntimeError, match="'nf4' cannot run on 'meta'"):
        quantize_reasoner(mllm, "nf4", device="meta")
    assert quantization_report(mllm).mode == "none" and mllm.device.type == "cpu"
    check_supported("none", "meta")  # nothing to quantize: any device


def test_missing_bitsandbytes_is_a_clear_error(tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    with pytest.raises(RuntimeError, match="'int8' needs bitsandbytes, which is not installed"):
        quantize_reasoner(tiny_mllm(tokenizer), "int8")


def test_none_keeps_the_model_and_quantizing_twice_is_refused(tokenizer):
    mllm = tiny_mllm(tokenizer)
    assert quantize_reasoner(mllm, "none") is mllm
    report = quantization_report(mllm)
    assert (report.mode, report.quantized_layers, report.plain_llm_linears) == ("none", 0, 14)
    assert report.layer_classes == ()
    quantize_reasoner(mllm, "nf4")
    with pytest.raises(ValueError, match=r"already quantized \(nf4\)"):
        quantize_reasoner(mllm, "int8")


def test_load_models_quantizes_the_reasoner_and_refuses_a_profile_without_one():
    from vrs_node.models.profiles import get_profile, load_models

    loaded = load_models(get_profile("tiny-random"), "cpu", reasoner_quantization="int8")
    report = quantization_report(loaded.grounding.mllm)
    assert (loaded.reasoner_quantization, report.mode, report.plain_llm_linears) == ("int8", "int8", 0)
    loaded.to("cpu")  # a lifecycle move keeps the quantization statistics with the weights
    assert {t.device.type for t in weight_tensors(loaded.grounding.mllm)} == {"cpu"}
    with pytest.raises(ValueError, match="has no reasoner"):
        load_models(get_profile("hiera-t-512-random"), "cpu", reasoner_quantization="nf4")
    with pytest.raises(ValueError, match="unknown reasoner_quantization 'int4'"):
        load_models(get_profile("tiny-random"), "cpu", reasoner_quantization="int4")
