"""One batched SAM-2 tracking step for several memory banks whatever their layouts.

sam2 tracks a frame in three parts: ``_prepare_memory_conditioned_features`` reads the memory bank
(the closest conditioning frames, the last ``num_maskmem - 1`` tracked steps, the object pointers
of the last 16 steps with their temporal distances) into ``memory`` and ``memory_pos`` (tokens x
batch x channels: each memory frame's H x W tokens, then 4 tokens per object pointer) and runs
memory attention on them; the mask decoder and memory encoder then work on the frame alone.
Memory attention treats a row's tokens by their own positional encodings only (RoPE on each
spatial memory frame alike, none on the pointers), so rows with *different* banks can share one
call as long as their memories have the same number of tokens and of pointer tokens
(:attr:`MemoryRead.key`). That holds for targets conditioned at different steps once each is 16
steps past its newest conditioning frame with as many conditioning frames kept: the usual case
for targets added one after another, which :func:`~vrs_node.core.cohorts.join_equal_layouts`
(equal step layouts only) never joins.

Each row's memory is read by sam2's own method, in sam2's order: :func:`read_memory` runs
``_prepare_memory_conditioned_features`` on a view of the model whose ``memory_attention`` only
records its inputs; :func:`joint_track_step` concatenates the reads along the batch, runs the
model's memory attention once and ``SAM2Base.track_step`` on a view whose memory step returns
that result. A single read gives ``track_step``'s output bit for bit; several give each row its own
output within batching's rounding. The views (:class:`_SamView`) are per call, so the shared model
is never changed and other threads may use it meanwhile.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from types import MethodType

import torch

from vrs_node.core.cohorts import first_fit
from vrs_node.core.tracker import FrameFeatures


@dataclass(frozen=True)
class MemoryRead:
    """What memory attention reads for ``batch`` rows: ``memory`` and ``memory_pos`` (N x batch x
    C) and the pointer tokens at their end (``num_obj_ptr_tokens``)."""

    memory: torch.Tensor
    memory_pos: torch.Tensor
    num_obj_ptr_tokens: int

    @property
    def batch(self) -> int:
        return self.memory.shape[1]

    @property
    def key(self) -> tuple[int, int]:
        """(memory tokens, pointer tokens): reads of equal keys can share one memory attention."""
        return self.memory.shape[0], self.num_obj_ptr_tokens


class _SamView:
    """``model`` as sam2's own methods see it, with ``overrides`` in place of some attributes:
    methods of the model's class come bound to the view (so they call one another through it),
    everything else is the model's (modules, parameters, settings)."""

    def __init__(self, model: torch.nn.Module, **overrides):
        self._model = model
        self.__dict__.update(overrides)

    def __getattr__(self, name: str):
        method = getattr(type(self._model), name, None)
        if inspect.isfunction(method):
            return MethodType(method, self)
        return getattr(self._model, name)


def read_memory(model: torch.nn.Module, bank: dict, step: int, feats: FrameFeatures, batch: int,
                num_frames: int) -> MemoryRead:
    """The memory a tracked (not conditioning) frame at memory ``step`` reads from ``bank`` (sam2's
    ``output_dict`` form, ``batch`` rows), as ``_prepare_memory_conditioned_features`` builds it."""
    reads = []

    def record(curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens=0):
        reads.append(MemoryRead(memory, memory_pos, num_obj_ptr_tokens))
        return curr[0].new_empty(curr[0].shape)

    view = _SamView(model, memory_attention=record)
    view._prepare_memory_conditioned_features(
        frame_idx=step, is_init_cond_frame=False, current_vision_feats=[_rows(feats.vision_feats[-1], batch)],
        current_vision_pos_embeds=[_rows(feats.top_pos_embed, batch)], feat_sizes=list(feats.feat_sizes[-1:]),
        output_dict=bank, num_frames=num_frames)
    if len(reads) != 1:
        raise RuntimeError("this SAM-2 model reads no memory through memory_attention (num_maskmem 0?)")
    return reads[0]


def joint_track_step(model: torch.nn.Module, reads: Sequence[MemoryRead], feats: FrameFeatures) -> dict:
    """``SAM2Base.track_step`` (a tracked frame, memory encoded) for the rows of every read at once,
    in order: one memory attention over their memories concatenated along the batch, then the
    heads and the memory encoder on all rows. Reads must share one :attr:`MemoryRead.key`."""
    if not reads or len({r.key for r in reads}) != 1:
        raise ValueError(f"reads of one memory shape are needed, got keys {[r.key for r in reads]}")
    batch = sum(r.batch for r in reads)
    vision = [_rows(f, batch) for f in feats.vision_feats]
    pos = _rows(feats.top_pos_embed, batch)
    memory, memory_pos = (torch.cat(ts, dim=1) if len(ts) > 1 else ts[0]
                          for ts in ([r.memory for r in reads], [r.memory_pos for r in reads]))
    fused = model.memory_attention(curr=vision[-1:], curr_pos=[pos], memory=memory, memory_pos=memory_pos,
                                   num_obj_ptr_tokens=reads[0].num_obj_ptr_tokens)
    (h, w), channels = feats.feat_sizes[-1], model.hidden_dim
    pix_feat = fused.permute(1, 2, 0).view(batch, channels, h, w)
    view = _SamView(model, _prepare_memory_conditioned_features=lambda **_: pix_feat)
    return view.track_step(
        frame_idx=None, is_init_cond_frame=False, current_vision_feats=vision, current_vision_pos_embeds=[pos],
        feat_sizes=list(feats.feat_sizes), point_inputs=None, mask_inputs=None, output_dict=None,
        num_frames=None, run_mem_encoder=True)


def batched_steps(model: torch.nn.Module, banks: Sequence[tuple[dict, int, int]], feats: FrameFeatures,
                  num_frames: int, max_batch: int = 0) -> list[tuple[list[int], dict]]:
    """Each of ``banks`` ((bank, its next step, its rows)) tracked into ``feats``: their memories
    read (:func:`read_memory`), and those of one :attr:`MemoryRead.key` run in
    :func:`joint_track_step` calls of at most ``max_batch`` rows (0: no limit; packed first fit in
    order). Returns [(indices of the call's banks, its batched output)], one per call."""
    reads = [read_memory(model, bank, step, feats, rows, num_frames) for bank, step, rows in banks]
    calls = first_fit(range(len(banks)), lambda i: reads[i].key, lambda i: reads[i].batch, max_batch)
    return [(call, joint_track_step(model, [reads[i] for i in call], feats)) for call in calls]


def output_rows(out: dict, start: int, stop: int) -> dict:
    """Rows ``start:stop`` of a batched ``track_step`` output (views; lists of tensors sliced
    element-wise, None kept)."""
    def rows(value):
        if isinstance(value, torch.Tensor):
            return value[start:stop]
        if isinstance(value, list):
            return [rows(v) for v in value]
        return value
    return {k: rows(v) for k, v in out.items()}


def _rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """A 1-row (HW x 1 x C) feature map seen as ``batch`` rows (a view)."""
    return x.expand(-1, batch, -1)
