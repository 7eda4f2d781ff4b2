"""Where each key of the released VRS-HQ weights goes: the routes onto ``VrshqMLLM``'s and SAM-2's
state dicts, the keys deliberately dropped, the CLIP-224 weights reloaded from the tower's
directory, transformers 4.31's never-loaded ``*gamma`` tensors, and the non-persistent buffers
rebuilt (:mod:`vrs_node.models.vrshq_checkpoint` states the contract).
"""

from __future__ import annotations

import logging
import re
from itertools import chain
from pathlib import Path

import torch
from transformers import CLIPVisionModel

from vrs_node.models.mllm import VrshqMLLM
from vrs_node.models.vrshq_files import key_examples

log = logging.getLogger(__name__)

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


def renamed_by_reference(key: str) -> bool:
    """True for keys transformers 4.31's ``from_pretrained`` renames (``gamma`` -> ``weight``,
    ``beta`` -> ``bias``) and therefore never loads under their own name."""
    return "gamma" in key or "beta" in key


def tower_weights(vision_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
    """CLIP-224 vision weights (``vision_tower.*``) from the tower's directory; None if it holds none."""
    try:
        clip = CLIPVisionModel.from_pretrained(vision_dir, local_files_only=True, dtype=dtype)
    except OSError:  # a directory with a config but no weights file
        return None
    return {VISION_PREFIX + k: v for k, v in clip.state_dict().items()}


def rebuild_buffers(mllm: VrshqMLLM, device: torch.device) -> None:
    """Compute the non-persistent buffers (never in a checkpoint) as their constructors do."""
    mllm.llm.rotary_emb = type(mllm.llm.rotary_emb)(config=mllm.llm.config).to(device)
    embeddings = mllm.vision_tower.embeddings
    embeddings.position_ids = torch.arange(embeddings.num_positions, device=device).expand((1, -1))
    left = [n for n, t in chain(mllm.named_parameters(), mllm.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors neither in the checkpoint nor rebuilt: {key_examples(left)}")


def route_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]],
                                                        dict[tuple[str, str], str], list[str]]:
    """(part -> its state dict, (part, name) -> the released key, the keys with no route): every
    key routed (:func:`route_key`) unless :func:`dropped_key`."""
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
    return parts, released_name, unknown


def leave_unloaded_nan(sam2_part: dict[str, torch.Tensor], released_name: dict[tuple[str, str], str],
                       shard_of: dict[str, str]) -> None:
    """transformers 4.31's quirk, in place: SAM-2 tensors whose keys it renames
    (:func:`renamed_by_reference`) and that lie outside :data:`RELOADED_SHARD` are never loaded
    (uninitialised there): here they are NaN, with a warning naming them."""
    unloaded = [k for k in sam2_part
                if renamed_by_reference(k) and shard_of[released_name["sam2", k]] != RELOADED_SHARD]
    if not unloaded:
        return
    for key in unloaded:
        sam2_part[key] = torch.full_like(sam2_part[key], float("nan"))
    log.warning("as the reference (transformers 4.31) does, %s are not loaded (their keys are renamed and they "
                "are not in %s): they are NaN, so SAM-2's memory is NaN; reference_quirks=False loads them",
                key_examples(unloaded), RELOADED_SHARD)
