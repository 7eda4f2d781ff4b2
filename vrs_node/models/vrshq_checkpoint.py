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
- every key is routed (:data:`ROUTES`) or deliberately dropped (:func:`dropped_key`); an unknown key
  and a missing parameter are both errors (with examples), so nothing is silently ignored;
- ``config.json`` gives the :class:`MllmConfig` (:func:`mllm_config_from_json`); the CLIP-224 tower
  named by its ``mm_vision_tower`` (else ``vision_tower``) is found by :func:`resolve_vision_tower`
  (relative to the checkpoint directory, absolute, or a hub id in the local Hugging Face cache;
  the ``vision_tower`` argument overrides it); its ``config.json`` gives the sizes and its
  ``preprocessor_config.json`` the CLIP-224 pre-processing. A tower that cannot be found is an
  error naming the field and every place searched;
- like the reference (``initialize_vision_modules``), the CLIP-224 weights are *reloaded* from the
  tower's directory when it holds any; the checkpoint's ``model.vision_tower.*`` copy (bfloat16)
  is used only when it does not. The two differ by the bfloat16 rounding;
- the SAM-2 architecture is recognised from the weights (:mod:`vrs_node.models.sam2_variant`)
  unless ``sam2_spec`` is given;
- reference quirk reproduced (``reference_quirks=True``, the default): transformers 4.31's
  ``from_pretrained`` renames every key containing ``gamma`` (``beta``) to ``weight`` (``bias``), so
  such tensors (SAM-2's CXBlock layer scales ``memory_encoder.fuser.layers.*.gamma``) are never
  loaded under their name; with ``low_cpu_mem_usage=True`` 4.31 leaves them ``torch.empty``
  (uninitialised memory) unless they lie in ``pytorch_model-00002-of-00002.bin``, which the
  reference's evaluation reloads with ``strict=False`` (:func:`renamed_by_reference`). Here such
  tensors are set to NaN, the deterministic stand-in for uninitialised memory, with a warning: SAM-2's
  memory is then NaN and every tracked frame is empty, as in the shared tiny golden (its gammas lie
  in shard 1). The released 7B checkpoint holds them in shard 2 and is unaffected;
  ``reference_quirks=False`` loads them from the file;
- ``[SEG]``/``[TAK]`` are looked up by name in the tokenizer and must equal ``added_tokens.json``'s
  ids and lie below ``vocab_size``;
- the MLLM is cast to ``dtype`` (default: bfloat16 on CUDA, float32 on CPU, as released it is
  bfloat16); SAM-2 stays float32 (the tracker feeds it float32 images; the bfloat16 values are
  held exactly).

Memory (the real model: 6.9B MLLM parameters + 0.13B dropped ``lm_head`` + 0.22B SAM-2):
``VrshqMLLM`` is constructed under ``torch.device("meta")`` (no storage, no random init), then
``load_state_dict(strict=True, assign=True)`` installs the checkpoint tensors themselves, each cast
to (``device``, ``dtype``) one at a time; with ``dtype=torch.bfloat16`` on CPU no copy is made at
all (the parameters stay mapped from the files). Peak memory is therefore the final model plus
page cache, never a float32 7B copy next to it. The only tensors not in the checkpoint are
non-persistent buffers, rebuilt on ``device`` the way their constructors build them (LLaMA's rotary
``inv_freq``/``original_inv_freq`` in float32, CLIP's ``position_ids``); any tensor left on the meta
device is an error. SAM-2 (0.22B) is built normally by :func:`build_sam2_model` (its random init costs
seconds, not memory) and the weights are copied into it strictly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig

from vrs_node.models.clip_preprocess import ClipPreprocessor
from vrs_node.models.mllm import ATTENTION, MllmConfig, VrshqMLLM, special_token_ids
from vrs_node.models.precision import resolve_precision
from vrs_node.models.prompt import SEG_TOKEN, TAK_TOKEN
from vrs_node.models.sam2_build import Sam2Spec, build_sam2_model
from vrs_node.models.sam2_variant import infer_sam2_spec
from vrs_node.models.tokenizer import HF_REPO, load_vrshq_tokenizer

log = logging.getLogger(__name__)

CLIP_L14_224 = "openai/clip-vit-large-patch14"
INDEX_FILE = "pytorch_model.bin.index.json"
SINGLE_FILE = "pytorch_model.bin"
EXPECTED_FILES = ("config.json", "generation_config.json", INDEX_FILE + " + pytorch_model-0000K-of-0000N.bin "
                  "(or " + SINGLE_FILE + ")", "tokenizer.model", "tokenizer_config.json",
                  "special_tokens_map.json", "added_tokens.json")
RELOADED_SHARD = "pytorch_model-00002-of-00002.bin"
"""The shard the reference's evaluation reloads with ``strict=False`` after ``from_pretrained``."""

ROUTES = (
    ("model.embed_tokens.", "mllm", "llm.embed_tokens."),
    ("model.layers.", "mllm", "llm.layers."),
    ("model.norm.", "mllm", "llm.norm."),
    ("model.mm_projector.", "mllm", "mm_projector."),
    ("model.text_hidden_fcs.0.", "mllm", "text_hidden_fcs."),
    # transformers 5's CLIPVisionModel has no ``vision_model.`` level (its keys are embeddings.*, ...).
    ("model.vision_tower.vision_tower.vision_model.", "mllm", "vision_tower."),
    ("model.visual_model.", "sam2", ""),
)
"""(released key prefix, part, prefix in that part's ``state_dict``)."""

DROPPED_KEYS = re.compile(
    r"lm_head\.weight"  # the LM head: one prefill reads hidden states, never next-token logits
    r"|model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"  # buffers older transformers saved;
    r"|model\.vision_tower\.vision_tower\.vision_model\.embeddings\.position_ids")  # recomputed here
VISION_PREFIX = "vision_tower."

LLAMA_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "rms_norm_eps",
                "max_position_embeddings", "vocab_size")
MM_FIELDS = ("mm_hidden_size", "mm_vision_select_layer", "out_dim")


class CheckpointError(ValueError):
    """The directory holds something other than the released VRS-HQ checkpoint (or a damaged one)."""


@dataclass(frozen=True)
class VrshqCheckpoint:
    """A loaded release: models in eval mode without gradients, on the requested device.

    ``consumed_keys`` counts the checkpoint keys used or deliberately dropped (all of them);
    ``vision_weights`` says where the CLIP-224 weights came from (the tower directory, or
    ``"checkpoint"``); ``sam2_spec`` is the SAM-2 architecture the weights were loaded into and
    ``sam2_variant`` its name (``"given"`` when the caller chose it).
    """

    mllm: VrshqMLLM
    sam2_model: torch.nn.Module
    tokenizer: Any
    seg_id: int
    tak_id: int
    config_json: dict
    consumed_keys: int
    vision_weights: str
    sam2_spec: Sam2Spec
    sam2_variant: str


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; :class:`CheckpointError` naming the file if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def resolve_vision_tower(config: dict, checkpoint_dir: Path, vision_tower: str | Path | None = None) -> Path:
    """The local directory of the CLIP-224 vision tower (it holds a ``config.json``).

    The name is ``vision_tower`` when given (a path relative to the working directory, an absolute
    path or a hub id), else config.json's ``mm_vision_tower``, else its ``vision_tower`` (the order
    the reference's ``build_vision_tower`` reads them in; a relative path there is relative to
    ``checkpoint_dir``). A name of the form ``owner/repo`` that is no directory is looked up in the
    local Hugging Face cache (offline). Raises FileNotFoundError naming the field and every place
    searched.
    """
    if vision_tower is not None:
        field, name, base = "the vision_tower argument", str(vision_tower), Path.cwd()
    else:
        field = next((f for f in ("mm_vision_tower", "vision_tower") if config.get(f)), None)
        if field is None:
            raise CheckpointError(f"{checkpoint_dir / 'config.json'} names no vision tower "
                                  "(mm_vision_tower / vision_tower)")
        field, name, base = f"config.json's {field}", str(config[field]), checkpoint_dir
    path = Path(name).expanduser()
    candidate = path if path.is_absolute() else base / path
    searched = [str(candidate)]
    if (candidate / "config.json").is_file():
        return candidate
    if not path.is_absolute() and len(path.parts) == 2:  # owner/repo: a hub id
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return Path(cached).parent
        searched.append(f"the Hugging Face cache {HF_HUB_CACHE} for {name}")
    raise FileNotFoundError(f"{field} = {name!r}: no CLIP-224 vision tower (a directory with config.json) at "
                            f"{' or '.join(searched)}; pass vision_tower=<local copy of {CLIP_L14_224}> "
                            "(the released config.json names the authors' own path)")


def mllm_config_from_json(config: dict, vision_dir: Path) -> MllmConfig:
    """:class:`MllmConfig` from a VRS-HQ ``config.json`` (ChatUniVi: LLaMA fields + mm fields) and
    the vision tower's directory (its ``config.json``: a full ``CLIPModel`` config or a vision-only
    one). ``num_key_value_heads`` defaults to the head count; ``rope_theta`` and ``hidden_act`` are
    used when present; RoPE scaling is refused. Both configs get ``attn_implementation`` =
    :data:`~vrs_node.models.mllm.ATTENTION` (SDPA).
    """
    if config.get("model_type") != "ChatUniVi":
        raise CheckpointError(f"config.json has model_type {config.get('model_type')!r}, expected 'ChatUniVi': "
                              f"not a VRS-HQ checkpoint ({HF_REPO})")
    missing = [f for f in LLAMA_FIELDS + MM_FIELDS if f not in config]
    if missing:
        raise CheckpointError(f"config.json lacks {missing}")
    if config.get("rope_scaling"):
        raise CheckpointError(f"config.json sets rope_scaling={config['rope_scaling']}; VRS-HQ uses plain RoPE")
    optional = {k: config[k] for k in ("rope_theta", "hidden_act") if k in config}
    llm = LlamaConfig(**{k: config[k] for k in LLAMA_FIELDS}, **optional,
                      num_key_value_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
                      attn_implementation=ATTENTION)
    read_json(vision_dir / "config.json")  # a readable error naming the file, before transformers parses it
    vision = CLIPVisionConfig.from_pretrained(vision_dir, local_files_only=True, attn_implementation=ATTENTION)
    if vision.hidden_size != config["mm_hidden_size"]:
        raise CheckpointError(f"config.json's mm_hidden_size {config['mm_hidden_size']} != the vision tower's "
                              f"hidden size {vision.hidden_size} ({vision_dir})")
    return MllmConfig(vision=vision, llm=llm, out_dim=config["out_dim"],
                      vision_select_layer=config["mm_vision_select_layer"])


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a torch weights file, safely (``weights_only=True``, memory-mapped).

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` naming the file for a
    truncated or corrupt one, one whose pickle asks for anything but tensors, or one that is not a
    ``{name: tensor}`` dict.
    """
    if not path.is_file():
        raise FileNotFoundError(f"weights file missing: {path} (download it from {HF_REPO})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refused to load {path}: not a weights-only pickle (it would build arbitrary "
                              "Python objects or run code); a released shard holds only tensors") from err
    except Exception as err:  # torch reports truncation and foreign formats as RuntimeError and others
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"cannot read {path}: truncated or not a torch weights file ({reason})") from err
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path} is not a state dict of named tensors")
    return state


def weight_files(directory: Path) -> dict[str, list[str]]:
    """Weight file name -> the keys it must hold: from the index, or the single file's own keys
    (read memory-mapped, which costs no tensor data)."""
    index = directory / INDEX_FILE
    if not index.is_file():
        single = directory / SINGLE_FILE
        if not single.is_file():
            raise FileNotFoundError(f"{directory} has neither {INDEX_FILE} nor {SINGLE_FILE}")
        return {SINGLE_FILE: list(load_weights_file(single))}
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map")
    files: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name:
            raise CheckpointError(f"{index} maps {key!r} to {name!r}, not a file name in the directory")
        files.setdefault(name, []).append(key)
    return files


def dropped_key(key: str) -> bool:
    """True for checkpoint keys consumed without being loaded: ``lm_head.weight`` and the
    non-persistent buffers older transformers versions saved (rotary ``inv_freq``, CLIP ``position_ids``)."""
    return DROPPED_KEYS.fullmatch(key) is not None


def route_key(key: str) -> tuple[str, str] | None:
    """(part, name in the part's state dict) for a released key; None if no route matches."""
    for prefix, part, target in ROUTES:
        if key.startswith(prefix):
            return part, target + key[len(prefix):]
    return None


def _examples(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _special_ids(directory: Path, tokenizer, vocab_size: int) -> tuple[int, int]:
    """[SEG]/[TAK] ids by name, checked against added_tokens.json and vocab_size."""
    seg, tak = special_token_ids(tokenizer)
    added_path = directory / "added_tokens.json"
    if not added_path.is_file():
        raise FileNotFoundError(f"{added_path} missing (expected the files of {HF_REPO})")
    added = read_json(added_path)
    for name, token_id in ((SEG_TOKEN, seg), (TAK_TOKEN, tak)):
        if added.get(name) != token_id:
            raise CheckpointError(f"the tokenizer gives {name} id {token_id} but added_tokens.json says "
                                  f"{added.get(name)}")
        if not 0 <= token_id < vocab_size:
            raise CheckpointError(f"{name} id {token_id} is outside the embedding table (vocab_size {vocab_size})")
    return seg, tak


def renamed_by_reference(key: str) -> bool:
    """True for keys transformers 4.31's ``from_pretrained`` renames (``gamma`` -> ``weight``,
    ``beta`` -> ``bias``) and therefore never loads under their own name."""
    return "gamma" in key or "beta" in key


def _tower_weights(vision_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
    """CLIP-224 vision weights (``vision_tower.*``) from the tower's directory; None if it holds none."""
    try:
        clip = CLIPVisionModel.from_pretrained(vision_dir, local_files_only=True, dtype=dtype)
    except OSError:  # a directory with a config but no weights file
        return None
    return {VISION_PREFIX + k: v for k, v in clip.state_dict().items()}


def _rebuild_buffers(mllm: VrshqMLLM, device: torch.device) -> None:
    """Compute the non-persistent buffers (never in a checkpoint) as their constructors do."""
    mllm.llm.rotary_emb = type(mllm.llm.rotary_emb)(config=mllm.llm.config).to(device)
    embeddings = mllm.vision_tower.embeddings
    embeddings.position_ids = torch.arange(embeddings.num_positions, device=device).expand((1, -1))
    left = [n for n, t in chain(mllm.named_parameters(), mllm.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors neither in the checkpoint nor rebuilt: {_examples(left)}")


def load_vrshq_checkpoint(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                          sam2_spec: Sam2Spec | None = None, vision_tower: str | Path | None = None,
                          sam2_image_size: int | None = None, reference_quirks: bool = True) -> VrshqCheckpoint:
    """Load the released VRS-HQ directory ``path`` (see the module docstring for the contract).

    ``sam2_spec`` is the SAM-2 architecture the ``model.visual_model.*`` weights are loaded into
    (strictly; its ``checkpoint`` must be None: the weights come from here); None recognises it
    from the weights. ``sam2_image_size`` overrides that spec's input size (the weights do not
    depend on it). ``vision_tower`` overrides config.json's CLIP-224 location. ``reference_quirks``
    reproduces transformers 4.31's never-loaded ``*gamma`` tensors (module docstring).
    """
    directory = Path(path)
    if not directory.is_dir() or not (directory / "config.json").is_file():
        raise FileNotFoundError(f"no VRS-HQ checkpoint at {directory}: expected a directory with "
                                f"{', '.join(EXPECTED_FILES)} (download Hugging Face {HF_REPO})")
    if sam2_spec is not None and sam2_spec.checkpoint is not None:
        raise ValueError("sam2_spec.checkpoint must be None: SAM-2's weights come from the VRS-HQ checkpoint")
    device = torch.device(device)
    if dtype is None:
        dtype = resolve_precision("auto", device)
    config_json = read_json(directory / "config.json")
    vision_dir = resolve_vision_tower(config_json, directory, vision_tower)
    mllm_config = mllm_config_from_json(config_json, vision_dir)
    tokenizer = load_vrshq_tokenizer(directory)
    seg_id, tak_id = _special_ids(directory, tokenizer, mllm_config.llm.vocab_size)

    state: dict[str, torch.Tensor] = {}
    shard_of: dict[str, str] = {}
    for name, keys in weight_files(directory).items():
        shard = load_weights_file(directory / name)
        if set(shard) != set(keys):
            raise CheckpointError(f"{directory / name} does not hold the keys its index lists: "
                                  f"extra {_examples(set(shard) - set(keys))}; "
                                  f"absent {_examples(set(keys) - set(shard))}")
        state.update(shard)
        shard_of.update(dict.fromkeys(shard, name))

    parts: dict[str, dict[str, torch.Tensor]] = {"mllm": {}, "sam2": {}}
    released_name: dict[tuple[str, str], str] = {}
    unknown = []
    for key, tensor in state.items():
        routed = None if dropped_key(key) else route_key(key)
        if routed is not None:
            parts[routed[0]][routed[1]] = tensor
            released_name[routed] = key
        elif not dropped_key(key):
            unknown.append(key)
    sam2_variant = "given"
    if sam2_spec is None:
        try:
            sam2_variant, sam2_spec = infer_sam2_spec(parts["sam2"])
        except ValueError as err:
            raise CheckpointError(f"{directory}: {err}") from None
    if sam2_image_size is not None:
        sam2_spec = dataclasses.replace(sam2_spec, image_size=sam2_image_size)
    with torch.device("meta"):
        mllm = VrshqMLLM(mllm_config, ClipPreprocessor.from_pretrained(vision_dir, mllm_config.vision.image_size))
    sam2_model = build_sam2_model(sam2_spec, device=device, seed=None)
    expected = {"mllm": set(mllm.state_dict()), "sam2": set(sam2_model.state_dict())}
    for part in parts:
        unknown += [released_name[part, k] for k in parts[part] if k not in expected[part]]
    if unknown:
        raise CheckpointError(f"{len(unknown)} checkpoint keys have no place in VRS-HQ: {_examples(unknown)}")
    parts = {part: {k: v for k, v in tensors.items() if k in expected[part]} for part, tensors in parts.items()}

    # The reference reloads CLIP-224 from the tower's directory; the checkpoint's copy is the fallback.
    tower = _tower_weights(vision_dir, dtype)
    checkpoint_has_clip = any(k.startswith(VISION_PREFIX) for k in parts["mllm"])
    if tower is None and not checkpoint_has_clip:
        raise FileNotFoundError(f"the checkpoint has no vision-tower weights and none were found locally at "
                                f"{vision_dir}: pass vision_tower=<local copy of {CLIP_L14_224}>")
    vision_weights = "checkpoint" if tower is None else str(vision_dir)
    parts["mllm"].update(tower or {})
    # 4.31 quirk: renamed keys outside the reloaded shard are left uninitialised (NaN here).
    unloaded = [k for k in parts["sam2"]
                if renamed_by_reference(k) and shard_of[released_name["sam2", k]] != RELOADED_SHARD]
    if reference_quirks and unloaded:
        for key in unloaded:
            parts["sam2"][key] = torch.full_like(parts["sam2"][key], float("nan"))
        log.warning("as the reference (transformers 4.31) does, %s are not loaded (their keys are renamed and they "
                    "are not in %s): they are NaN, so SAM-2's memory is NaN; reference_quirks=False loads them",
                    _examples(unloaded), RELOADED_SHARD)
    for part in parts:
        missing = expected[part] - set(parts[part])
        if missing:
            raise CheckpointError(f"the checkpoint lacks {len(missing)} {part} parameters: {_examples(missing)}")

    try:
        mllm.load_state_dict({k: v.to(device, dtype) for k, v in parts["mllm"].items()}, strict=True, assign=True)
        sam2_model.load_state_dict(parts["sam2"], strict=True)
    except RuntimeError as err:  # shapes: config.json or sam2_spec disagree with the weights
        raise CheckpointError(f"{directory}: weights do not fit the configured architecture: {err}") from err
    _rebuild_buffers(mllm, device)
    for model in (mllm, sam2_model):
        model.eval().requires_grad_(False)
    return VrshqCheckpoint(mllm, sam2_model, tokenizer, seg_id, tak_id, config_json, len(state), vision_weights,
                           sam2_spec, sam2_variant)
