"""Named model profiles: which SAM-2 architecture, resolution and weights a node or tool runs.

No machine of this project can download weights, so the profiles come in two kinds:

- ``*-random`` profiles build the real sam2 architectures with seeded random weights. They prove
  plumbing, shapes, determinism, boundedness, speed ratios and equivalence with sam2's own video
  predictor -- never segmentation quality. ``tiny-random`` (Hiera-T at 256 px) is what tests and
  the bundled demo run; its object-score head is biased by +5 so that random weights report
  "target present" and produce non-empty masks (still meaningless ones).
- checkpoint profiles (``sam2.1-hiera-*``) need a SAM-2 checkpoint file (sam2's release ``.pt``),
  given by the ``sam2_checkpoint`` argument; without one they refuse to build.

A profile with ``language`` set also builds the grounding models (MLLM, tokenizer, CLIP anchor
scorer) that turn an instruction into a target:

- ``"tiny"``: a tiny MLLM with the real structure, the byte-level tokenizer and a tiny CLIP, all
  seeded random (tests, demo);
- ``"vrshq-7b-random"``: VRS-HQ-7B's real sizes (CLIP ViT-L/14-224 + LLaMA-7B + CLIP-336 anchor)
  with random weights and the byte-level tokenizer (benchmarks; about 15 GB in bf16);
- ``"vrshq-checkpoint"``: the released VRS-HQ checkpoint directory (``vrshq_checkpoint``), which
  also holds the SAM-2 weights, plus open_clip's ViT-L-14-336 (``clip_anchor``: "openai" from the
  local cache, or a weights file).
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass

import torch

from vrs_node.models.byte_tokenizer import byte_tokenizer
from vrs_node.models.clip_anchor import VRSHQ_ANCHOR_MODEL, ClipAnchorScorer
from vrs_node.models.config import ModelConfig
from vrs_node.models.mllm import SpecialTokenIds, VrshqMLLM, special_token_ids, tiny_config, vrshq_7b_config
from vrs_node.models.precision import PRECISIONS, resolve_precision_name, tracker_precision_options
from vrs_node.models.quantize import check_supported, move_reasoner, quantize_reasoner
from vrs_node.models.sam2_build import Sam2Spec, SamImageTransform, build_sam2_model
from vrs_node.models.sam2_compile import DEFAULT_MODE as DEFAULT_COMPILE_MODE
from vrs_node.models.sam2_compile import compile_sam2
from vrs_node.models.tokenizer import HF_REPO
from vrs_node.models.vrshq_checkpoint import CHECKPOINT_PARTS, load_vrshq_checkpoint


@dataclass(frozen=True)
class ModelProfile:
    """A named SAM-2 set-up. ``object_score_bias`` is added to the occlusion head's output bias."""

    name: str
    description: str
    sam2: Sam2Spec
    random_weights: bool
    object_score_bias: float = 0.0
    language: str | None = None


PROFILES = {
    p.name: p
    for p in (
        ModelProfile("tiny-random", "SAM-2.1 Hiera-T at 256 px + a tiny MLLM, seeded random weights "
                     "(tests, demo)", Sam2Spec("sam2.1-hiera-t", image_size=256), True, object_score_bias=5.0,
                     language="tiny"),
        ModelProfile("hiera-t-512-random", "SAM-2.1 Hiera-T at 512 px, seeded random weights (benchmarks)",
                     Sam2Spec("sam2.1-hiera-t", image_size=512), True, object_score_bias=5.0),
        ModelProfile("hiera-l-1024-random", "SAM-2 Hiera-L at 1024 px with VRS-HQ's overrides, random weights",
                     Sam2Spec("sam2-hiera-l", image_size=1024, resize="pad", vrshq=True), True,
                     object_score_bias=5.0),
        ModelProfile("vrshq-7b-random", "VRS-HQ-7B's architecture (SAM-2 Hiera-L, CLIP-224, LLaMA-7B, "
                     "CLIP-336) with random weights (benchmarks)",
                     Sam2Spec("sam2-hiera-l", image_size=1024, resize="pad", vrshq=True), True,
                     object_score_bias=5.0, language="vrshq-7b-random"),
        ModelProfile("vrshq-7b", "the released VRS-HQ-7B (SAM-2 Hiera-L, CLIP-224, Chat-UniVi-7B) from "
                     "vrshq_checkpoint, CLIP-336 anchor from clip_anchor",
                     Sam2Spec("sam2-hiera-l", image_size=1024, resize="pad", vrshq=True), False,
                     language="vrshq-checkpoint"),
        *(ModelProfile(f"sam2.1-hiera-{size}", f"SAM-2.1 Hiera-{size.upper()} at 1024 px from a checkpoint",
                       Sam2Spec(f"sam2.1-hiera-{size}", image_size=1024), False)
          for size in ("t", "s", "b+", "l")),
        *(ModelProfile(f"sam2.1-hiera-{size}-random", f"SAM-2.1 Hiera-{size.upper()} at 1024 px, seeded random "
                       "weights (benchmarks, bench/device_check.py)",
                       Sam2Spec(f"sam2.1-hiera-{size}", image_size=1024), True, object_score_bias=5.0)
          for size in ("t", "s", "b+", "l")),
    )
}


def get_profile(name: str) -> ModelProfile:
    """Look a profile up by name (ValueError listing the known names otherwise)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown model profile {name!r}; known profiles: {sorted(PROFILES)}") from None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other string is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def build_sam2_for_profile(profile: ModelProfile, device: str | torch.device = "cpu",
                           image_size: int | None = None, sam2_checkpoint: str | None = None,
                           seed: int = 0) -> tuple[torch.nn.Module, SamImageTransform]:
    """Build the profile's SAM-2 model (eval mode, on ``device``) and the matching image transform.

    ``image_size`` overrides the profile's input resolution (multiple of 32); checkpoint profiles
    require ``sam2_checkpoint``, random profiles refuse one (they would silently stop being random).
    """
    spec = profile.sam2
    if image_size is not None:
        spec = dataclasses.replace(spec, image_size=image_size)
    if profile.random_weights and sam2_checkpoint:
        raise ValueError(f"profile {profile.name!r} uses random weights; choose a checkpoint profile "
                         f"({', '.join(n for n, p in PROFILES.items() if not p.random_weights)})")
    if not profile.random_weights:
        if not sam2_checkpoint:
            raise ValueError(f"profile {profile.name!r} needs a SAM-2 checkpoint file (sam2_checkpoint)")
        spec = dataclasses.replace(spec, checkpoint=sam2_checkpoint)
    model = build_sam2_model(spec, device=device, seed=seed)
    if profile.object_score_bias:
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += profile.object_score_bias
    return model, SamImageTransform(spec.image_size, spec.resize)


@dataclass(frozen=True)
class GroundingModels:
    """What a grounding query needs besides the tracker; ``special_ids`` are the tokenizer's
    ``[SEG]``/``[TAK]`` ids, looked up once where it was loaded."""

    mllm: torch.nn.Module
    tokenizer: object
    anchor_scorer: ClipAnchorScorer
    special_ids: SpecialTokenIds


def build_grounding_models(profile: ModelProfile, device: str | torch.device = "cpu",
                           seed: int = 0, precision: str = "auto") -> GroundingModels:
    """The profile's random-weight grounding models (``language`` "tiny" or "vrshq-7b-random"):
    the MLLM's weights and the CLIP anchor scorer in ``precision`` (:func:`resolve_precision`)."""
    device = torch.device(device)
    name = resolve_precision_name(precision, device)
    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    if profile.language == "tiny":
        mllm = VrshqMLLM(tiny_config(len(tokenizer)))
        anchor = ClipAnchorScorer.tiny(seed=seed, device=device, precision=name)
    elif profile.language == "vrshq-7b-random":
        with device:  # initialised where it runs: on a GPU in seconds, where the CPU takes minutes
            mllm = VrshqMLLM(vrshq_7b_config(vocab_size=len(tokenizer)))
        anchor = ClipAnchorScorer.from_pretrained(VRSHQ_ANCHOR_MODEL, pretrained=None, device=device, precision=name)
    else:
        raise ValueError(f"profile {profile.name!r} has no random-weight language models "
                         f"(language={profile.language!r})")
    mllm = mllm.to(device=device, dtype=PRECISIONS[name]).eval()
    return GroundingModels(mllm, tokenizer, anchor, special_token_ids(tokenizer))


@dataclass(frozen=True)
class LoadedModels:
    """Everything a node or tool runs: SAM-2 and its image transform (both None when only the
    reasoner's part was loaded, ``parts="reasoner"``), the grounding models (None for a profile
    without language, or ``parts="tracker"``), the ``StreamingTracker`` options -- those of its
    SAM-2's reference predictor (:meth:`Sam2Spec.tracker_options`) and of the precision
    (:func:`tracker_precision_options`); ``{}`` without SAM-2 -- and ``precision``, the resolved
    :data:`PRECISIONS` name (``"fp32"`` or ``"bf16"``) the models run in, ``reasoner_quantization``
    the MLLM's (:data:`~vrs_node.models.quantize.QUANTIZATION_MODES`) and ``compiled`` whether
    SAM-2's parts are compiled."""

    sam2: torch.nn.Module | None
    transform: SamImageTransform | None
    grounding: GroundingModels | None
    tracker_options: dict
    precision: str
    reasoner_quantization: str = "none"
    compiled: bool = False

    def to(self, device: str | torch.device) -> None:
        """Move every model's weights to ``device`` in place (dtypes kept), e.g. to host memory
        while a lifecycle node is inactive and back when it is activated again; a quantized MLLM
        moves with its quantization statistics (:func:`~vrs_node.models.quantize.move_reasoner`).
        The models not loaded (None) are skipped."""
        if self.sam2 is not None:
            self.sam2.to(device)
        if self.grounding is not None:
            move_reasoner(self.grounding.mllm, device)
            self.grounding.anchor_scorer.model.to(device)


def release_accelerator_memory(device: str | torch.device) -> None:
    """Collect unreferenced tensors and return the allocator's cached blocks on ``device`` to the
    driver (CUDA's caching allocator keeps freed memory otherwise); nothing to do on CPU."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


MODEL_PARTS = CHECKPOINT_PARTS
"""What :func:`load_models` loads (its ``parts``, a VRS-HQ checkpoint's choices): every model of
the profile; SAM-2 only (a tracker whose reasoner runs elsewhere); or the grounding models only
(MLLM, tokenizer, CLIP anchor scorer: the ``vrs-reasoner`` node)."""


def load_models(profile: ModelProfile, device: str | torch.device = "cpu", image_size: int | None = None,
                sam2_checkpoint: str | None = None, vrshq_checkpoint: str | None = None,
                clip_anchor: str = "openai", seed: int = 0, precision: str = "auto", compile: bool = False,
                reasoner_quantization: str = "none", parts: str = "all") -> LoadedModels:
    """Build or load the models of ``profile`` that ``parts`` names (:data:`MODEL_PARTS`) on
    ``device`` in ``precision`` (``"fp32"``, ``"bf16"`` or ``"auto"``: :mod:`vrs_node.models.precision`
    says what each model does in it).

    ``parts``: ``"all"`` (every model of the profile); ``"tracker"``: SAM-2 only, no grounding
    model is built or loaded (``grounding`` None, even for a profile with language; ``clip_anchor``
    unused); ``"reasoner"``: the grounding models only (``sam2``, ``transform`` None,
    ``tracker_options`` ``{}``), refused for a profile without language; SAM-2's settings
    (``image_size``, ``sam2_checkpoint``, ``compile``) are then ignored (``compiled`` False). A
    given random seed builds the same weights for a model whatever ``parts`` is. Anything else
    than :data:`MODEL_PARTS` is a ValueError.

    ``vrshq_checkpoint`` (a directory in the released VRS-HQ layout) is required by, and only
    accepted for, ``language="vrshq-checkpoint"`` profiles; it provides SAM-2, the MLLM and the
    tokenizer. ``clip_anchor`` is open_clip's ``pretrained`` for the CLIP-336 anchor scorer there.
    :func:`~vrs_node.models.vrshq_checkpoint.load_vrshq_checkpoint` then loads only ``parts``:
    ``"tracker"`` builds no MLLM and needs no CLIP-224 tower or tokenizer, ``"reasoner"`` builds no
    SAM-2.

    ``compile``: SAM-2's parts are compiled in place (:func:`~vrs_node.models.sam2_compile.compile_sam2`:
    sam2's ``max-autotune`` on CUDA, inductor's default mode elsewhere); the first frames of each
    new shape then take the compile time. ``reasoner_quantization`` (``"none"``, ``"int8"``,
    ``"nf4"``: :mod:`vrs_node.models.quantize`): the MLLM is built or loaded in host memory and
    its LLaMA quantized onto ``device`` layer by layer, so the unquantized LLM never occupies the
    device; refused (before anything is built) for a profile without an MLLM, for
    ``parts="tracker"`` (no MLLM is loaded) or a device it cannot run on.
    """
    device = torch.device(device)
    name = resolve_precision_name(precision, device)
    check_supported(reasoner_quantization, device)
    _check_parts(profile, parts, reasoner_quantization)
    build_on = device if reasoner_quantization == "none" else torch.device("cpu")
    if profile.language != "vrshq-checkpoint":
        if vrshq_checkpoint:
            raise ValueError(f"profile {profile.name!r} does not load a VRS-HQ checkpoint; use profile 'vrshq-7b'")
        sam2, transform = (build_sam2_for_profile(profile, device, image_size, sam2_checkpoint, seed)
                           if parts != "reasoner" else (None, None))
        grounding = (build_grounding_models(profile, build_on, seed, name)
                     if profile.language and parts != "tracker" else None)
        spec = profile.sam2
    else:
        sam2, transform, grounding, spec = _load_checkpoint_parts(profile, vrshq_checkpoint, parts, device, build_on,
                                                                  name, image_size, clip_anchor)
    tracker_options = {**spec.tracker_options(), **tracker_precision_options(name, device)} if sam2 is not None else {}
    if reasoner_quantization != "none":
        quantize_reasoner(grounding.mllm, reasoner_quantization, device)
        grounding.anchor_scorer.model.to(device)
    compiled = compile and sam2 is not None
    if compiled:
        compile_sam2(sam2, mode=DEFAULT_COMPILE_MODE if device.type == "cuda" else "default")
    return LoadedModels(sam2, transform, grounding, tracker_options, name, reasoner_quantization, compiled)


def _check_parts(profile: ModelProfile, parts: str, reasoner_quantization: str) -> None:
    """ValueError, before anything is built, for ``parts`` not in :data:`MODEL_PARTS`, the reasoner's
    part of a profile without one, or a reasoner quantization with no reasoner loaded."""
    if reasoner_quantization != "none" and not profile.language:
        raise ValueError(f"profile {profile.name!r} has no reasoner (MLLM) to quantize "
                         f"(reasoner_quantization={reasoner_quantization!r})")
    if parts not in MODEL_PARTS:
        raise ValueError(f"unknown model parts {parts!r}; choose one of {', '.join(MODEL_PARTS)}")
    if parts == "reasoner" and not profile.language:
        raise ValueError(f"profile {profile.name!r} has no reasoner (MLLM): parts='reasoner' needs a profile with "
                         f"language models ({', '.join(n for n, p in PROFILES.items() if p.language)})")
    if parts == "tracker" and reasoner_quantization != "none":
        raise ValueError(f"parts='tracker' loads no reasoner (MLLM) to quantize "
                         f"(reasoner_quantization={reasoner_quantization!r}); use 'none'")


def _load_checkpoint_parts(profile: ModelProfile, vrshq_checkpoint: str | None, parts: str, device: torch.device,
                           build_on: torch.device, precision: str, image_size: int | None,
                           clip_anchor: str) -> tuple[torch.nn.Module | None, SamImageTransform | None,
                                                      GroundingModels | None, Sam2Spec]:
    """(SAM-2, its transform, grounding models, SAM-2's spec) of a ``vrshq-checkpoint`` profile's
    ``parts`` (:func:`load_models`; None for a part not loaded); the spec is the one recognised from
    the weights."""
    if not vrshq_checkpoint:
        raise ValueError(f"profile {profile.name!r} needs vrshq_checkpoint: the directory of the released "
                         f"VRS-HQ weights (Hugging Face {HF_REPO})")
    # SAM-2 is built on device; the MLLM on build_on (the host when it is then quantized onto device)
    ckpt = load_vrshq_checkpoint(vrshq_checkpoint, device=device if parts == "tracker" else build_on,
                                 dtype=PRECISIONS[precision], sam2_image_size=image_size, parts=parts)
    spec = ckpt.sam2_spec
    sam2, transform, grounding = None, None, None
    if parts != "reasoner":
        sam2, transform = ckpt.sam2_model.to(device), SamImageTransform(spec.image_size, spec.resize)
    if parts != "tracker":
        anchor = ClipAnchorScorer.from_pretrained(VRSHQ_ANCHOR_MODEL, clip_anchor, device=build_on, precision=precision)
        grounding = GroundingModels(ckpt.mllm, ckpt.tokenizer, anchor, ckpt.special_ids)
    return sam2, transform, grounding, spec


def load_configured_models(config: ModelConfig, parts: str = "all") -> tuple[ModelProfile, torch.device, LoadedModels]:
    """(profile, device, models) of ``config`` (:func:`load_models` with its settings; ``""`` and 0
    mean "not given") and ``parts`` (:data:`MODEL_PARTS`, chosen by the caller, not a setting):
    what the nodes and ``vrs-replay`` load."""
    profile = get_profile(config.model_profile)
    device = resolve_device(config.device)
    models = load_models(profile, device, image_size=config.image_size or None,
                         sam2_checkpoint=config.sam2_checkpoint or None,
                         vrshq_checkpoint=config.vrshq_checkpoint or None, clip_anchor=config.clip_anchor,
                         precision=config.precision, compile=config.compile,
                         reasoner_quantization=config.reasoner_quantization, parts=parts)
    return profile, device, models
