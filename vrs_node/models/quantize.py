"""Weight quantization of the reasoner (VRS-HQ MLLM) with bitsandbytes: ``reasoner_quantization``.

Modes (:data:`QUANTIZATION_MODES`):

- ``"none"``: the model as built (bf16 on CUDA);
- ``"int8"``: LLM.int8() -- every ``nn.Linear`` of the LLaMA becomes a ``bnb.nn.Linear8bitLt``
  with ``has_fp16_weights=False`` (int8 weights, one fp32 scale per output row) and the paper's
  outlier threshold 6.0 (input columns with an outlier above it are multiplied in 16 bit);
- ``"nf4"``: every ``nn.Linear`` of the LLaMA becomes a ``bnb.nn.Linear4bit`` with
  ``quant_type="nf4"`` (4-bit NormalFloat, blocks of 64 weights with one fp32 absmax each, no
  double quantization), computing in the model's dtype (bf16 on CUDA).

What is quantized, and why only that: the LLaMA's linear layers (q/k/v/o and gate/up/down
projections: 6.48 G of VRS-HQ-7B's 6.94 G parameters). Everything else keeps its dtype:

- ``llm.embed_tokens`` (an embedding, 131 M parameters; bitsandbytes quantizes linear layers);
- ``vision_tower`` (CLIP ViT-L, 0.30 G parameters; small beside the LLM, and its patch tokens feed
  DPC-KNN's exact density ties);
- ``mm_projector`` (4 M parameters, 8 MB in bf16: nothing to gain). It also must stay a plain
  ``nn.Linear``: :attr:`VrshqMLLM.device`/``dtype`` read its weight, and the frames' tokens are
  cast to that dtype;
- ``text_hidden_fcs`` (the SEG/TAK head, 18 M parameters: its output goes to SAM-2 unfiltered).

The module swap is transformers' own (``replace_with_bnb_linear`` with a ``BitsAndBytesConfig``:
the same bnb modules ``from_pretrained(quantization_config=...)`` builds). That helper only builds
empty modules on the ``meta`` device -- ``from_pretrained`` fills them while it reads a checkpoint
-- so this module moves each old layer's weights into its new module itself, the way
bitsandbytes quantizes a parameter: ``Int8Params``/``Params4bit`` quantize when moved to the
target device. Layers are converted one at a time, so a model held on the CPU in bf16 can be
quantized onto a GPU that could not hold it unquantized (``device=``).

bitsandbytes 0.50 runs both modes on the CPU as well as on CUDA (its CPU backend; nf4 matmuls use
AVX-512 BF16 kernels where the CPU has them, and on such CPUs importing bitsandbytes logs once
that the optional ``kernels`` package is missing -- it would fetch kernels from the Hugging Face
Hub; the built-in ones are used). :func:`check_supported` refuses other device types. LLM.int8()
quantizes activations from fp16, so a bf16 model's activations are cast to fp16 inside each int8
layer (bitsandbytes logs that on every call; the notice is filtered out here).

Memory: :func:`weight_bytes` measures what a (possibly quantized) model holds;
:func:`planned_weight_bytes` computes what a mode will hold from the shapes alone, so it also
works on a model built on the ``meta`` device. VRS-HQ-7B with everything unquantized in bf16:
none 13.87 GB, int8 7.39 GB, nf4 4.56 GB (``test/test_quantize.py``).
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass

import torch
from torch import nn

from vrs_node.models.config import QUANTIZATION_MODES
from vrs_node.models.mllm import VrshqMLLM

INT8_THRESHOLD = 6.0
"""LLM.int8()'s outlier threshold (bitsandbytes' and transformers' default)."""

NF4_BLOCKSIZE = 64
"""Weights per absmax block in nf4 (bitsandbytes' default for 4-bit weights)."""

AGREEMENT = {"int8": (0.03, 0.999), "nf4": (0.15, 0.99)}
"""mode -> (max relative L2 error, min cosine similarity) of the SEG/TAK embeddings against the
unquantized model, the stated tolerance (measured on the tiny random MLLM on the CPU, fp32 and
bf16: int8 0.4-0.9 % error, cosine >= 0.99996; nf4 7.0-7.6 %, cosine >= 0.997; random weights are
nf4's hard case, each weight's 4-bit error being ~10 % of its size). ``test/test_quantize.py``
checks it on the CPU and ``bench/device_check.py`` on CUDA."""

SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")
"""Device types on which this module runs int8 and nf4 with bitsandbytes 0.50 (both modes run on
both; :func:`check_supported` refuses others)."""


class _Int8CastNotice(logging.Filter):
    """Drops bitsandbytes' notice that ``MatMul8bitLt`` casts bf16/fp32 inputs to fp16: LLM.int8()
    always quantizes activations from fp16, and the notice is logged once per layer per call (224
    lines per prefill of the 7B), which would flood a node's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def _quiet_int8_cast_notice() -> None:
    """Install :class:`_Int8CastNotice` on bitsandbytes' matmul logger (once)."""
    log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Int8CastNotice) for f in log.filters):
        log.addFilter(_Int8CastNotice())


def check_mode(mode: str) -> None:
    """ValueError naming the valid modes unless ``mode`` is one of :data:`QUANTIZATION_MODES`."""
    if mode not in QUANTIZATION_MODES:
        raise ValueError(f"unknown reasoner_quantization {mode!r}; choose one of {QUANTIZATION_MODES}")


def check_supported(mode: str, device: str | torch.device) -> None:
    """Raise (before anything is changed) if ``mode`` cannot run on ``device``.

    ValueError for an unknown mode; RuntimeError naming the mode and the reason when bitsandbytes
    is not installed or has no kernels for the mode on that device type.
    """
    check_mode(mode)
    if mode == "none":
        return
    device = torch.device(device)
    try:
        importlib.import_module("bitsandbytes")
    except ImportError as exc:
        raise RuntimeError(f"reasoner_quantization {mode!r} needs bitsandbytes, which is not installed "
                           f"({exc}); install requirements.txt") from exc
    if device.type not in SUPPORTED_DEVICE_TYPES:
        raise RuntimeError(f"reasoner_quantization {mode!r} cannot run on {device.type!r}: it runs on "
                           f"{' and '.join(SUPPORTED_DEVICE_TYPES)} only")


def quantizable_linears(mllm: VrshqMLLM) -> dict[str, nn.Linear]:
    """The layers a mode other than ``"none"`` replaces: every plain ``nn.Linear`` of ``mllm.llm``,
    by name relative to ``mllm.llm``."""
    return {name: m for name, m in mllm.llm.named_modules() if type(m) is nn.Linear}


def _bitsandbytes():
    """The bitsandbytes module if something imported it already, else None: without it no
    bitsandbytes layer can exist, and an unquantized reasoner never imports it."""
    return sys.modules.get("bitsandbytes")


def bnb_linears(module: nn.Module) -> list[nn.Module]:
    """The bitsandbytes linear layers (``Linear8bitLt``, ``Linear4bit``) in ``module``."""
    bnb = _bitsandbytes()
    if bnb is None:
        return []
    return [m for m in module.modules() if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))]


def quantization_mode(mllm: VrshqMLLM) -> str:
    """The mode ``mllm`` is in, read from its LLaMA's layers: "none", "int8" or "nf4"; ValueError
    if they mix plain and quantized linear layers (a partial or foreign quantization)."""
    kinds = {"none"} if quantizable_linears(mllm) else set()
    for m in bnb_linears(mllm.llm):
        kinds.add(m.weight.quant_type if hasattr(m.weight, "quant_type") else "int8")
    if len(kinds) != 1:
        raise ValueError(f"the reasoner's LLaMA mixes linear layer kinds: {sorted(kinds)}")
    return kinds.pop()


def quantize_reasoner(mllm: VrshqMLLM, mode: str, device: str | torch.device | None = None) -> VrshqMLLM:
    """Quantize ``mllm``'s LLaMA linear layers in place (``mode``: module docstring) and return it.

    ``device`` (default: where ``mllm`` is) is where the whole model ends up; the model may sit
    elsewhere (e.g. bf16 on the CPU) and its layers are quantized onto ``device`` one at a time.
    Everything not quantized keeps its dtype; nf4 computes in the model's dtype. ``"none"`` only
    moves the model. Raises before changing anything if ``mode`` cannot run on ``device``
    (:func:`check_supported`) or the model is quantized already (ValueError). Quantized layers
    are frozen (inference only).
    """
    device = torch.device(device) if device is not None else mllm.device
    check_supported(mode, device)
    if mode == "none":
        return move_reasoner(mllm, device)
    if quantization_mode(mllm) != "none":
        raise ValueError(f"the reasoner is already quantized ({quantization_mode(mllm)})")
    from transformers import BitsAndBytesConfig
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    config = BitsAndBytesConfig(
        load_in_8bit=mode == "int8", load_in_4bit=mode == "nf4", llm_int8_threshold=INT8_THRESHOLD,
        llm_int8_has_fp16_weight=False, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=mllm.dtype,
        bnb_4bit_use_double_quant=False)
    if mode == "int8":
        _quiet_int8_cast_notice()
    old = quantizable_linears(mllm)
    replace_with_bnb_linear(mllm.llm, quantization_config=config)
    for name in list(old):
        _fill(mllm.llm.get_submodule(name), old.pop(name), mode, device)
    return move_reasoner(mllm, device)


def _fill(new: nn.Module, old: nn.Linear, mode: str, device: torch.device) -> None:
    """Quantize ``old``'s weight into the empty (meta) bnb module ``new`` on ``device``."""
    import bitsandbytes as bnb

    weight = old.weight.detach()
    if mode == "int8":
        # Int8Params quantizes when moved off the CPU's unquantized copy (to any device, CPU included).
        new.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False).to(device)
    else:
        meta = new.weight
        new.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, blocksize=NF4_BLOCKSIZE, compress_statistics=meta.compress_statistics,
            quant_type=meta.quant_type, quant_storage=meta.quant_storage, module=new).to(device)
    if old.bias is not None:
        new.bias = nn.Parameter(old.bias.detach().to(device), requires_grad=False)
    new.train(old.training)  # the helper builds modules in training mode; bnb's kernels depend on it


def move_reasoner(mllm: VrshqMLLM, device: str | torch.device) -> VrshqMLLM:
    """``mllm.to(device)`` for a reasoner in any mode (e.g. to host memory and back while a node is
    inactive); returns ``mllm``.

    ``nn.Module.to`` keeps each parameter object and swaps its data, so what bitsandbytes keeps
    beside an int8 weight -- its ``CB``/``SCB`` (row scales) attributes and the layer's matmul
    ``state`` -- would stay on the old device; they are moved here too. (nf4's quantization state
    is moved in place by ``Params4bit.to``. An nf4 layer that has run on the CPU holds its weight in
    bitsandbytes' CPU-packed layout, which is not moved back to CUDA's layout.)
    """
    device = torch.device(device)
    mllm.to(device)
    for layer in bnb_linears(mllm):
        if isinstance(layer, _bitsandbytes().nn.Linear8bitLt):
            weight = layer.weight
            if weight.CB is not None:  # before the first forward: CB is the int8 weight itself
                weight.CB = weight.data
            if weight.SCB is not None:
                weight.SCB = weight.SCB.to(device)
            if layer.state.CB is not None:  # after it: the layer's state holds both
                layer.state.CB = weight.data
            if layer.state.SCB is not None:
                layer.state.SCB = layer.state.SCB.to(device)
    return mllm


def weight_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every tensor ``module`` holds for inference: parameters, buffers and bitsandbytes'
    quantization statistics (int8: row scales ``SCB``, on the weight until the first forward and
    on the layer's ``state`` after it; nf4: the ``quant_state``'s absmax and code)."""
    out = list(module.parameters()) + list(module.buffers())
    for m in bnb_linears(module):
        state = getattr(m.weight, "quant_state", None)
        if state is not None:
            out += [state.absmax, state.code]
        else:
            out += [t for t in (m.weight.SCB, m.state.SCB, m.state.CB) if t is not None]
    return out


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the tensors ``module`` holds (:func:`weight_tensors`), each counted once; ``meta``
    tensors count as the size they describe. (On the CPU an nf4 layer's first forward repacks its
    weight and stores its absmax in bf16, so a little less is counted after it.)"""
    seen, total = set(), 0
    for t in weight_tensors(module):
        key = id(t) if t.device.type == "meta" else (t.device, t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def linear_quantized_bytes(out_features: int, in_features: int, mode: str) -> int:
    """Bytes of one linear layer's weight (bias excluded) once quantized: int8 = one byte per
    weight + one fp32 scale per output row; nf4 = half a byte per weight + one fp32 absmax per
    :data:`NF4_BLOCKSIZE` weights + the 16-entry fp32 code table."""
    n = out_features * in_features
    if mode == "int8":
        return n + 4 * out_features
    if mode == "nf4":
        return (n + 1) // 2 + 4 * -(-n // NF4_BLOCKSIZE) + 16 * 4
    raise ValueError(f"no quantized size for mode {mode!r}")


def planned_weight_bytes(mllm: VrshqMLLM, mode: str, dtype: torch.dtype | None = None) -> int:
    """Bytes :func:`weight_bytes` reports right after :func:`quantize_reasoner` puts an unquantized
    ``mllm`` in ``mode``, computed from shapes only (so it works on a ``meta``-device model).
    ``dtype``: the dtype the floating-point tensors left unquantized will have (default: their
    own)."""
    check_mode(mode)
    linears = list(quantizable_linears(mllm).values()) if mode != "none" else []
    replaced = {id(m.weight) for m in linears}
    total = sum(linear_quantized_bytes(m.out_features, m.in_features, mode) for m in linears)
    itemsize = torch.empty((), dtype=dtype).element_size() if dtype is not None else None
    for t in list(mllm.parameters()) + list(mllm.buffers()):
        if id(t) not in replaced:
            total += t.numel() * (itemsize if itemsize and t.is_floating_point() else t.element_size())
    return total


def embedding_agreement(quantized: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(relative L2 error ||q - r|| / ||r||, cosine similarity) of a quantized model's embedding
    against the unquantized one's, in float32 on the CPU (compared with :data:`AGREEMENT`)."""
    q, r = quantized.float().cpu().flatten(), reference.float().cpu().flatten()
    return float((q - r).norm() / r.norm()), float(torch.nn.functional.cosine_similarity(q, r, dim=0))


@dataclass(frozen=True)
class QuantizationReport:
    """What a reasoner holds: its mode, how many bnb layers and plain ``nn.Linear`` its LLaMA has,
    the bnb layer class(es), the weight bytes of the whole model and of its LLaMA alone, and the
    device of its LLaMA's first parameter."""

    mode: str
    quantized_layers: int
    plain_llm_linears: int
    layer_classes: tuple[str, ...]
    weight_bytes: int
    llm_weight_bytes: int
    device: str


def quantization_report(mllm: VrshqMLLM) -> QuantizationReport:
    """The :class:`QuantizationReport` of ``mllm`` (e.g. for a device check after
    :func:`quantize_reasoner`)."""
    layers = bnb_linears(mllm.llm)
    return QuantizationReport(
        mode=quantization_mode(mllm), quantized_layers=len(layers), plain_llm_linears=len(quantizable_linears(mllm)),
        layer_classes=tuple(sorted({type(m).__name__ for m in layers})), weight_bytes=weight_bytes(mllm),
        llm_weight_bytes=weight_bytes(mllm.llm), device=str(next(mllm.llm.parameters()).device))
