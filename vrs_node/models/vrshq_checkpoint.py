"""Load the released VRS-HQ checkpoint (Hugging Face ``SitongGong/VRS-HQ``) from its directory, unchanged.

Layout (REFERENCE_VRSHQ_VIDEOLISA.md §3; written by ``transformers`` 4.31 ``save_pretrained``):
``config.json``, ``generation_config.json``, ``pytorch_model-0000K-of-0000N.bin`` shards with
``pytorch_model.bin.index.json`` (or one ``pytorch_model.bin``), ``tokenizer.model``,
``tokenizer_config.json``, ``special_tokens_map.json``, ``added_tokens.json``.

Contract of :func:`load_vrshq_checkpoint`:

- weight files are read with ``torch.load(map_location="cpu", weights_only=True, mmap=True)``:
  no pickle code runs, and tensors stay file-backed until they are cast or moved. A missing,
  truncated or non-weights-only file raises an error naming it; a shard must hold exactly the keys
  the index assigns to it;
- every key is routed (:data:`~vrs_node.models.vrshq_weights.ROUTES`) or deliberately dropped
  (:func:`~vrs_node.models.vrshq_weights.dropped_key`); an unknown key and a missing parameter are
  both errors (with examples), so nothing is silently ignored;
- ``config.json`` gives the :class:`MllmConfig`
  (:func:`~vrs_node.models.vrshq_files.mllm_config_from_json`); the CLIP-224 tower named by its
  ``mm_vision_tower`` (else ``vision_tower``) is found by
  :func:`~vrs_node.models.vrshq_files.resolve_vision_tower` (relative to the checkpoint directory,
  absolute, or a hub id in the local Hugging Face cache; the ``vision_tower`` argument overrides
  it); its ``config.json`` gives the sizes and its ``preprocessor_config.json`` the CLIP-224
  pre-processing. A tower that cannot be found is an error naming the field and every place
  searched;
- like the reference (``initialize_vision_modules``), the CLIP-224 weights are *reloaded* from the
  tower's directory when it holds any; the checkpoint's ``model.vision_tower.*`` copy (bfloat16)
  is used only when it does not. The two differ by the bfloat16 rounding;
- the SAM-2 architecture is recognised from the weights (:mod:`vrs_node.models.sam2_variant`)
  unless ``sam2_spec`` is given;
- ``parts`` (:data:`CHECKPOINT_PARTS`) loads both models (``"all"``), SAM-2 only (``"tracker"``: no
  tokenizer, vision tower or MLLM is needed or read beyond the weight files' keys, so a tracker
  whose reasoner runs elsewhere needs no CLIP-224 tower) or the MLLM only (``"reasoner"``: SAM-2 is
  not built); the part not loaded is routed but not checked key by key against its model;
- reference quirk reproduced (``reference_quirks=True``, the default): transformers 4.31's
  ``from_pretrained`` renames every key containing ``gamma`` (``beta``) to ``weight`` (``bias``), so
  such tensors (SAM-2's CXBlock layer scales ``memory_encoder.fuser.layers.*.gamma``) are never
  loaded under their name; with ``low_cpu_mem_usage=True`` 4.31 leaves them ``torch.empty``
  (uninitialised memory) unless they lie in ``pytorch_model-00002-of-00002.bin``, which the
  reference's evaluation reloads with ``strict=False``
  (:func:`~vrs_node.models.vrshq_weights.renamed_by_reference`). Here such tensors are set to NaN,
  the deterministic stand-in for uninitialised memory, with a warning: SAM-2's memory is then NaN
  and every tracked frame is empty, as in the shared tiny golden (its gammas lie in shard 1). The
  released 7B checkpoint holds them in shard 2 and is unaffected;
  ``reference_quirks=False`` loads them from the file;
- ``[SEG]``/``[TAK]`` are looked up by name in the tokenizer, once (``VrshqCheckpoint.special_ids``),
  and must equal ``added_tokens.json``'s ids and lie below ``vocab_size``;
- the MLLM is cast to ``dtype`` (default: bfloat16 on CUDA, float32 on CPU, as released it is
  bfloat16); SAM-2 stays float32 (the tracker feeds it float32 images; the bfloat16 values are
  held exactly).

Reading the files is :mod:`vrs_node.models.vrshq_files`'s; where each key goes, and the quirk,
:mod:`vrs_node.models.vrshq_weights`'s.

Memory (the real model: 6.9B MLLM parameters + 0.13B dropped ``lm_head`` + 0.22B SAM-2):
``VrshqMLLM`` is constructed under ``torch.device("meta")`` (no storage, no random init), then
``load_state_dict(strict=True, assign=True)`` installs the checkpoint tensors themselves, each cast
to (``device``, ``dtype``) one at a time; with ``dtype=torch.bfloat16`` on CPU no copy is made at
all (the parameters stay mapped from the files). Peak memory is therefore the final model plus
page cache, never a float32 7B copy next to it. The only tensors not in the checkpoint are
non-persistent buffers, rebuilt on ``device`` the way their constructors build them (LLaMA's rotary
``inv_freq``/``original_inv_freq`` in float32, CLIP's ``position_ids``); any tensor left on the meta
device is an error. SAM-2 (0.22B) is built normally by
:func:`~vrs_node.models.sam2_build.build_sam2_model` (its random init costs
seconds, not memory) and the weights are copied into it strictly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vrs_node.models.clip_preprocess import ClipPreprocessor
from vrs_node.models.mllm import SpecialTokenIds, VrshqMLLM
from vrs_node.models.precision import resolve_precision
from vrs_node.models.sam2_build import Sam2Spec, build_sam2_model
from vrs_node.models.sam2_variant import infer_sam2_spec
from vrs_node.models.tokenizer import HF_REPO, load_vrshq_tokenizer
from vrs_node.models.vrshq_files import (CLIP_L14_224, EXPECTED_FILES, CheckpointError, checked_special_ids,
                                         key_examples, mllm_config_from_json, read_json, read_state,
                                         resolve_vision_tower)
from vrs_node.models.vrshq_weights import (VISION_PREFIX, leave_unloaded_nan, rebuild_buffers, route_state,
                                           tower_weights)


CHECKPOINT_PARTS = ("all", "tracker", "reasoner")
"""What :func:`load_vrshq_checkpoint` loads: both models, SAM-2 only, or the MLLM (with its
tokenizer) only."""


@dataclass(frozen=True)
class VrshqCheckpoint:
    """A loaded release: models in eval mode without gradients, on the requested device.

    ``special_ids`` are the tokenizer's ``[SEG]``/``[TAK]`` ids, checked against
    ``added_tokens.json``; ``consumed_keys`` counts the checkpoint keys used or deliberately dropped
    (all of them); ``vision_weights`` says where the CLIP-224 weights came from (the tower
    directory, or ``"checkpoint"``); ``sam2_spec`` is the SAM-2 architecture the weights were
    loaded into and ``sam2_variant`` its name (``"given"`` when the caller chose it). A part not
    loaded (``parts``) is None: ``mllm``, ``tokenizer`` and ``special_ids`` for ``"tracker"``
    (``vision_weights`` ``""``), ``sam2_model`` for ``"reasoner"``.
    """

    mllm: VrshqMLLM | None
    sam2_model: torch.nn.Module | None
    tokenizer: Any
    special_ids: SpecialTokenIds | None
    config_json: dict
    consumed_keys: int
    vision_weights: str
    sam2_spec: Sam2Spec
    sam2_variant: str


def load_vrshq_checkpoint(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                          sam2_spec: Sam2Spec | None = None, vision_tower: str | Path | None = None,
                          sam2_image_size: int | None = None, reference_quirks: bool = True,
                          parts: str = "all") -> VrshqCheckpoint:
    """Load the released VRS-HQ directory ``path`` (see the module docstring for the contract).

    ``sam2_spec`` is the SAM-2 architecture the ``model.visual_model.*`` weights are loaded into
    (strictly; its ``checkpoint`` must be None: the weights come from here); None recognises it
    from the weights. ``sam2_image_size`` overrides that spec's input size (the weights do not
    depend on it). ``vision_tower`` overrides config.json's CLIP-224 location. ``reference_quirks``
    reproduces transformers 4.31's never-loaded ``*gamma`` tensors (module docstring). ``parts``:
    :data:`CHECKPOINT_PARTS` (ValueError otherwise).
    """
    directory = Path(path)
    if not directory.is_dir() or not (directory / "config.json").is_file():
        raise FileNotFoundError(f"no VRS-HQ checkpoint at {directory}: expected a directory with "
                                f"{', '.join(EXPECTED_FILES)} (download Hugging Face {HF_REPO})")
    if sam2_spec is not None and sam2_spec.checkpoint is not None:
        raise ValueError("sam2_spec.checkpoint must be None: SAM-2's weights come from the VRS-HQ checkpoint")
    if parts not in CHECKPOINT_PARTS:
        raise ValueError(f"unknown checkpoint parts {parts!r}; choose one of {', '.join(CHECKPOINT_PARTS)}")
    device = torch.device(device)
    if dtype is None:
        dtype = resolve_precision("auto", device)
    config_json = read_json(directory / "config.json")
    state, shard_of = read_state(directory)
    routed, released_name, unknown = route_state(state)
    sam2_variant, sam2_spec = _sam2_spec(directory, routed["sam2"], sam2_spec, sam2_image_size)
    models: dict[str, torch.nn.Module] = {}
    tokenizer, special_ids, vision_weights = None, None, ""
    if parts != "tracker":
        vision_dir = resolve_vision_tower(config_json, directory, vision_tower)
        mllm_config = mllm_config_from_json(config_json, vision_dir)
        tokenizer = load_vrshq_tokenizer(directory)
        special_ids = checked_special_ids(directory, tokenizer, mllm_config.llm.vocab_size)
        with torch.device("meta"):
            models["mllm"] = VrshqMLLM(mllm_config,
                                       ClipPreprocessor.from_pretrained(vision_dir, mllm_config.vision.image_size))
    if parts != "reasoner":
        models["sam2"] = build_sam2_model(sam2_spec, device=device, seed=None)
    expected = {part: set(model.state_dict()) for part, model in models.items()}
    for part in expected:
        unknown += [released_name[part, k] for k in routed[part] if k not in expected[part]]
    if unknown:
        raise CheckpointError(f"{len(unknown)} checkpoint keys have no place in VRS-HQ: {key_examples(unknown)}")
    routed = {part: routed[part] for part in expected}
    if "mllm" in routed:
        vision_weights = _add_vision_weights(routed["mllm"], vision_dir, dtype)
    if reference_quirks and "sam2" in routed:
        leave_unloaded_nan(routed["sam2"], released_name, shard_of)
    _install(directory, routed, expected, models, device, dtype)
    return VrshqCheckpoint(models.get("mllm"), models.get("sam2"), tokenizer, special_ids, config_json, len(state),
                           vision_weights, sam2_spec, sam2_variant)


def _sam2_spec(directory: Path, sam2_part: dict[str, torch.Tensor], given: Sam2Spec | None,
               image_size: int | None) -> tuple[str, Sam2Spec]:
    """(variant name, spec) of the SAM-2 weights: ``given`` ("given"), else recognised from them;
    ``image_size`` (when not None) replaces its input size."""
    variant, spec = "given", given
    if spec is None:
        try:
            variant, spec = infer_sam2_spec(sam2_part)
        except ValueError as err:
            raise CheckpointError(f"{directory}: {err}") from None
    if image_size is not None:
        spec = dataclasses.replace(spec, image_size=image_size)
    return variant, spec


def _add_vision_weights(mllm_part: dict[str, torch.Tensor], vision_dir: Path, dtype: torch.dtype) -> str:
    """Put the CLIP-224 weights the reference uses into ``mllm_part``: reloaded from the tower's
    directory (they replace the checkpoint's copy), or the checkpoint's copy when the directory
    holds none. Returns where they came from (the directory, or ``"checkpoint"``)."""
    tower = tower_weights(vision_dir, dtype)
    checkpoint_has_clip = any(k.startswith(VISION_PREFIX) for k in mllm_part)
    if tower is None and not checkpoint_has_clip:
        raise FileNotFoundError(f"the checkpoint has no vision-tower weights and none were found locally at "
                                f"{vision_dir}: pass vision_tower=<local copy of {CLIP_L14_224}>")
    mllm_part.update(tower or {})
    return "checkpoint" if tower is None else str(vision_dir)


def _install(directory: Path, parts: dict[str, dict[str, torch.Tensor]], expected: dict[str, set[str]],
             models: dict[str, torch.nn.Module], device: torch.device, dtype: torch.dtype) -> None:
    """For each loaded part of ``models`` (``"mllm"``, ``"sam2"``): every expected parameter
    present, then the MLLM's tensors assigned (each cast to ``device``, ``dtype``) and its buffers
    rebuilt, SAM-2's copied; each model to eval without gradients."""
    for part in parts:
        missing = expected[part] - set(parts[part])
        if missing:
            raise CheckpointError(f"the checkpoint lacks {len(missing)} {part} parameters: {key_examples(missing)}")
    try:
        if "mllm" in models:
            models["mllm"].load_state_dict({k: v.to(device, dtype) for k, v in parts["mllm"].items()}, strict=True,
                                           assign=True)
        if "sam2" in models:
            models["sam2"].load_state_dict(parts["sam2"], strict=True)
    except RuntimeError as err:  # shapes: config.json or sam2_spec disagree with the weights
        raise CheckpointError(f"{directory}: weights do not fit the configured architecture: {err}") from err
    if "mllm" in models:
        rebuild_buffers(models["mllm"], device)
    for model in models.values():
        model.eval().requires_grad_(False)
