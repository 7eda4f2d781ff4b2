"""The VRS-HQ MLLM (Chat-UniVi-7B architecture) on ``transformers``: frames + prompt -> SEG/TAK tokens.

Architecture (REFERENCE_VRSHQ_VIDEOLISA.md §1.0, §1.5-1.6), with the module names of the released
checkpoint so that its keys map one to one (``models/vrshq_weights.py``):

- ``vision_tower``: ``CLIPVisionModel`` (ViT-L/14 at 224 px for the real model); a frame's tokens are
  the hidden states of layer ``vision_select_layer`` (-2) without the CLS token (256 x 1024);
- parameter-free Chat-UniVi DPC-KNN merging, 256 -> [64 | 32 | 16] = 112 tokens per frame
  (:mod:`vrs_node.models.dpc_knn`);
- ``mm_projector``: Linear(1024, 4096);
- ``llm``: ``LlamaModel`` (LLaMA-7B dimensions for the real model); its last hidden state (after the
  final RMSNorm) is the reference's ``hidden_states[-1]``;
- ``text_hidden_fcs``: Linear(4096, 4096) -> ReLU -> Linear(4096, 256) -> Dropout(0), shared by
  ``[SEG]`` and ``[TAK]``.

One prefill, no generation: the prompt already holds the answer with its ``[SEG]``/``[TAK]``
tokens. Each token's embedding is read from the hidden state of the token *before* it (the
one-token offset LISA and VRS-HQ use: that state predicts the special token). VRS-HQ finds those
positions by assuming exactly 112 tokens per ``<image>``; here they are tracked explicitly while the
visual tokens are spliced in, which gives the same positions and stays right when sparse tokens
are added.

Sparse-dense input (VideoLISA's idea on VRS-HQ's prompt): the dense frames (the anchor lattice)
keep their 112 tokens and one ``[SEG]`` each; optional sparse frames over the whole window give one
token each, the mean of the frame's projected CLIP patch tokens (VideoLISA's pooling; the projector
is affine, so this equals projecting the mean patch token). As in VideoLISA the sparse tokens come
first, in time order, directly before the dense tokens: they fill the front of the first
``<image>`` slot. With no sparse frames the input is exactly VRS-HQ's.

DPC-KNN as the reference runs it: the reference seeds the RNG with ``torch.manual_seed(0)`` before
each forward and DPC-KNN adds ``torch.rand * 1e-6`` to its densities, frame by frame in prompt
order; that noise decides exact score ties, which do occur (:mod:`vrs_node.models.dpc_knn`). So a
frame's cached input is its 256 CLIP patch tokens, and each prefill merges its dense frames with a
fresh generator seeded :data:`DPC_KNN_SEED`, in prompt order -- the same noise as the reference's
run, whatever frames were cached before (merging a few frames costs milliseconds).

Several prompts (one per instruction, over the same window) are prefilled together
(:meth:`VrshqMLLM.prefill`): prompts over the same frames share their common prefix (the system
text and the frames' tokens), which runs once, in one batched LLM call with the other prefixes;
the rest of each prompt then runs in a second batched call on a copy of its prefix's keys and
values, right-padded (padding comes after a row's tokens, so the causal mask already hides it);
a mask and position ids keep a prompt off the cached tokens of a longer prefix. Each prompt
gets exactly the tokens and positions it has alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, DynamicCache, LlamaConfig, LlamaModel

from vrs_node.models.clip_preprocess import ClipPreprocessor
from vrs_node.models.dpc_knn import CHAT_UNIVI_LEVELS, merge_visual_tokens
from vrs_node.models.prompt import IMAGE_TOKEN_INDEX, SEG_TOKEN, TAK_TOKEN

TOKENS_PER_FRAME = sum(n for n, _ in CHAT_UNIVI_LEVELS)
"""Visual tokens per dense frame after merging: 64 + 32 + 16 = 112."""

DPC_KNN_SEED = 0
"""The reference's ``torch.manual_seed(0)`` before each forward: the seed of DPC-KNN's noise."""

ATTENTION = "sdpa"
"""``attn_implementation`` of the vision tower's and the LLM's configs, in every precision:
PyTorch's ``scaled_dot_product_attention`` (fused kernels, bfloat16 included). transformers 5
already defaults to it; it is set explicitly on every config (:func:`tiny_config`,
:func:`vrshq_7b_config`, the checkpoint loader) so that a model never depends on that default.
The float32 goldens of the reference (transformers 4.31, eager attention) pass with it at the same
figures as before (SEG/TAK hidden rows within 1.2e-6)."""


@dataclass(frozen=True)
class MllmConfig:
    """Sizes of the MLLM's parts; ``out_dim`` must equal the SAM-2 prompt dimension (256)."""

    vision: CLIPVisionConfig
    llm: LlamaConfig
    out_dim: int = 256
    vision_select_layer: int = -2


@dataclass(frozen=True)
class FrameTokens:
    """What the MLLM needs of one frame, computed once per frame and cached with it.

    ``patches``: (256, C_vision) layer ``vision_select_layer`` patch tokens (DPC-KNN's input);
    ``pooled``: (C_vision,) their mean (a sparse frame's token).
    """

    patches: torch.Tensor
    pooled: torch.Tensor


@dataclass(frozen=True)
class GroundingTokens:
    """The prefill's output: one SEG embedding per dense frame, in prompt order, and the TAK.

    ``rows`` are the rows of the last hidden state that were read (the SEG rows in order, then the
    TAK row; :func:`seg_tak_positions`) and ``hidden`` those rows (final-norm output), for parity
    checks against the reference.
    """

    seg: torch.Tensor
    tak: torch.Tensor
    rows: tuple[int, ...]
    hidden: torch.Tensor


def seg_tak_positions(input_ids: Sequence[int], seg_id: int, tak_id: int,
                      image_lengths: Sequence[int]) -> tuple[list[int], int]:
    """Positions in the expanded sequence of the hidden states that give the SEG and TAK tokens.

    The expanded sequence replaces the k-th ``IMAGE_TOKEN_INDEX`` by ``image_lengths[k]`` visual
    tokens. For each ``[SEG]`` (in order) and the one ``[TAK]`` the position returned is the
    expanded position of the token itself minus one (the one-token offset).
    """
    images = [i for i, t in enumerate(input_ids) if t == IMAGE_TOKEN_INDEX]
    if len(images) != len(image_lengths):
        raise ValueError(f"{len(images)} image slots in the prompt but {len(image_lengths)} visual inputs")
    seg, tak, shift, k = [], [], 0, 0
    for i, token in enumerate(input_ids):
        if token == IMAGE_TOKEN_INDEX:
            shift += image_lengths[k] - 1
            k += 1
        elif token == seg_id:
            seg.append(i + shift - 1)
        elif token == tak_id:
            tak.append(i + shift - 1)
    if len(tak) != 1 or len(seg) != len(images):
        raise ValueError(f"the prompt must hold one [SEG] per image ({len(images)}) and one [TAK]; "
                         f"found {len(seg)} [SEG] and {len(tak)} [TAK]")
    return seg, tak[0]


class VrshqMLLM(nn.Module):
    """Chat-UniVi vision tower + token merging + projector + LLaMA + SEG/TAK head."""

    def __init__(self, config: MllmConfig, image_processor: ClipPreprocessor | None = None):
        """``image_processor``: the vision tower's CLIP pre-processing (e.g.
        ``ClipPreprocessor.from_pretrained(<CLIP directory>)``); default: CLIP's defaults at the
        tower's ``image_size``."""
        super().__init__()
        self.config = config
        self.vision_tower = CLIPVisionModel(config.vision)
        self.mm_projector = nn.Linear(config.vision.hidden_size, config.llm.hidden_size)
        self.llm = LlamaModel(config.llm)
        hidden = config.llm.hidden_size
        self.text_hidden_fcs = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                             nn.Linear(hidden, config.out_dim), nn.Dropout(0.0))
        self.image_processor = (image_processor if image_processor is not None
                                else ClipPreprocessor.clip_defaults(config.vision.image_size))

    @property
    def device(self) -> torch.device:
        return self.mm_projector.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mm_projector.weight.dtype

    @torch.inference_mode()
    def frame_tokens(self, images: Sequence[np.ndarray]) -> list[FrameTokens]:
        """CLIP-224 preprocessing (transformers 4.31's: :mod:`vrs_node.models.clip_preprocess`) and
        the vision tower at ``vision_select_layer`` without CLS, for H x W x 3 uint8 RGB frames."""
        pixels = self.image_processor([np.asarray(im) for im in images])
        out = self.vision_tower(pixel_values=pixels.to(self.device, self.dtype), output_hidden_states=True)
        patches = out.hidden_states[self.config.vision_select_layer][:, 1:]
        return [FrameTokens(p, p.mean(dim=0)) for p in patches]

    @torch.inference_mode()
    def merge(self, dense: Sequence[FrameTokens], seed: int | None = DPC_KNN_SEED) -> torch.Tensor:
        """The dense frames' Chat-UniVi tokens (N x 112 x C_vision), merged in the given (prompt)
        order with DPC-KNN noise from a fresh generator seeded ``seed`` on the model's device
        (None: no noise)."""
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        patches = torch.stack([f.patches for f in dense]).to(self.device, self.dtype)
        return merge_visual_tokens(patches, generator=generator)

    @torch.inference_mode()
    def forward(self, input_ids: Sequence[int], dense: Sequence[FrameTokens], seg_id: int, tak_id: int,
                sparse: Sequence[FrameTokens] = (), seed: int | None = DPC_KNN_SEED) -> GroundingTokens:
        """One prefill over the prompt with the dense frames' 112 merged tokens (:meth:`merge`) in
        its image slots (and the sparse frames' pooled tokens in front of the first slot); returns
        the 256-d SEG/TAK tokens. The one-prompt case of :meth:`prefill`."""
        return self.prefill([PrefillInput(input_ids, dense, sparse)], seg_id, tak_id, seed)[0]

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[PrefillInput], seg_id: int, tak_id: int,
                seed: int | None = DPC_KNN_SEED) -> list[GroundingTokens]:
        """The prefills of several prompts, batched; result i equals ``forward`` on prompt i alone
        (float rounding aside: the same tokens at the same positions attending the same tokens).
        No prompts: [].

        Each prompt is expanded as :meth:`forward` expands it: its visual tokens are merged with a
        fresh generator seeded ``seed`` (once per visual input, i.e. per distinct list of
        :class:`FrameTokens` objects as dense and sparse frames: the merge each of its prompts
        would get alone) and spliced into its text embeddings. Prompts with the same visual
        input (and first token) form a group, whose common prefix (for VRS-HQ prompts the system
        text and every frame's tokens: the instruction comes after the frames) runs once
        (:meth:`_hidden_states`). One prompt is one plain causal call: exactly the unbatched one.
        """
        if not prompts:
            return []
        visuals: dict[tuple, list[torch.Tensor]] = {}
        groups: dict[tuple, list[int]] = {}
        embeds, reads = [], []
        for i, prompt in enumerate(prompts):
            key = (tuple(map(id, prompt.dense)), tuple(map(id, prompt.sparse)))
            if key not in visuals:
                visuals[key] = self._visual(prompt.dense, prompt.sparse, seed)
            seg, tak = seg_tak_positions(prompt.input_ids, seg_id, tak_id, [len(v) for v in visuals[key]])
            embeds.append(self._splice(prompt.input_ids, visuals[key]))
            reads.append(seg + [tak])
            groups.setdefault((key, prompt.input_ids[0]), []).append(i)
        prefixes = []
        for (key, _), members in groups.items():
            common = _common_prefix([prompts[i].input_ids for i in members])
            prefixes.append(_expanded_length(prompts[members[0]].input_ids[:common], [len(v) for v in visuals[key]]))
        hidden = self._hidden_states(embeds, list(groups.values()), prefixes)
        out = []
        for states, read in zip(hidden, reads):
            states = states[read]
            tokens = self.text_hidden_fcs(states).float()
            out.append(GroundingTokens(seg=tokens[:-1], tak=tokens[-1], rows=tuple(read), hidden=states.float()))
        return out

    def _visual(self, dense: Sequence[FrameTokens], sparse: Sequence[FrameTokens],
                seed: int | None) -> list[torch.Tensor]:
        """The projected visual tokens of each image slot: the dense frames' merged tokens, the
        sparse frames' pooled tokens in front of the first slot's."""
        if not dense:
            raise ValueError("the MLLM needs at least one dense frame")
        visual = list(self.mm_projector(self.merge(dense, seed)))
        if sparse:
            pooled = torch.stack([f.pooled for f in sparse]).to(self.device, self.dtype)
            visual[0] = torch.cat([self.mm_projector(pooled), visual[0]])
        return visual

    def _splice(self, input_ids: Sequence[int], visual: Sequence[torch.Tensor]) -> torch.Tensor:
        """The expanded input embeddings (L x C): the text embeddings with the k-th
        ``IMAGE_TOKEN_INDEX`` replaced by ``visual[k]``."""
        ids = torch.tensor(input_ids, device=self.device)
        text = self.llm.embed_tokens(ids.clamp(min=0))
        pieces, start, k = [], 0, 0
        for i in (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist():
            pieces += [text[start:i], visual[k]]
            start, k = i + 1, k + 1
        pieces.append(text[start:])
        return torch.cat(pieces)

    def _hidden_states(self, embeds: Sequence[torch.Tensor], groups: Sequence[Sequence[int]],
                       prefixes: Sequence[int]) -> list[torch.Tensor]:
        """Each prompt's last hidden state (L_i x C), in at most two batched LLM calls.

        ``groups[g]``: prompts whose first ``prefixes[g]`` expanded tokens are the same. Call 1
        runs each group's prefix once (one row per group); its keys and values are kept, one copy
        per prompt that goes on. Call 2 runs the rest of those prompts (one row each): position
        ids continue their group's prefix, and each token attends that prefix and its own
        prompt's earlier tokens. Rows are right-padded (:meth:`_rows`).
        """
        heads = [embeds[members[0]][:n] for members, n in zip(groups, prefixes)]
        tails = [(g, i) for g, (members, n) in enumerate(zip(groups, prefixes)) for i in members
                 if len(embeds[i]) > n]
        cache = DynamicCache(config=self.llm.config) if tails else None
        head_states = self._rows(heads, cache)
        hidden = {i: head_states[g, :n] for g, (members, n) in enumerate(zip(groups, prefixes)) for i in members}
        if tails:
            cache.batch_select_indices(torch.tensor([g for g, _ in tails], device=self.device))
            tail_states = self._rows([embeds[i][prefixes[g]:] for g, i in tails], cache,
                                     [prefixes[g] for g, _ in tails], head_states.shape[1])
            for row, (_, i) in enumerate(tails):
                hidden[i] = torch.cat([hidden[i], tail_states[row, :len(embeds[i]) - len(hidden[i])]])
        return [hidden[i] for i in range(len(embeds))]

    def _rows(self, rows: Sequence[torch.Tensor], cache: DynamicCache | None, past: Sequence[int] = (),
              cached: int = 0) -> torch.Tensor:
        """The LLM's last hidden state (B x T x C) over ``rows`` right-padded to T, adding their
        keys and values to ``cache`` (if any). ``cached``: tokens the cache holds per row;
        ``past[b]``: row b continues the first ``past[b]`` of them.

        Right padding needs no mask: under the causal mask a row's tokens attend only earlier
        positions, and its padding comes after them. When every row continues all ``cached``
        tokens the default positions (``cached`` + t) are right too, so a mask and position ids
        are given only when some row continues fewer: its other cached tokens are masked and its
        positions start at ``past[b]``. One row with nothing cached is the plain unbatched call.
        """
        batch = torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)
        if all(n == cached for n in past):
            return self.llm(inputs_embeds=batch, cache=cache, use_cache=cache is not None).last_hidden_state
        start = torch.tensor(past, device=self.device)[:, None]
        mask = torch.cat([torch.arange(cached, device=self.device)[None] < start,
                          torch.ones(batch.shape[:2], dtype=torch.bool, device=self.device)], dim=1)
        return self.llm(inputs_embeds=batch, attention_mask=mask.long(), cache=cache, use_cache=cache is not None,
                        position_ids=start + torch.arange(batch.shape[1], device=self.device)[None]).last_hidden_state


@dataclass(frozen=True)
class PrefillInput:
    """One prompt of :meth:`VrshqMLLM.prefill`: its token ids (``IMAGE_TOKEN_INDEX`` per image
    slot), its dense frames (one per slot, in prompt order) and its sparse frames."""

    input_ids: Sequence[int]
    dense: Sequence[FrameTokens]
    sparse: Sequence[FrameTokens] = ()


def _common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token id lists (of one list: its length)."""
    n = 0
    for column in zip(*sequences):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


def _expanded_length(input_ids: Sequence[int], image_lengths: Sequence[int]) -> int:
    """Length of ``input_ids`` once its k-th ``IMAGE_TOKEN_INDEX`` is expanded to ``image_lengths[k]`` tokens."""
    slots = sum(1 for t in input_ids if t == IMAGE_TOKEN_INDEX)
    return len(input_ids) - slots + sum(image_lengths[:slots])


class SpecialTokenIds(NamedTuple):
    """A tokenizer's ``[SEG]`` and ``[TAK]`` ids (what :meth:`VrshqMLLM.forward` reads), looked up
    once where the tokenizer is loaded (:func:`special_token_ids`) and carried with it from there
    (``VrshqCheckpoint``, ``GroundingModels``)."""

    seg: int
    tak: int


def special_token_ids(tokenizer) -> SpecialTokenIds:
    """``[SEG]`` and ``[TAK]``'s ids looked up by name; an error if the tokenizer lacks either."""
    ids = []
    for name in (SEG_TOKEN, TAK_TOKEN):
        token_id = tokenizer.convert_tokens_to_ids(name)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {name} token; a VRS-HQ tokenizer adds [SEG] and [TAK]")
        ids.append(token_id)
    return SpecialTokenIds(*ids)


def clip_l14_224_config() -> CLIPVisionConfig:
    """OpenAI CLIP ViT-L/14 at 224 px (``openai/clip-vit-large-patch14``'s vision tower)."""
    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                            num_attention_heads=16, image_size=224, patch_size=14, projection_dim=768,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5, attn_implementation=ATTENTION)


def vrshq_7b_config(vocab_size: int = 32002, num_hidden_layers: int = 32) -> MllmConfig:
    """VRS-HQ-7B's sizes: CLIP ViT-L/14-224, LLaMA-7B (4096 wide, 32 layers) with [SEG]/[TAK]
    added (vocab 32002). Fewer ``num_hidden_layers`` give a proportionally cheaper model of the
    same width (benchmarks: prefill time scales with the layer count)."""
    llm = LlamaConfig(vocab_size=vocab_size, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=num_hidden_layers, num_attention_heads=32, num_key_value_heads=32,
                      max_position_embeddings=2048, rms_norm_eps=1e-6, attn_implementation=ATTENTION)
    return MllmConfig(vision=clip_l14_224_config(), llm=llm)


def tiny_config(vocab_size: int) -> MllmConfig:
    """A tiny MLLM with the real structure (224 px, 14 px patches: 256 patch tokens per frame)."""
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=224, patch_size=14, hidden_act="quick_gelu", attn_implementation=ATTENTION)
    llm = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                      attn_implementation=ATTENTION)
    return MllmConfig(vision=vision, llm=llm)
