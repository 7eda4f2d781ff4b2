"""One grounding query: the frame window + an instruction -> a keyframe and its mask.

The VRS-HQ inference pipeline (REFERENCE_VRSHQ_VIDEOLISA.md §1.2-1.9) made causal over the
window of recent frames:

1. CLIP anchor: anchor = argmax_t cos(CLIP-336 image_t, CLIP text) over the window's frames;
2. dense frames = the VRS-HQ lattice through the anchor (≤ ``max_dense_frames``, one ``[SEG]`` each);
   optional sparse frames = VideoLISA's uniform sparse sample of the whole window (one pooled
   token each; 0 by default, which is VRS-HQ's input exactly);
3. one MLLM prefill -> per-dense-frame SEG tokens and the TAK token;
4. TDA fuses SEG into TAK'; TKS decodes TAK' on every dense frame's cached SAM-2 features and
   picks the keyframe; its decoded mask is the result.

Every per-frame input (CLIP-336 embedding, the MLLM's CLIP patch tokens, SAM-2 features) is computed
at most once per frame and cached in the :class:`FrameWindow` with the frame, so it is evicted with
it; the text embedding is computed once per instruction. ``ground`` only reads the window and the
tracker's weights (``decode_token`` touches no memory), so it can run on its own thread while the
tracking thread goes on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vrs_node.core.frames import CLIP_KEY, MLLM_KEY, SAM2_KEY, Frame, FrameWindow
from vrs_node.core.sampling import VRSHQ_MAX_DENSE_FRAMES, anchor_lattice, sparse_sample
from vrs_node.core.tracker import FrameFeatures, StreamingTracker, TrackResult
from vrs_node.core.vrshq import TDA_ALPHA, select_keyframe, temporal_dynamic_aggregation
from vrs_node.models.clip_anchor import ClipAnchorScorer
from vrs_node.models.mllm import GroundingTokens, SpecialTokenIds, VrshqMLLM, special_token_ids
from vrs_node.models.prompt import Instruction, build_prompt, tokenize_prompt



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
    for inspection and parity checks. ``timings_s`` holds the stages' durations.
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
        self._text: tuple[str, torch.Tensor] | None = None

    def text_embedding(self, instruction: Instruction) -> torch.Tensor:
        """CLIP text embedding of the instruction, computed once per instruction."""
        with self._text_lock:
            if self._text is None or self._text[0] != instruction.text:
                self._text = (instruction.text, self.anchor_scorer.embed_text(instruction.text))
            return self._text[1]

    def ground(self, window: FrameWindow, instruction: Instruction, anchor_frame: int | None = None) -> Grounding:
        """Run one query on the frames the window holds now (those with SAM-2 features).

        ``anchor_frame`` (a window frame number) fixes the anchor instead of the CLIP scorer.
        """
        timings: dict[str, float] = {}
        # The SAM-2 features are taken now: the window may evict these frames during the query.
        held = window.snapshot()
        encoded = {f.index: window.get_feature(f.index, SAM2_KEY) for f in held}
        frames = [f for f in held if encoded[f.index] is not None]
        if not frames:
            raise ValueError("no encoded frame in the window yet: grounding needs at least one")

        if anchor_frame is None:
            if self.anchor_scorer is None:
                raise ValueError("this grounder has no CLIP anchor scorer: give the anchor frame")
            start = time.perf_counter()
            text = self.text_embedding(instruction)
            images = self._cached(window, frames, CLIP_KEY,
                                  lambda fs: [self.anchor_scorer.embed_image(f.image) for f in fs])
            anchor = ClipAnchorScorer.anchor(torch.stack(images), text.to(images[0]))
            timings["clip_anchor"] = self._elapsed(start)
        else:
            positions = {f.index: p for p, f in enumerate(frames)}
            if anchor_frame not in positions:
                raise ValueError(f"anchor frame {anchor_frame} is not an encoded frame of the window")
            anchor = positions[anchor_frame]

        dense = anchor_lattice(len(frames), anchor, self.config.max_dense_frames)
        sparse = sparse_sample(len(frames), self.config.sparse_frames) if self.config.sparse_frames else []
        needed = sorted(set(dense) | set(sparse))
        start = time.perf_counter()
        tokens = dict(zip(needed, self._cached(window, [frames[p] for p in needed], MLLM_KEY,
                                               lambda fs: self.mllm.frame_tokens([f.image for f in fs]))))
        timings["mllm_frame_tokens"] = self._elapsed(start)

        start = time.perf_counter()
        ids = tokenize_prompt(build_prompt(instruction, len(dense)), self.tokenizer)
        out = self.mllm(ids, [tokens[p] for p in dense], self.seg_id, self.tak_id,
                        sparse=[tokens[p] for p in sparse])
        timings["mllm_prefill"] = self._elapsed(start)

        start = time.perf_counter()
        tak, weights = temporal_dynamic_aggregation(out.seg, out.tak, self.config.tda_alpha)
        candidates = [encoded[frames[p].index] for p in dense]
        key = select_keyframe(self.tracker, candidates, tak, weights)
        timings["tks"] = self._elapsed(start)

        keyframe = frames[dense[key.position]]
        return Grounding(
            instruction=instruction, keyframe=keyframe.index, keyframe_stamp_ns=keyframe.stamp_ns,
            keyframe_features=candidates[key.position], token=tak, keyframe_result=key.result,
            anchor=frames[anchor].index,
            dense_frames=[frames[p].index for p in dense], sparse_frames=[frames[p].index for p in sparse],
            input_ids=ids, tokens=out, tks_object_scores=key.object_scores.tolist(),
            tks_scores=key.scores.tolist(), tda_weights=weights.tolist(), timings_s=timings)

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
