"""The files of the released VRS-HQ directory, read and checked (:mod:`vrs_node.models.vrshq_checkpoint`
says what the directory holds and what loading it guarantees).

- JSON files (:func:`read_json`), ``config.json`` -> :class:`MllmConfig` (:func:`mllm_config_from_json`)
  and the CLIP-224 tower's directory (:func:`resolve_vision_tower`);
- the weight files, safely (:func:`load_weights_file`: ``weights_only``, memory-mapped), from the
  index or the single file (:func:`weight_files`, :func:`read_state`);
- the tokenizer's ``[SEG]``/``[TAK]`` ids checked against ``added_tokens.json`` (:func:`checked_special_ids`).

Every refusal is a :class:`CheckpointError` (or FileNotFoundError) naming the file.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig

from vrs_node.models.json_object import read_json_object
from vrs_node.models.mllm import ATTENTION, MllmConfig, SpecialTokenIds, special_token_ids
from vrs_node.models.prompt import SEG_TOKEN, TAK_TOKEN
from vrs_node.models.tokenizer import ADDED_TOKENS_FILE, HF_REPO, TOKENIZER_FILES

CLIP_L14_224 = "openai/clip-vit-large-patch14"
INDEX_FILE = "pytorch_model.bin.index.json"
SINGLE_FILE = "pytorch_model.bin"
EXPECTED_FILES = ("config.json", "generation_config.json", INDEX_FILE + " + pytorch_model-0000K-of-0000N.bin "
                  "(or " + SINGLE_FILE + ")", *TOKENIZER_FILES)
LLAMA_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "rms_norm_eps",
                "max_position_embeddings", "vocab_size")
MM_FIELDS = ("mm_hidden_size", "mm_vision_select_layer", "out_dim")


class CheckpointError(ValueError):
    """The directory holds something other than the released VRS-HQ checkpoint (or a damaged one)."""


def key_examples(keys: Iterable[str], limit: int = 5) -> str:
    """The first ``limit`` of ``keys`` in sorted order, for an error message ("none" when empty)."""
    keys = sorted(keys)
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; :class:`CheckpointError` naming the file if it is not one."""
    return read_json_object(path, CheckpointError)


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


def read_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(every key -> its tensor, every key -> the weight file holding it) of the directory's weight
    files (:func:`weight_files`, each read by :func:`load_weights_file`); a file must hold exactly
    the keys its index lists."""
    state: dict[str, torch.Tensor] = {}
    shard_of: dict[str, str] = {}
    for name, keys in weight_files(directory).items():
        shard = load_weights_file(directory / name)
        if set(shard) != set(keys):
            raise CheckpointError(f"{directory / name} does not hold the keys its index lists: "
                                  f"extra {key_examples(set(shard) - set(keys))}; "
                                  f"absent {key_examples(set(keys) - set(shard))}")
        state.update(shard)
        shard_of.update(dict.fromkeys(shard, name))
    return state, shard_of


def checked_special_ids(directory: Path, tokenizer, vocab_size: int) -> SpecialTokenIds:
    """The tokenizer's ``[SEG]``/``[TAK]`` ids (:func:`~vrs_node.models.mllm.special_token_ids`),
    checked against ``added_tokens.json`` and below ``vocab_size``."""
    seg, tak = special_ids = special_token_ids(tokenizer)
    added_path = directory / ADDED_TOKENS_FILE
    if not added_path.is_file():
        raise FileNotFoundError(f"{added_path} missing (expected the files of {HF_REPO})")
    added = read_json(added_path)
    for name, token_id in ((SEG_TOKEN, seg), (TAK_TOKEN, tak)):
        if added.get(name) != token_id:
            raise CheckpointError(f"the tokenizer gives {name} id {token_id} but added_tokens.json says "
                                  f"{added.get(name)}")
        if not 0 <= token_id < vocab_size:
            raise CheckpointError(f"{name} id {token_id} is outside the embedding table (vocab_size {vocab_size})")
    return special_ids
