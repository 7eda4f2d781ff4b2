"""``torch.compile`` of a SAM-2 model's parts, the way sam2's ``vos_optimized`` predictor does it.

``build_sam2_video_predictor(..., vos_optimized=True)`` builds a ``SAM2VideoPredictorVOS``: it
compiles five submodules' ``forward`` in place (the image encoder through ``SAM2Base``'s
``compile_image_encoder``), all with ``mode="max-autotune"`` and ``fullgraph=True``:

============================  ==================  =========================================
part                          ``dynamic``         why
============================  ==================  =========================================
``image_encoder``             False               one input size (1 x 3 x S x S)
``memory_encoder``            False               one feature/mask size
``memory_attention``          True                the number of memories varies
``sam_prompt_encoder``        False               sam2: "accuracy regression on True"
``sam_mask_decoder``          False               sam2: "accuracy regression on True"
============================  ==================  =========================================

:func:`compile_sam2` compiles the same parts with the same options (:data:`COMPILED_PARTS`).

The memory attention is *not* run with a fixed number of memories: VOS compiles it with dynamic
shapes, and so does this. For :class:`vrs_node.core.tracker.StreamingTracker` the memory length
(spatial memories x H x W + 4 tokens per object pointer) grows over the first 15 steps after a
prompt and is then constant; it depends only on the number of conditioning frames kept (at most
``max_cond_frames``) and the steps since the last prompt (capped at 15). Measured on the tiny
SAM-2: the memory attention compiles once for a single spatial memory (the RoPE repeat factor 1
is specialised) and once symbolically for every larger count. With CUDA graphs (``max-autotune``
on CUDA) one graph is recorded per distinct length: at most 16 per number of conditioning frames.

The other parts are compiled per input shape, as in VOS: the image and memory encoders once, the
prompt encoder once per number of prompt points (and with/without a mask input), the mask decoder
once per number of sparse tokens and ``multimask_output`` value. Dynamo's default limit of 8
compilations per function, shared by every instance of a class, fails hard under
``fullgraph=True`` (``FailOnRecompileLimitHit``): 8 different click counts would stop the
tracker. So each part is compiled with its own cache (``isolate_recompiles=True``) and
:data:`RECOMPILE_LIMIT` entries.

The encoders' sine position encodings keep a table per feature size, filled on first use; sam2
fills them at construction "to help with compilation", but only for 1024 px and only if CUDA is
available then. Here they are filled eagerly for the model's own size, on its device, before
compiling: otherwise the first compiled call fills the table inside the graph -- with CUDA
graphs, a tensor of the graph's memory pool kept in a Python dict -- and each encoder compiles a
second time once the table exists.

The rest of VOS's changes are clones: it overrides ``forward_image``, ``_forward_sam_heads`` and
``_encode_new_memory`` only to clone what the compiled parts return. That is what makes it safe
with CUDA graphs (``max-autotune`` on CUDA): a CUDA graph's outputs live in its static memory pool
and are overwritten by its next replay, yet the tracker keeps them -- buffered frame features,
the memory bank's ``maskmem_features`` and pointers -- and ``_encode_new_memory`` adds the
no-object embedding to the memory encoder's output in place. Our tracker also calls the prompt
encoder and mask decoder directly (``_decode_tokens``), outside those three methods. So here the
clone is attached to the compiled parts themselves: each compiled ``forward`` returns fresh
copies of its output tensors, whatever method of whatever driver called it (the largest copy is
the image encoder's stride-4 map, 256 channels at S/4 x S/4: 64 MiB in fp32 at 1024 px, a few
microseconds of GPU bandwidth; VOS copies the same tensors). The model's methods and class are
left alone, so this works on any ``SAM2Base``.

On the CPU inductor compiles too (C++ kernels through the system compiler, complex RoPE ops left
to eager); use ``mode="default"`` there: compiling is already slow, max-autotune adds GEMM
benchmarking, and CUDA graphs are CUDA-only.
"""

from __future__ import annotations

import functools

import torch
from torch.utils._pytree import tree_map_only

COMPILED_PARTS = {
    "image_encoder": {"fullgraph": True, "dynamic": False},
    "memory_encoder": {"fullgraph": True, "dynamic": False},
    "memory_attention": {"fullgraph": True, "dynamic": True},
    "sam_prompt_encoder": {"fullgraph": True, "dynamic": False},
    "sam_mask_decoder": {"fullgraph": True, "dynamic": False},
}
"""Submodule of ``SAM2Base`` -> ``torch.compile`` options of its ``forward`` (sam2's VOS choices)."""

RECOMPILE_LIMIT = 64
"""Compilations each part may keep (one per input shape / guard set) before a call fails."""

POSITION_STRIDES = (4, 8, 16, 32)
"""Strides of the feature maps whose sine position encodings SAM-2 caches (image encoder levels;
the memory encoder works at 16)."""

DEFAULT_MODE = "max-autotune"
"""sam2 VOS's inductor mode (autotuned GEMMs and CUDA graphs on CUDA)."""


def compiled_parts(model: torch.nn.Module) -> list[str]:
    """The parts of :data:`COMPILED_PARTS` whose ``forward`` has been replaced on the instance
    (by :func:`compile_sam2`, or by sam2's own VOS / ``compile_image_encoder``)."""
    return [name for name in COMPILED_PARTS if "forward" in vars(getattr(model, name))]


def compile_sam2(model: torch.nn.Module, mode: str | None = DEFAULT_MODE,
                 backend: str = "inductor") -> torch.nn.Module:
    """Compile ``model``'s parts in place (:data:`COMPILED_PARTS`) and return ``model``.

    ``mode``: inductor's mode (``"max-autotune"`` as sam2's VOS; ``"default"`` compiles far faster,
    without autotuning or CUDA graphs); it must be None for another ``backend`` (e.g.
    ``"aot_eager"``, which traces the same graphs and runs them eagerly). Each part's ``forward``
    becomes the compiled one followed by a clone of every output tensor (module docstring); the
    first call with each new input shape compiles, later calls run the compiled code. Compile
    the model on the device it will run on: the position tables are filled there, and weights
    loaded later are read at call time (a dtype or device change recompiles). ValueError if a
    part is already compiled or ``mode`` is given for a backend other than inductor.
    """
    done = compiled_parts(model)
    if done:
        raise ValueError(f"SAM-2 parts already compiled: {', '.join(done)}")
    if backend != "inductor" and mode is not None:
        raise ValueError(f"mode {mode!r} is inductor's; pass mode=None for backend {backend!r}")
    _fill_position_caches(model)
    for name, options in COMPILED_PARTS.items():
        part = getattr(model, name)
        compiled = torch.compile(part.forward, mode=mode, backend=backend, recompile_limit=RECOMPILE_LIMIT,
                                 isolate_recompiles=True, **options)
        part.forward = _returning_copies(compiled)
    return model


def _fill_position_caches(model: torch.nn.Module) -> None:
    """Compute every sine position encoding's cached table for the model's feature sizes, eagerly,
    on the model's device (module docstring)."""
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    for module in model.modules():
        if isinstance(module, PositionEmbeddingSine):
            for stride in POSITION_STRIDES:
                side = model.image_size // stride
                module._pe(1, model.device, side, side)


def _returning_copies(fn):
    """``fn`` whose output tensors (in any nesting of dicts, lists and tuples) are cloned."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return tree_map_only(torch.Tensor, torch.Tensor.clone, fn(*args, **kwargs))

    return call
