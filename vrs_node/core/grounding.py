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
from vrs_node.core.track_result import TrackResult
from vrs_node.core.tracker import FrameFeatures, StreamingTracker
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
    SAM-2 features (scored by ``tracker``) -> its keyframe, that frame's decode, and the answer.

    Batched over the reasonings and frames: the object scores alone, no masks, of each distinct
    candidate features (a dense frame, whatever lattices hold it) with the TAK' of every reasoning
    that has it as a candidate, all frames in one :meth:`~StreamingTracker.grouped_object_scores`
    call (decoder calls of up to 16 tokens); TKS chooses per reasoning;
    then each distinct keyframe decoded with the TAK' of the reasonings that chose it, all in one
    :meth:`~StreamingTracker.grouped_decode_tokens` call. Result
    i equals ``select_keyframes(tracker, [reasonings[i]])`` within the batched decoder's float
    rounding; one reasoning's keyframe decode is ``decode_token``'s. ``timings_s["tks"]`` is the
    reasoning's ``tda`` time (0 when it has none) plus its share of the selection (scoring, choices
    and decoding; by its number of candidates).
    """
    start = time.perf_counter()
    object_scores = _score_candidates(tracker, reasonings)
    choices = [choose_keyframe(scores, r.tda_weights) for r, scores in zip(reasonings, object_scores)]
    decoded = _decode_keyframes(tracker, [r.candidates[position] for r, (position, _) in zip(reasonings, choices)],
                                [r.token for r in reasonings])
    share = elapsed_s(tracker.device, start) / max(1, sum(len(r.candidates) for r in reasonings))
    groundings = []
    for reasoning, scores, (position, tks_scores), result in zip(reasonings, object_scores, choices, decoded):
        timings = dict(reasoning.timings_s)
        timings["tks"] = timings.pop("tda", 0.0) + share * len(scores)
        key = Keyframe(position, tks_scores, torch.tensor(scores), result)
        groundings.append(_grounding(reasoning, key, timings))
    return groundings


def _score_candidates(tracker: StreamingTracker, reasonings: Sequence[Reasoning]) -> list[list[float]]:
    """``[i][j]``: reasoning i's TAK' object score on its candidate j (:func:`_per_frame`, all
    frames in one grouped call)."""
    flat = _per_frame(tracker.grouped_object_scores, [(f, r.token) for r in reasonings for f in r.candidates])
    starts = np.cumsum([0] + [len(r.candidates) for r in reasonings])
    return [flat[a:b] for a, b in zip(starts[:-1], starts[1:])]


def _decode_keyframes(tracker: StreamingTracker, keyframes: Sequence[FrameFeatures],
                      tokens: Sequence[torch.Tensor]) -> list[TrackResult]:
    """``tokens[i]`` decoded on ``keyframes[i]`` (:func:`_per_frame`, all keyframes in one grouped call)."""
    return _per_frame(tracker.grouped_decode_tokens, list(zip(keyframes, tokens)))


def _per_frame(run, pairs: Sequence[tuple[FrameFeatures, torch.Tensor]]) -> list:
    """``run(groups)`` over one (features, tokens) group per distinct features (the same object)
    with the tokens of every pair naming them, in first-named order (``run`` gives one output
    list per group, one output per token); the outputs in the order of ``pairs``."""
    frames: dict[int, tuple[FrameFeatures, list[int]]] = {}
    for k, (feats, _) in enumerate(pairs):
        frames.setdefault(id(feats), (feats, []))[1].append(k)
    groups = [(feats, [pairs[k][1] for k in slots]) for feats, slots in frames.values()]
    out = [None] * len(pairs)
    for (_, slots), values in zip(frames.values(), run(groups)):
        for k, value in zip(slots, values):
            out[k] = value
    return out


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
