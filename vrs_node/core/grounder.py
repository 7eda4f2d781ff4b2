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

*Keyframe selection* (:meth:`Grounder.select`, :func:`~vrs_node.core.grounding.select_keyframes`,
which a remote reasoner's client runs too): TKS scores TAK' on every dense frame's cached SAM-2
features (SAM-2's object score, no mask decoded) and picks the keyframe; TAK' decoded there is the
result (its mask).

Several instructions are reasoned about together (:meth:`Grounder.ground_many`; or
:meth:`Grounder.reason_many` with each instruction over its own frames, as the reasoner server
batches its clients): every per-frame input is read or computed once for the whole batch, each
instruction gets its own text embedding, anchor and lattice, and one batched prefill runs all their prompts
(:meth:`~vrs_node.models.mllm.VrshqMLLM.prefill`: at most two LLM calls; prompts over the same
frames run their common prefix, the frames' tokens, once); TDA then runs per instruction, and TKS
scores each dense frame once for the batch (:meth:`Grounder.select_many`: one object-score call
with the TAK' of every instruction whose lattice holds the frame), chooses per instruction, and
decodes each keyframe once with the TAK' of the instructions that chose it.
Each result equals the instruction's own query (:meth:`Grounder.ground`) within float rounding.

Every per-frame input (CLIP-336 embedding, the MLLM's CLIP patch tokens, SAM-2 features) is computed
at most once per frame and cached in the :class:`FrameWindow` with the frame, so it is evicted with
it; the text embedding is computed once per instruction (the last :data:`TEXT_CACHE_SIZE` are
kept). A query only reads the window and the tracker's weights (TKS's scoring and decoding touch no
memory), so it can run on its own thread while the tracking thread goes on.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vrs_node.core.frames import CLIP_KEY, MLLM_KEY, SAM2_KEY, Frame, FrameWindow
from vrs_node.core.grounding import Grounding, Reasoning, elapsed_s, select_keyframes
from vrs_node.core.sampling import VRSHQ_MAX_DENSE_FRAMES, anchor_lattice, sparse_sample
from vrs_node.core.tracker import StreamingTracker
from vrs_node.core.vrshq import TDA_ALPHA, temporal_dynamic_aggregation
from vrs_node.models.clip_anchor import ClipAnchorScorer
from vrs_node.models.mllm import PrefillInput, SpecialTokenIds, VrshqMLLM, special_token_ids
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


class Grounder:
    """Runs grounding queries over a :class:`FrameWindow` with the MLLM, CLIP anchor and tracker.

    ``anchor_scorer`` may be None when every query is given its anchor frame. ``special_ids``: the
    tokenizer's ``[SEG]``/``[TAK]`` ids as they were looked up where it was loaded
    (``GroundingModels.special_ids``, ``VrshqCheckpoint.special_ids``); None looks them up here."""

    def __init__(self, mllm: VrshqMLLM, tokenizer, anchor_scorer: ClipAnchorScorer | None,
                 tracker: StreamingTracker | None, config: GrounderConfig = GrounderConfig(),
                 special_ids: SpecialTokenIds | None = None, device: str | torch.device | None = None):
        """``tracker`` None makes a reasoning-only grounder (no SAM-2): :meth:`reason_many` with
        ``with_candidates=False`` only; :meth:`select`, :meth:`select_many`, :meth:`ground`,
        :meth:`ground_many` and ``reason_many(..., with_candidates=True)`` raise ValueError.
        ``device``: where the models run, which the stage timings synchronise (default: the
        tracker's; required without a tracker, ValueError otherwise)."""
        if device is None:
            if tracker is None:
                raise ValueError("a grounder without a tracker needs its device")
            device = tracker.device
        self.mllm = mllm
        self.tokenizer = tokenizer
        self.anchor_scorer = anchor_scorer
        self.tracker = tracker
        self.device = torch.device(device)
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

    def prepare(self, instruction: Instruction) -> None:
        """Ready ``instruction`` for queries: its text embedding (so a bad text model fails here,
        when the instruction is given, not in its first query)."""
        self.text_embedding(instruction)

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
                    anchor_frames: Sequence[int | None] | None = None, *, with_candidates: bool = True,
                    frames: Sequence[Sequence[Frame]] | None = None) -> list[Reasoning]:
        """The reasoning part for each instruction, with one batched prefill for all of them (module docstring).

        Instruction i is reasoned about over ``frames[i]`` (frames of ``window.snapshot()``, oldest
        first), or, when ``frames`` is None, over every frame the window holds now; of those, only
        the frames with SAM-2 features unless ``with_candidates=False``. Its anchor, lattice and
        sparse sample are positions in its own frames, so result i is what ``reason_many`` gives
        instruction i alone on a window holding only those frames (with the same cached inputs),
        within the batched prefill's float rounding. Each per-frame input is read or computed once
        for the whole call, whichever instructions' frames hold the frame.

        ``anchor_frames[i]`` (a window frame number among instruction i's frames, or None for the
        CLIP scorer's) fixes instruction i's anchor. ``with_candidates=False`` (a reasoner without
        SAM-2): no SAM-2 feature read, every frame kept, ``Reasoning.candidates`` empty (no
        :meth:`select`). ValueError when an instruction is left without a frame, or ``frames`` is
        not one list per instruction. No instructions: [] (the window is not read).
        """
        self._check_tracker(with_candidates, "read SAM-2 candidates (use with_candidates=False)")
        if not instructions:
            return []
        lists, encoded = self._frame_lists(window, len(instructions), frames, with_candidates)
        timings: dict[str, float] = {}
        anchors = self._anchors(window, lists, instructions, anchor_frames, timings)
        dense = [anchor_lattice(len(fs), anchor, self.config.max_dense_frames) for fs, anchor in zip(lists, anchors)]
        sparse = [sparse_sample(len(fs), self.config.sparse_frames) if self.config.sparse_frames else []
                  for fs in lists]
        needed = self._distinct([[fs[p] for p in (*d, *s)] for fs, d, s in zip(lists, dense, sparse)])
        start = time.perf_counter()
        tokens = dict(zip((f.index for f in needed), self._cached(
            window, needed, MLLM_KEY, lambda fs: self.mllm.frame_tokens([f.image for f in fs]))))
        timings["mllm_frame_tokens"] = self._elapsed(start)

        start = time.perf_counter()
        ids = [tokenize_prompt(build_prompt(instruction, len(d)), self.tokenizer) for instruction, d in
               zip(instructions, dense)]
        outs = self.mllm.prefill([PrefillInput(i, [tokens[fs[p].index] for p in d], [tokens[fs[p].index] for p in s])
                                  for i, fs, d, s in zip(ids, lists, dense, sparse)], self.seg_id, self.tak_id)
        timings["mllm_prefill"] = self._elapsed(start)

        reasoning = []
        for instruction, fs, anchor, d, s, input_ids, out in zip(instructions, lists, anchors, dense, sparse, ids,
                                                                 outs):
            start = time.perf_counter()
            tak, weights = temporal_dynamic_aggregation(out.seg, out.tak, self.config.tda_alpha)
            reasoning.append(Reasoning(
                instruction=instruction, anchor=fs[anchor].index, dense=[fs[p] for p in d],
                candidates=[encoded[fs[p].index] for p in d] if with_candidates else [],
                sparse_frames=[fs[p].index for p in s], input_ids=input_ids, tokens=out, token=tak,
                tda_weights=weights, timings_s={**timings, "tda": self._elapsed(start)}))
        return reasoning

    def select(self, reasoning: Reasoning) -> Grounding:
        """The keyframe selection part of one query: ``select_many([reasoning])[0]``."""
        return self.select_many([reasoning])[0]

    def select_many(self, reasonings: Sequence[Reasoning]) -> list[Grounding]:
        """The keyframe selection part: :func:`select_keyframes` with this grounder's tracker
        (ValueError without one)."""
        self._check_tracker(True, "select keyframes")
        return select_keyframes(self.tracker, reasonings)

    def _frame_lists(self, window: FrameWindow, count: int, frames: Sequence[Sequence[Frame]] | None,
                     with_candidates: bool) -> tuple[list[list[Frame]], dict]:
        """(each instruction's frames, their SAM-2 features by frame number) for :meth:`reason_many`:
        ``frames`` or the window's, only the encoded ones ``with_candidates`` (the features taken
        now: the window may evict these frames during the query); ValueError for a list left empty."""
        if frames is not None and len(frames) != count:
            raise ValueError(f"{len(frames)} frame lists for {count} instructions")
        lists = [window.snapshot()] * count if frames is None else [list(fs) for fs in frames]
        encoded = {}
        if with_candidates:
            held = {frame.index: feats for frame, feats in window.with_feature(SAM2_KEY)}
            encoded = {f.index: held.get(f.index) for f in self._distinct(lists)}
            lists = [[f for f in fs if encoded[f.index] is not None] for fs in lists]
        empty = next((i for i, fs in enumerate(lists) if not fs), None)
        if empty is not None:
            where = "the window" if frames is None else f"instruction {empty}'s {len(frames[empty])} frames"
            raise ValueError(f"no encoded frame in {where} yet: grounding needs at least one")
        return lists, encoded

    def _anchors(self, window: FrameWindow, frames: list[list[Frame]], instructions: Sequence[Instruction],
                 anchor_frames: Sequence[int | None] | None, timings: dict[str, float]) -> list[int]:
        """Each instruction's anchor as a position in its frames ``frames[i]``: the given frame, else
        CLIP's over those frames (the image embeddings of every frame that a CLIP-anchored
        instruction has read or computed once for all; ``timings["clip_anchor"]``)."""
        given = list(anchor_frames) if anchor_frames is not None else [None] * len(instructions)
        if len(given) != len(instructions):
            raise ValueError(f"{len(given)} anchor frames for {len(instructions)} instructions")
        positions = [{f.index: p for p, f in enumerate(fs)} for fs in frames]
        for i, (frame, held) in enumerate(zip(given, positions)):
            if frame is not None and frame not in held:
                raise ValueError(f"anchor frame {frame} is not an encoded frame of the window "
                                 f"(among instruction {i}'s frames)")
        if all(frame is not None for frame in given):
            return [held[frame] for frame, held in zip(given, positions)]
        if self.anchor_scorer is None:
            raise ValueError("this grounder has no CLIP anchor scorer: give the anchor frame")
        start = time.perf_counter()
        scored = self._distinct([fs for fs, frame in zip(frames, given) if frame is None])
        embeddings = dict(zip((f.index for f in scored), self._cached(
            window, scored, CLIP_KEY, lambda fs: [self.anchor_scorer.embed_image(f.image) for f in fs])))
        stacked: dict[tuple[int, ...], torch.Tensor] = {}  # per distinct frame list
        anchors = []
        for instruction, fs, frame, held in zip(instructions, frames, given, positions):
            if frame is not None:
                anchors.append(held[frame])
                continue
            key = tuple(f.index for f in fs)
            if key not in stacked:
                stacked[key] = torch.stack([embeddings[k] for k in key])
            images = stacked[key]
            anchors.append(ClipAnchorScorer.anchor(images, self.text_embedding(instruction).to(images)))
        timings["clip_anchor"] = self._elapsed(start)
        return anchors

    def _elapsed(self, start: float) -> float:
        return elapsed_s(self.device, start)

    def _check_tracker(self, needed: bool, action: str) -> None:
        """ValueError when the tracker is ``needed`` (to ``action``) and this grounder has none."""
        if needed and self.tracker is None:
            raise ValueError(f"this grounder reasons only (it has no tracker, no SAM-2): it cannot {action}")

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

    @staticmethod
    def _distinct(lists: Sequence[Sequence[Frame]]) -> list[Frame]:
        """The frames of all the lists, each once (by window frame number), oldest first."""
        return sorted({f.index: f for fs in lists for f in fs}.values(), key=lambda f: f.index)
