"""SAM-2's heads run with token prompts on one frame's cached features, as a fresh conditioning frame.

This is how VRS-HQ scores and decodes its TAK' token: the sparse prompt is [NaP, NaP, token] (the
prompt encoder's two padding points, then the token), the image feature is the top level +
``no_mem_embed`` (no memory is read), the dense prompt is ``no_mask_embed``, with single-mask
output. N tokens run as one batch (batch dim N; the frame's features expanded to N, not copied).

- :func:`decode_heads`: the gated low-res mask logits and the object-score logits, as
  ``SAM2Base._forward_sam_heads`` gives them, for the tokens of one or several frames;
- :func:`object_score_logits`: the object-score logits alone, bit for bit those of
  :func:`decode_heads` on the same tokens of one frame. SAM-2's mask decoder computes them from the
  two-way transformer's object-score token (``pred_obj_score_head``), before and apart from the mask
  upscaling and hypernetworks that this skips: about half the decoder's cost at 256 px. Token-driven
  keyframe selection reads only these of every candidate frame, for several frames in one call
  (their inputs concatenated along the batch dim: each row is computed as alone, up to the float
  rounding of a larger batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vrs_node.core.tracker import FrameFeatures

SCORE_BATCH = 16
"""Most tokens one decoder call takes when groups of frames are scored or decoded together
(:func:`score_chunks`): enough to pay a call's fixed cost once for a lattice's frames, while
bounding the batched activations (tokens x image tokens x 256 floats: 64 MiB each at 1024 px)."""

_EMPTY_BANK = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
"""A conditioning frame reads no memory: sam2 is handed an empty bank."""


def _prompt_inputs(model: torch.nn.Module, groups: Sequence[tuple[FrameFeatures, Sequence[torch.Tensor]]],
                   num_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image embeddings N x C x h x w, sparse prompts N x 3 x C, dense prompts N x C x h x w) for
    the N tokens of ``groups`` in order, each on its group's frame: each frame's embedding once,
    expanded over its tokens (concatenated across groups), the prompt encoder run once for all."""
    device = groups[0][0].vision_feats[-1].device
    pix = [model._prepare_memory_conditioned_features(
        frame_idx=0, is_init_cond_frame=True, current_vision_feats=list(feats.vision_feats[-1:]),
        current_vision_pos_embeds=[feats.top_pos_embed], feat_sizes=list(feats.feat_sizes[-1:]),
        output_dict=_EMPTY_BANK, num_frames=num_frames).expand(len(tokens), -1, -1, -1) for feats, tokens in groups]
    token = torch.stack([t.reshape(-1) for _, tokens in groups for t in tokens]).to(device)[:, None]
    n = token.shape[0]
    no_point = (torch.zeros(1, 1, 2, device=device), -torch.ones(1, 1, dtype=torch.int32, device=device))
    sparse, dense = model.sam_prompt_encoder(points=no_point, boxes=None, masks=None)
    sparse = torch.cat([sparse.expand(n, -1, -1), token.to(sparse.dtype)], dim=1)
    return _batched(pix), sparse, dense.expand(n, -1, -1, -1)


def _batched(per_group: list[torch.Tensor]) -> torch.Tensor:
    """The groups' tensors as one batch: one group's as it is (an expanded view stays a view),
    several concatenated along dim 0."""
    return per_group[0] if len(per_group) == 1 else torch.cat(per_group)


def decode_heads(model: torch.nn.Module, groups: Sequence[tuple[FrameFeatures, Sequence[torch.Tensor]]],
                 num_frames: int) -> dict:
    """``SAM2Base._forward_sam_heads`` (single-mask output) for each token of ``groups`` (features,
    tokens) on its group's frame, in one mask-decoder call: the low-res logits (N x 1 x S/4 x S/4,
    float32, N the tokens in order) set to sam2's ``NO_OBJ_SCORE`` where the object score is <= 0,
    and the object-score logits (N x 1). One group's frame is expanded over its tokens, not
    copied; several groups' inputs are concatenated along the batch dim."""
    from sam2.modeling.sam2_base import NO_OBJ_SCORE  # lazy, as in models/: importing sam2 starts hydra

    pix, sparse, dense = _prompt_inputs(model, groups, num_frames)
    levels = [[x.permute(1, 2, 0).view(x.size(1), x.size(2), *s).expand(len(tokens), -1, -1, -1)
               for x, s in zip(feats.vision_feats[:-1], feats.feat_sizes[:-1])] for feats, tokens in groups]
    high_res = [_batched(list(level)) for level in zip(*levels)]
    low_res, _, _, object_score = model.sam_mask_decoder(
        image_embeddings=pix, image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
        multimask_output=False, repeat_image=False, high_res_features=high_res)
    low_res = torch.where((object_score > 0)[:, None, None], low_res, NO_OBJ_SCORE).float()
    return {"pred_masks": low_res, "object_score_logits": object_score}


def object_score_logits(model: torch.nn.Module, groups: Sequence[tuple[FrameFeatures, Sequence[torch.Tensor]]],
                        num_frames: int) -> torch.Tensor:
    """The object-score logits (N x 1, N the tokens of all ``groups`` in order) of
    :func:`decode_heads` on each group's frame and tokens, without the masks, in one call: the
    steps of sam2's ``MaskDecoder.predict_masks`` up to its two-way transformer, then
    ``pred_obj_score_head`` of the object-score token. One group is bit for bit
    :func:`decode_heads`' scores on the same arguments. A decoder without object scores
    (``pred_obj_scores`` off: sam2 then gives 10 for every token) runs :func:`decode_heads`."""
    decoder = model.sam_mask_decoder
    if not decoder.pred_obj_scores:
        return decode_heads(model, groups, num_frames)["object_score_logits"]
    pix, sparse, dense = _prompt_inputs(model, groups, num_frames)
    n = sparse.shape[0]
    output_tokens = torch.cat([decoder.obj_score_token.weight, decoder.iou_token.weight,
                               decoder.mask_tokens.weight], dim=0)
    prompt_tokens = torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
    image_pe = torch.repeat_interleave(model.sam_prompt_encoder.get_dense_pe(), n, dim=0)
    hs, _ = decoder.transformer(pix + dense, image_pe, prompt_tokens)
    return decoder.pred_obj_score_head(hs[:, 0, :])


def score_chunks(counts: Sequence[int], limit: int = SCORE_BATCH) -> list[list[int]]:
    """The indices of groups of ``counts[i]`` tokens, in order, cut into runs whose tokens add up
    to at most ``limit`` (a group with more is a run of its own; a group of 0 is in no run)."""
    runs: list[list[int]] = []
    total = limit
    for i, n in enumerate(counts):
        if n == 0:
            continue
        if total + n > limit:
            runs.append([])
            total = 0
        runs[-1].append(i)
        total += n
    return runs
