"""Grounding queries: the frame window + instructions -> for each, a keyframe and its mask.

The VRS-HQ inference pipeline (REFERENCE_VRSHQ_VIDEOLISA.md §1.2-1.9) made causal over the
window of recent frames, in two parts:

*Reasoning* (:meth:`Grounder.reason_many`; no SAM-2 model runs):

1. CLIP anchor: anchor = argmax_t cos(CLIP-336 image_t, CLIP text) over the window's frames;
2. dense frames = the VRS-HQ lattice through the anchor (≤ ``max_dense_frames``, one ``[SEG]`` each);
   optional sparse frames = VideoLISA's uniform sparse sample of the whole window (one pooled
   token each; 0 by default, which is VRS-HQ's input exactly);
3. the MLLM prefill -> per-dense-frame SEG tokens and the TAK token;
4. TDA fuses SEG into TAK'.

*Keyframe selection* (:meth:`Grounder.select`): TKS decodes TAK' on every dense frame's cached
SAM-2 features and picks the keyframe; its decoded mask is the result.

Several instructions are reasoned about together (:meth:`Grounder.ground_many`): every per-frame
input is read or computed once for the whole batch, each instruction gets its own text
embedding, anchor and lattice, and one batched prefill runs all their prompts
(:meth:`~vrs_node.models.mllm.VrshqMLLM.prefill`: at most two LLM calls; prompts over the same
frames run their common prefix, the frames' tokens, once); TDA then runs per instruction, and TKS
decodes each dense frame once for the batch (:meth:`Grounder.select_many`: one mask-decoder call
with the TAK' of every instruction whose lattice holds the frame) and chooses per instruction.
Each result equals the instruction's own query (:meth:`Grounder.ground`) within float rounding.

Every per-frame input (CLIP-336 embedding, the MLLM's CLIP patch tokens, SAM-2 features) is computed
at most once per frame and cached in the :class:`FrameWindow` with the frame, so it is evicted with
it; the text embedding is computed once per instruction (the last :data:`TEXT_CACHE_SIZE` are
kept). A query only reads the window and the tracker's weights (``decode_tokens`` touches no
memory), so it can run on its own thread while the tracking thread goes on.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vrs_node.core.frames import CLIP_KEY, MLLM_KEY, SAM2_KEY, Frame, FrameWindow
from vrs_node.core.sampling import VRSHQ_MAX_DENSE_FRAMES, anchor_lattice, sparse_sample
from vrs_node.core.tracker import FrameFeatures, StreamingTracker, TrackResult
from vrs_node.core.vrshq import TDA_ALPHA, Keyframe, choose_keyframe, temporal_dynamic_aggregation
from vrs_node.models.clip_anchor import ClipAnchorScorer
from vrs_node.models.mllm import (GroundingTokens, PrefillInput, SpecialTokenIds, VrshqMLLM,
                                  special_token_ids)
from vrs_node.models.prompt import Instruction, build_prompt, tokenize_prompt

TEXT_CACHE_SIZE = 256
"""Text embeddings kept (the most recently used instructions'): more than the 255 target ids
there can be, so periodic re-queries of every target never embed a text again."""


@dataclass(frozen=True)
class GrounderConfig:
    """``max_dense_frames``: the lattice budget (VRS-HQ's, :data:`VRSHQ_MAX_DENSE_FRAMES`, by
    default); ``sparse_frames``: pooled context frames (0 = VRS-HQ's input); ``tda_alpha``: TDA's alpha."""

    max_dense_frames: int = VRSHQ_MAX_DENSE_FRAMES
    sparse_frames: int = 0
    tda_alpha: float = TDA_ALPHA

    def __post_init__(self) -> None:
        if self.max_dense_frames < 1:
            raise ValueError(f"max_dense_frames must be >= 1, got {self.max_dense_frames}")
        if self.sparse_frames < 0:
            raise ValueError(f"sparse_frames must be >= 0, got {self.sparse_frames}")


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


class Grounder:
    """Runs grounding queries over a :class:`FrameWindow` with the MLLM, CLIP anchor and tracker.

    ``anchor_scorer`` may be None when every query is given its anchor frame. ``special_ids``: the
    tokenizer's ``[SEG]``/``[TAK]`` ids as they were looked up where it was loaded
    (``GroundingModels.special_ids``, ``VrshqCheckpoint.special_ids``); None looks them up here."""

    def __init__(self, mllm: VrshqMLLM, tokenizer, anchor_scorer: ClipAnchorScorer | None,
                 tracker: StreamingTracker, config: GrounderConfig = GrounderConfig(),
                 special_ids: SpecialTokenIds | None = None):
        self.mllm = mllm
        self.tokenizer = tokenizer
        self.anchor_scorer = anchor_scorer
        self.tracker = tracker
        self.config = config
        self.seg_id, self.tak_id = special_ids or special_token_ids(tokenizer)
        self._text_lock = threading.Lock()
        self._texts: OrderedDict[str, torch.Tensor] = OrderedDict()

    def text_embedding(self, instruction: Instruction) -> torch.Tensor:
        """CLIP text embedding of the instruction, computed once per instruction (the last
        :data:`TEXT_CACHE_SIZE` instructions' are kept)."""
        with self._text_lock:
            if instruction.text in self._texts:
                self._texts.move_to_end(instruction.text)
            else:
                self._texts[instruction.text] = self.anchor_scorer.embed_text(instruction.text)
                if len(self._texts) > TEXT_CACHE_SIZE:
                    self._texts.popitem(last=False)
            return self._texts[instruction.text]

    def ground(self, window: FrameWindow, instruction: Instruction, anchor_frame: int | None = None) -> Grounding:
        """Run one query on the frames the window holds now (those with SAM-2 features).

        ``anchor_frame`` (a window frame number) fixes the anchor instead of the CLIP scorer.
        """
        return self.select(self.reason_many(window, [instruction], [anchor_frame])[0])

    def ground_many(self, window: FrameWindow, instructions: Sequence[Instruction]) -> list[Grounding]:
        """One query for several instructions: ``select_many`` over ``reason_many``; result i is
        instruction i's (its keyframe, SEG/TAK/TAK' within float rounding of ``ground`` alone).
        No instructions: [] (the window is not read)."""
        return self.select_many(self.reason_many(window, instructions))

    def reason_many(self, window: FrameWindow, instructions: Sequence[Instruction],
                    anchor_frames: Sequence[int | None] | None = None, *,
                    with_candidates: bool = True) -> list[Reasoning]:
        """The reasoning part for each instruction, over the frames the window holds now (those
        with SAM-2 features), with one batched prefill for all of them (module docstring).

        ``anchor_frames[i]`` (a window frame number, or None for the CLIP scorer's) fixes
        instruction i's anchor. ``with_candidates=False`` (a reasoner without SAM-2): every frame
        the window holds, no SAM-2 feature read, ``Reasoning.candidates`` empty (no :meth:`select`).
        No instructions: [] (the window is not read).
        """
        if not instructions:
            return []
        # The SAM-2 features are taken now: the window may evict these frames during the query.
        held = window.snapshot()
        encoded = {f.index: window.get_feature(f.index, SAM2_KEY) for f in held} if with_candidates else {}
        frames = [f for f in held if encoded[f.index] is not None] if with_candidates else held
        if not frames:
            raise ValueError("no encoded frame in the window yet: grounding needs at least one")
        timings: dict[str, float] = {}
        anchors = self._anchors(window, frames, instructions, anchor_frames, timings)
        dense = [anchor_lattice(len(frames), anchor, self.config.max_dense_frames) for anchor in anchors]
        sparse = sparse_sample(len(frames), self.config.sparse_frames) if self.config.sparse_frames else []
        needed = sorted(set(sparse).union(*dense))
        start = time.perf_counter()
        tokens = dict(zip(needed, self._cached(window, [frames[p] for p in needed], MLLM_KEY,
                                               lambda fs: self.mllm.frame_tokens([f.image for f in fs]))))
        timings["mllm_frame_tokens"] = self._elapsed(start)

        start = time.perf_counter()
        ids = [tokenize_prompt(build_prompt(instruction, len(d)), self.tokenizer) for instruction, d in
               zip(instructions, dense)]
        outs = self.mllm.prefill([PrefillInput(i, [tokens[p] for p in d], [tokens[p] for p in sparse])
                                  for i, d in zip(ids, dense)], self.seg_id, self.tak_id)
        timings["mllm_prefill"] = self._elapsed(start)

        reasoning = []
        for instruction, anchor, d, input_ids, out in zip(instructions, anchors, dense, ids, outs):
            start = time.perf_counter()
            tak, weights = temporal_dynamic_aggregation(out.seg, out.tak, self.config.tda_alpha)
            reasoning.append(Reasoning(
                instruction=instruction, anchor=frames[anchor].index, dense=[frames[p] for p in d],
                candidates=[encoded[frames[p].index] for p in d] if with_candidates else [], sparse_frames=[frames[p].index for p in sparse],
                input_ids=input_ids, tokens=out, token=tak, tda_weights=weights,
                timings_s={**timings, "tda": self._elapsed(start)}))
        return reasoning

    def select(self, reasoning: Reasoning) -> Grounding:
        """The keyframe selection part of one query: ``select_many([reasoning])[0]``."""
        return self.select_many([reasoning])[0]

    def select_many(self, reasonings: Sequence[Reasoning]) -> list[Grounding]:
        """The keyframe selection part: TKS of each reasoning's TAK' on its candidates' SAM-2
        features -> its keyframe, that frame's decode, and the query's answer.

        The decodes are batched over the reasonings: one ``decode_tokens`` call (one mask-decoder
        call) per distinct candidate features (a dense frame, whatever lattices hold it) with the
        TAK' of every reasoning that has it as a candidate; then TKS chooses per reasoning. Result
        i equals ``select_many([reasonings[i]])`` within ``decode_tokens``'s float rounding; one
        reasoning decodes exactly as ``decode_token`` does.
        """
        start = time.perf_counter()
        decoded = self._decode_candidates(reasonings)
        share = self._elapsed(start) / max(1, sum(len(r.candidates) for r in reasonings))
        groundings = []
        for reasoning, decodes in zip(reasonings, decoded):
            start = time.perf_counter()
            key = choose_keyframe(decodes, reasoning.tda_weights)
            timings = dict(reasoning.timings_s)
            timings["tks"] = timings.pop("tda") + share * len(decodes) + self._elapsed(start)
            groundings.append(self._grounding(reasoning, key, timings))
        return groundings

    def _decode_candidates(self, reasonings: Sequence[Reasoning]) -> list[list[TrackResult]]:
        """``[i][j]``: reasoning i's TAK' decoded on its candidate j, with one ``decode_tokens``
        call per distinct candidate features (the same object) for all the reasonings holding it."""
        frames: dict[int, tuple[FrameFeatures, list[tuple[int, int]]]] = {}
        for i, reasoning in enumerate(reasonings):
            for j, feats in enumerate(reasoning.candidates):
                frames.setdefault(id(feats), (feats, []))[1].append((i, j))
        decoded: list[list[TrackResult | None]] = [[None] * len(r.candidates) for r in reasonings]
        for feats, slots in frames.values():
            results = self.tracker.decode_tokens(feats, [reasonings[i].token for i, _ in slots])
            for (i, j), result in zip(slots, results):
                decoded[i][j] = result
        return decoded

    @staticmethod
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

    def _anchors(self, window: FrameWindow, frames: list[Frame], instructions: Sequence[Instruction],
                 anchor_frames: Sequence[int | None] | None, timings: dict[str, float]) -> list[int]:
        """Each instruction's anchor as a position in ``frames``: the given frame, else CLIP's
        (the window's image embeddings read or computed once for all; ``timings["clip_anchor"]``)."""
        given = list(anchor_frames) if anchor_frames is not None else [None] * len(instructions)
        if len(given) != len(instructions):
            raise ValueError(f"{len(given)} anchor frames for {len(instructions)} instructions")
        positions = {f.index: p for p, f in enumerate(frames)}
        for frame in given:
            if frame is not None and frame not in positions:
                raise ValueError(f"anchor frame {frame} is not an encoded frame of the window")
        if all(frame is not None for frame in given):
            return [positions[frame] for frame in given]
        if self.anchor_scorer is None:
            raise ValueError("this grounder has no CLIP anchor scorer: give the anchor frame")
        start = time.perf_counter()
        images = torch.stack(self._cached(window, frames, CLIP_KEY,
                                          lambda fs: [self.anchor_scorer.embed_image(f.image) for f in fs]))
        anchors = [positions[frame] if frame is not None else
                   ClipAnchorScorer.anchor(images, self.text_embedding(instruction).to(images))
                   for instruction, frame in zip(instructions, given)]
        timings["clip_anchor"] = self._elapsed(start)
        return anchors

    def _elapsed(self, start: float) -> float:
        """Seconds since ``start`` (``time.perf_counter``) once the stage's work is done: on CUDA
        the device is synchronised first, since kernels run asynchronously to the host."""
        if self.tracker.device.type == "cuda":
            torch.cuda.synchronize(self.tracker.device)
        return time.perf_counter() - start

    @staticmethod
    def _cached(window: FrameWindow, frames: list[Frame], key: str, compute) -> list:
        """Per-frame values under ``key``: cached ones reused, the others computed in one call
        and cached (unless the frame has left the window meanwhile)."""
        values = {f.index: window.get_feature(f.index, key) for f in frames}
        missing = [f for f in frames if values[f.index] is None]
        if missing:
            for frame, value in zip(missing, compute(missing)):
                values[frame.index] = value
                try:
                    window.set_feature(frame.index, key, value)
                except KeyError:  # the frame left the window meanwhile: nothing to cache
                    pass
        return [values[f.index] for f in frames]
