"""What a grounding query answers, and its keyframe selection (TKS), shared by the local
:class:`~vrs_node.core.grounder.Grounder` and the remote reasoner's client
(:mod:`vrs_node.core.remote_reasoner`).

:class:`Reasoning` is the reasoning half of one instruction's query (anchor, lattice, SEG/TAK,
TAK' and TDA's weights: what an MLLM, local or remote, gives); :func:`select_keyframes` turns
reasonings into :class:`Grounding` answers with the tracker's SAM-2 (TKS).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vrs_node.core.frames import Frame
from vrs_node.core.prompts import TokenPrompt
from vrs_node.core.tracker import FrameFeatures, StreamingTracker, TrackResult
from vrs_node.core.vrshq import Keyframe, choose_keyframe
from vrs_node.models.mllm import GroundingTokens
from vrs_node.models.prompt import Instruction


@dataclass(frozen=True)
class Grounding:
    """A query's answer. Frame numbers are window sequence numbers.

    ``dense_frames[i]`` is the frame of SEG token i (the explicit SEG -> frame mapping);
    ``keyframe_features`` lets the tracker condition on the keyframe even after the window has
    evicted it; ``token`` is TAK' (the prompt the keyframe was decoded with), ``keyframe_result``
    that decode (on the device, at SAM-2's low resolution; :attr:`mask` and :attr:`object_score`
    read it). ``input_ids``, ``tokens`` (the MLLM's SEG/TAK tokens and the hidden rows
    read), ``tks_object_scores``, ``tks_scores`` and ``tda_weights`` are the intermediate results,
    for inspection and parity checks.

    ``timings_s``: seconds per stage: ``clip_anchor`` (when CLIP chose the anchor: the window's
    image embeddings, the text embedding(s) and the argmax), ``mllm_frame_tokens``,
    ``mllm_prefill`` (prompt building, DPC-KNN merge and the LLM calls) and ``tks`` (TDA and TKS).
    From :meth:`Grounder.ground_many` the first three are the durations of the batch's shared
    stages (the same in every Grounding of the batch: they ran once for all its instructions),
    ``tks`` is this instruction's TDA and keyframe choice plus its share of the batch's TKS
    decodes (their time split in proportion to the instruction's candidates).
    """

    instruction: Instruction
    keyframe: int
    keyframe_stamp_ns: int
    keyframe_features: FrameFeatures
    token: torch.Tensor
    keyframe_result: TrackResult
    anchor: int
    dense_frames: list[int]
    sparse_frames: list[int]
    input_ids: list[int]
    tokens: GroundingTokens
    tks_object_scores: list[float]
    tks_scores: list[float]
    tda_weights: list[float]
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def prompt(self) -> TokenPrompt:
        """What the answer conditions its target with on the keyframe: TAK' with its keyframe
        decode, which conditions the keyframe as it is, on the device (not decoded again)."""
        return TokenPrompt(self.token, self.keyframe_result.low_res_logits)

    @property
    def mask(self) -> np.ndarray:
        """The keyframe's mask at camera resolution (``keyframe_result.mask()``, computed on each read)."""
        return self.keyframe_result.mask()

    @property
    def object_score(self) -> float:
        """The keyframe decode's object-score logit."""
        return self.keyframe_result.object_score


@dataclass(frozen=True)
class Reasoning:
    """The reasoning half of one instruction's query (anchor, lattice, MLLM, TDA: no SAM-2 model
    ran), what :meth:`Grounder.select_many` needs to pick the keyframe.

    ``anchor`` and ``sparse_frames`` are window frame numbers; ``dense[i]`` is the frame of SEG
    token i and ``candidates[i]`` its SAM-2 features, taken when the query began (the window may
    evict the frame meanwhile); ``token`` is TAK' and ``tda_weights`` TDA's weights (one per
    dense frame); ``timings_s`` as :attr:`Grounding.timings_s`, with ``tda`` in place of ``tks``.
    """

    instruction: Instruction
    anchor: int
    dense: list[Frame]
    candidates: list[FrameFeatures]
    sparse_frames: list[int]
    input_ids: list[int]
    tokens: GroundingTokens
    token: torch.Tensor
    tda_weights: torch.Tensor
    timings_s: dict[str, float]


def elapsed_s(device: torch.device, start: float) -> float:
    """Seconds since ``start`` (``time.perf_counter``) once a stage's work on ``device`` is done:
    on CUDA the device is synchronised first, since kernels run asynchronously to the host."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def select_keyframes(tracker: StreamingTracker, reasonings: Sequence[Reasoning]) -> list[Grounding]:
    """The keyframe selection part of a query: TKS of each reasoning's TAK' on its candidates'
    SAM-2 features (decoded by ``tracker``) -> its keyframe, that frame's decode, and the answer.

    The decodes are batched over the reasonings: one ``decode_tokens`` call (one mask-decoder
    call) per distinct candidate features (a dense frame, whatever lattices hold it) with the
    TAK' of every reasoning that has it as a candidate; then TKS chooses per reasoning. Result
    i equals ``select_keyframes(tracker, [reasonings[i]])`` within ``decode_tokens``'s float
    rounding; one reasoning decodes exactly as ``decode_token`` does. ``timings_s["tks"]`` is the
    reasoning's ``tda`` time (0 when it has none) plus its TKS time.
    """
    start = time.perf_counter()
    decoded = _decode_candidates(tracker, reasonings)
    share = elapsed_s(tracker.device, start) / max(1, sum(len(r.candidates) for r in reasonings))
    groundings = []
    for reasoning, decodes in zip(reasonings, decoded):
        start = time.perf_counter()
        key = choose_keyframe(decodes, reasoning.tda_weights)
        timings = dict(reasoning.timings_s)
        timings["tks"] = timings.pop("tda", 0.0) + share * len(decodes) + elapsed_s(tracker.device, start)
        groundings.append(_grounding(reasoning, key, timings))
    return groundings


def _decode_candidates(tracker: StreamingTracker, reasonings: Sequence[Reasoning]) -> list[list[TrackResult]]:
    """``[i][j]``: reasoning i's TAK' decoded on its candidate j, with one ``decode_tokens`` call
    per distinct candidate features (the same object) for all the reasonings holding it."""
    frames: dict[int, tuple[FrameFeatures, list[tuple[int, int]]]] = {}
    for i, reasoning in enumerate(reasonings):
        for j, feats in enumerate(reasoning.candidates):
            frames.setdefault(id(feats), (feats, []))[1].append((i, j))
    decoded: list[list[TrackResult | None]] = [[None] * len(r.candidates) for r in reasonings]
    for feats, slots in frames.values():
        for (i, j), result in zip(slots, tracker.decode_tokens(feats, [reasonings[i].token for i, _ in slots])):
            decoded[i][j] = result
    return decoded


def _grounding(reasoning: Reasoning, key: Keyframe, timings: dict[str, float]) -> Grounding:
    """The query's answer from its reasoning and its TKS keyframe."""
    keyframe = reasoning.dense[key.position]
    return Grounding(
        instruction=reasoning.instruction, keyframe=keyframe.index, keyframe_stamp_ns=keyframe.stamp_ns,
        keyframe_features=reasoning.candidates[key.position], token=reasoning.token,
        keyframe_result=key.result, anchor=reasoning.anchor, dense_frames=[f.index for f in reasoning.dense],
        sparse_frames=reasoning.sparse_frames, input_ids=reasoning.input_ids, tokens=reasoning.tokens,
        tks_object_scores=key.object_scores.tolist(), tks_scores=key.scores.tolist(),
        tda_weights=reasoning.tda_weights.tolist(), timings_s=timings)
