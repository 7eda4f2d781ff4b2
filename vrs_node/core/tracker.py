"""Streaming SAM-2 tracker: frames pushed one at a time into ``SAM2Base``, bounded memory bank.

``sam2``'s ``SAM2VideoPredictor`` decodes a whole video up front and keeps every frame's output
forever. :class:`StreamingTracker` drives the same ``SAM2Base`` one frame at a time and keeps only
what ``SAM2Base._prepare_memory_conditioned_features`` can read:

- at most ``max_cond_frames`` conditioning (prompted) frames, oldest dropped first;
- the last ``keep`` non-conditioning outputs, where
  ``keep = max(max_obj_ptrs_in_encoder - 1, 1 + (num_maskmem - 2) * memory_temporal_stride)``
  (15 for every released config: 6 spatial memories, 15 object pointers);
- one shared copy of ``maskmem_pos_enc`` (identical for every frame).

Memory time is the tracker's own step counter (one step per prompt or tracked frame), not the
camera frame number, so frames dropped upstream never leave holes in the memory that SAM-2 reads.

Equivalence with the video predictor (same weights, same frames, prompt on the first frame):
a prompt step runs ``track_step(is_init_cond_frame=True, run_mem_encoder=False)`` and then encodes
memory from the low-res logits upsampled to S x S with ``is_mask_from_pts=True``, as
``propagate_in_video_preflight`` does; memory features are stored in ``memory_dtype`` (bf16, as
sam2's ``_run_single_frame_inference`` stores them; VRS-HQ's fork keeps them in the model's dtype).

Hole filling (``fill_hole_area``, :mod:`vrs_node.core.hole_filling`): as in the predictor's
``_run_single_frame_inference`` it changes a frame's output (and, on a conditioning frame, the
mask its memory is encoded from, since the predictor encodes prompted frames from their stored
output); a tracked frame's memory is encoded inside ``track_step`` from the unfilled mask.

The prompts are :mod:`vrs_node.core.prompts`'s, their conversion to SAM-2's inputs
:mod:`vrs_node.core.prompt_inputs`'s; a frame's output is a :class:`~vrs_node.core.track_result.TrackResult`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vrs_node.core.frames import Frame, check_frame
from vrs_node.core.hole_filling import fill_holes_in_mask_scores
from vrs_node.core.prompt_inputs import decoded_mask_input, mask_input, point_input
from vrs_node.core.prompts import MaskPrompt, PointsPrompt, Prompt, TokenPrompt, checked_prompt
from vrs_node.core.token_decoding import decode_heads, object_score_logits, score_chunks
from vrs_node.core.track_result import TrackResult
from vrs_node.models.sam2_build import FILL_HOLE_AREA, SamImageTransform

DEFAULT_NUM_FRAMES = 1 << 30
"""``num_frames`` given to ``track_step``: SAM-2 only uses it as min(num_frames, 16) and as an upper
bound on frame indices, so a stream passes a number larger than any index."""


@dataclass(frozen=True)
class FrameFeatures:
    """SAM-2 image features of one frame, in the flattened (HW, B, C) layout ``track_step`` takes.

    ``vision_feats`` holds the three levels (the two high-resolution ones already projected by
    the decoder's ``conv_s0``/``conv_s1``); ``top_pos_embed`` is the positional encoding of the
    lowest-resolution level, the only one the tracker reads. ``image_hw`` is the camera size
    (H, W): prompts are in camera pixels and masks come back at that size, also when the encoded
    image was a smaller (reduced) decode of the camera frame.
    """

    vision_feats: tuple[torch.Tensor, ...]
    top_pos_embed: torch.Tensor
    feat_sizes: tuple[tuple[int, int], ...]
    image_hw: tuple[int, int]


class StreamingTracker:
    """Single-object SAM-2 tracking with frames pushed one at a time and a bounded memory bank.

    Typical use: ``feats = tracker.encode(image)``; ``tracker.condition(feats, prompt)`` once;
    then ``tracker.track(tracker.encode(next_image))`` per frame. ``catch_up`` re-conditions on a
    past frame and tracks the buffered frames after it. ``decode_token`` scores a token prompt on a
    frame without touching the memory (for keyframe selection); ``decode_tokens`` several at once,
    ``grouped_decode_tokens`` several frames' at once.

    ``fill_hole_area``: the predictor's hole filling (module docstring; 0 turns it off);
    ``memory_dtype``: dtype the memory features are stored in (``Sam2Spec.tracker_options`` gives
    both as the spec's reference predictor sets them).

    ``autocast_dtype``: None runs the model as it is (float32 weights: plain float32); a dtype
    (``torch.bfloat16``) runs every model call -- the image encoder, ``track_step``, the memory
    encoder and the token decode -- under ``torch.autocast(device_type=<model device type>,
    dtype=autocast_dtype)`` with the weights left float32, as sam2's own predictor and demos run
    on CUDA (``vrs_node.models.precision.tracker_precision_options``). The encoded
    :class:`FrameFeatures` are then in that dtype; the low-res logits given back stay float32
    (sam2 casts them) and the memory bank stores ``memory_dtype`` either way.
    """

    def __init__(self, model: torch.nn.Module, transform: SamImageTransform, max_cond_frames: int = 4,
                 num_frames: int = DEFAULT_NUM_FRAMES, fill_hole_area: int = FILL_HOLE_AREA,
                 memory_dtype: torch.dtype = torch.bfloat16, autocast_dtype: torch.dtype | None = None):
        if max_cond_frames < 1:
            raise ValueError(f"max_cond_frames must be >= 1, got {max_cond_frames}")
        if fill_hole_area < 0:
            raise ValueError(f"fill_hole_area must be >= 0, got {fill_hole_area}")
        if transform.image_size != model.image_size:
            raise ValueError(f"transform size {transform.image_size} != model size {model.image_size}")
        self.model = model
        self.transform = transform
        self.max_cond_frames = max_cond_frames
        self.num_frames = num_frames
        self.fill_hole_area = fill_hole_area
        self.memory_dtype = memory_dtype
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype}")
        self.autocast_dtype = autocast_dtype
        stride = model.memory_temporal_stride_for_eval
        self._top_pos_embeds: dict[tuple[int, int], torch.Tensor] = {}
        self.keep_non_cond = max(model.max_obj_ptrs_in_encoder - 1 if model.use_obj_ptrs_in_encoder else 0,
                                 1 + (model.num_maskmem - 2) * stride)
        self.reset()

    @property
    def device(self) -> torch.device:
        """Device the model (and all tracker tensors) live on."""
        return self.model.device

    @property
    def has_prompt(self) -> bool:
        """True once a prompt has conditioned the tracker (until ``reset``)."""
        return bool(self._bank["cond_frame_outputs"])

    def reset(self) -> None:
        """Forget every prompt and memory."""
        self._bank = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        self._maskmem_pos_enc = None
        self._step = 0

    def encode(self, image: np.ndarray, camera_hw: tuple[int, int] | None = None) -> FrameFeatures:
        """Run the image encoder on one camera frame (H x W x 3 uint8 RGB). ``camera_hw`` is the
        camera size when ``image`` is a smaller (reduced) decode of the frame (default: the
        image's size); the features' ``image_hw`` is the camera size, the transform fits the
        image into the input as the camera frame would fit (:class:`SamImageTransform`). Both are
        checked first (ValueError: :func:`~vrs_node.core.frames.check_frame`);
        :meth:`encode_frame` encodes a window frame without checking it again."""
        return self._encode(image, check_frame(image, camera_hw))

    def encode_frame(self, frame: Frame) -> FrameFeatures:
        """:meth:`encode` of a window frame's image at its camera size, trusted as checked where it
        entered the window (``StreamingEngine.push`` checks each frame once)."""
        return self._encode(frame.image, frame.camera_hw)

    @torch.inference_mode()
    def _encode(self, image: np.ndarray, camera_hw: tuple[int, int]) -> FrameFeatures:
        """The image encoder on a checked image (:meth:`encode`)."""
        x = self.transform(image, self.device, camera_hw)
        with self.autocast():
            backbone_out = self.model.forward_image(x)
            _, feats, pos, sizes = self.model._prepare_backbone_features(backbone_out)
        # The positional encoding depends only on the feature size: one tensor serves every frame.
        top_pos = self._top_pos_embeds.setdefault(tuple(sizes[-1]), pos[-1])
        return FrameFeatures(tuple(feats), top_pos, tuple(sizes), camera_hw)

    @torch.inference_mode()
    def condition(self, feats: FrameFeatures, prompt: Prompt) -> TrackResult:
        """Make this frame a conditioning frame from ``prompt``; the running track is superseded.

        Non-conditioning memory is cleared (it belongs to the previous prompt); earlier
        conditioning frames stay, up to ``max_cond_frames`` in all. A :class:`TokenPrompt`
        conditions with the binary S x S mask of its decode (see there); the result is then the
        mask-as-output of that mask, as VRS-HQ's propagation outputs it on the keyframe.
        """
        point_inputs, mask_inputs = None, None
        checked_prompt(prompt)  # TypeError for anything that is not a Prompt
        if isinstance(prompt, TokenPrompt):
            mask_inputs = self._token_mask_input(feats, prompt)
        elif isinstance(prompt, MaskPrompt):
            mask_inputs = mask_input(prompt.mask, feats.image_hw, self.transform, self.device)
        elif isinstance(prompt, PointsPrompt):
            point_inputs = point_input(prompt, feats.image_hw, self.transform, self.device)
        t = self._next_step()
        self._bank["non_cond_frame_outputs"].clear()
        out = self._track_step(t, feats, True, point_inputs, mask_inputs)
        # The predictor fills holes in the output and encodes a prompted frame's memory from it.
        out["pred_masks"] = self.fill_holes(out["pred_masks"])
        size = self.model.image_size
        high_res = F.interpolate(out["pred_masks"], size=(size, size), mode="bilinear", align_corners=False)
        with self.autocast():
            maskmem, pos_enc = self.model._encode_new_memory(
                current_vision_feats=list(feats.vision_feats), feat_sizes=list(feats.feat_sizes),
                pred_masks_high_res=high_res, object_score_logits=out["object_score_logits"],
                is_mask_from_pts=True)
        out["maskmem_features"], out["maskmem_pos_enc"] = maskmem, pos_enc
        cond = self._bank["cond_frame_outputs"]
        cond[t] = self.compact(out)
        while len(cond) > self.max_cond_frames:
            del cond[min(cond)]
        return self._result(out, feats)

    @torch.inference_mode()
    def track(self, feats: FrameFeatures) -> TrackResult:
        """Track the target into a new frame from memory (requires a prompt first)."""
        if not self.has_prompt:
            raise RuntimeError("the tracker has no prompt yet: call condition() first")
        t = self._next_step()
        out = self._track_step(t, feats, False)
        out["pred_masks"] = self.fill_holes(out["pred_masks"])  # output only: memory is encoded already
        non_cond = self._bank["non_cond_frame_outputs"]
        non_cond[t] = self.compact(out)
        for old in [k for k in non_cond if k <= t - self.keep_non_cond]:
            del non_cond[old]
        return self._result(out, feats)

    def catch_up(self, keyframe: FrameFeatures, prompt: Prompt,
                 following: list[FrameFeatures]) -> list[TrackResult]:
        """Condition on a past ``keyframe`` and track the buffered ``following`` frames in order.

        Returns the keyframe's result followed by one result per following frame; after it the
        tracker is ready for the next live frame.
        """
        results = [self.condition(keyframe, prompt)]
        results += [self.track(f) for f in following]
        return results

    @torch.inference_mode()
    def decode_token(self, feats: FrameFeatures, token: torch.Tensor) -> TrackResult:
        """Decode a token prompt on a frame as a fresh conditioning frame; memory is untouched.

        The low-res logits are those ``add_new_points`` computes (object-score gate, holes filled).
        The one-token case of :meth:`decode_tokens` (the same computation, bit for bit).
        """
        return self.decode_tokens(feats, [token])[0]

    def decode_tokens(self, feats: FrameFeatures, tokens: Sequence[torch.Tensor]) -> list[TrackResult]:
        """:meth:`decode_token` of each token on one frame, in one mask-decoder call: the tokens
        batched along the batch dim over the frame's features expanded (not copied), as sam2
        decodes several objects. Result i equals ``decode_token(feats, tokens[i])`` within float
        rounding (max |diff| measured on tiny-random, fp32 CPU, 128 and 256 px, 2-8 tokens: 4.2e-7
        in the logits, 4.8e-7 in the object score); no tokens: [] (no decoder call).
        """
        return self.grouped_decode_tokens([(feats, tokens)])[0]

    @torch.inference_mode()
    def grouped_decode_tokens(self, groups: Sequence[tuple[FrameFeatures, Sequence[torch.Tensor]]]
                              ) -> list[list[TrackResult]]:
        """:meth:`decode_tokens` of each (features, tokens) group, the groups decoded together
        (:meth:`_in_chunks`); within float rounding of one call per group, and a call of one group
        is that group's call, bit for bit."""
        def decode(chunk):
            out = decode_heads(self.model, chunk, self.num_frames)
            low_res, scores = self.fill_holes(out["pred_masks"]), out["object_score_logits"]
            frames = [feats for feats, tokens in chunk for _ in tokens]
            return [self._result({"pred_masks": low_res[b:b + 1], "object_score_logits": scores[b]}, feats)
                    for b, feats in enumerate(frames)]
        return self._in_chunks(groups, decode)

    @torch.inference_mode()
    def token_object_scores(self, feats: FrameFeatures, tokens: Sequence[torch.Tensor]) -> list[float]:
        """The object score of each token as :meth:`decode_tokens` gives it (bit for bit: the same
        batch, the same computation), without decoding masks
        (:func:`~vrs_node.core.token_decoding.object_score_logits`); no tokens: []."""
        return self.grouped_object_scores([(feats, tokens)])[0]

    @torch.inference_mode()
    def grouped_object_scores(self, groups: Sequence[tuple[FrameFeatures, Sequence[torch.Tensor]]]
                              ) -> list[list[float]]:
        """:meth:`token_object_scores` of each (features, tokens) group, the groups decoded together
        (:meth:`_in_chunks`): a call's fixed cost (the prompt encoder, the positional encoding,
        dispatch) is paid once for its frames. Within float rounding of one call per group (a
        larger batch); a call of one group is that group's call, bit for bit."""
        return self._in_chunks(groups, lambda chunk: object_score_logits(
            self.model, chunk, self.num_frames).reshape(-1).tolist())

    def _in_chunks(self, groups: Sequence[tuple[FrameFeatures, Sequence[torch.Tensor]]], run) -> list[list]:
        """``run(chunk)`` (one output per token of the chunk's groups, in order) over ``groups`` in
        calls of at most :data:`~vrs_node.core.token_decoding.SCORE_BATCH` tokens, groups kept whole
        (:func:`~vrs_node.core.token_decoding.score_chunks`), each call under :meth:`autocast`; the
        outputs split back into one list per group (a group without tokens: [])."""
        outputs: list[list] = [[] for _ in groups]
        for chunk in score_chunks([len(tokens) for _, tokens in groups]):
            with self.autocast():
                flat = run([groups[i] for i in chunk])
            for i in chunk:
                n = len(groups[i][1])
                outputs[i], flat = flat[:n], flat[n:]
        return outputs

    @property
    def maskmem_pos_enc(self) -> list[torch.Tensor] | None:
        """The one stored copy of the memory positional encoding (the same for every frame), None
        before the first memory is stored."""
        return self._maskmem_pos_enc

    def pop_newest_conditioning(self) -> dict:
        """Remove the newest conditioning frame's stored entry from the memory bank and return it
        (as :meth:`compact` made it); for a tracker that keeps several targets' banks itself
        (:class:`~vrs_node.core.targets.MultiTargetTracker`). KeyError when there is none."""
        cond = self._bank["cond_frame_outputs"]
        if not cond:
            raise KeyError("no conditioning frame is stored")
        return cond.pop(max(cond))

    def state_size(self) -> tuple[int, int]:
        """(number of stored frame outputs, bytes of all tensors the memory bank holds)."""
        outs = [*self._bank["cond_frame_outputs"].values(), *self._bank["non_cond_frame_outputs"].values()]
        tensors = [v for out in outs for v in out.values() if isinstance(v, torch.Tensor)]
        tensors += list(self._maskmem_pos_enc or [])
        return len(outs), sum(t.numel() * t.element_size() for t in tensors)

    def _track_step(self, t: int, feats: FrameFeatures, prompted: bool, point_inputs: dict | None = None,
                    mask_inputs: torch.Tensor | None = None) -> dict:
        """``SAM2Base.track_step`` at memory time ``t`` on ``feats`` over the memory bank: a prompted
        frame (``is_init_cond_frame``, memory encoded by the caller) or a tracked one (memory
        encoded inside, ``run_mem_encoder``)."""
        with self.autocast():
            return self.model.track_step(
                frame_idx=t, is_init_cond_frame=prompted, current_vision_feats=list(feats.vision_feats),
                current_vision_pos_embeds=[feats.top_pos_embed], feat_sizes=list(feats.feat_sizes),
                point_inputs=point_inputs, mask_inputs=mask_inputs, output_dict=self._bank,
                num_frames=self.num_frames, run_mem_encoder=not prompted)

    def _next_step(self) -> int:
        t, self._step = self._step, self._step + 1
        return t

    def compact(self, out: dict) -> dict:
        """What the memory bank keeps of a ``track_step`` output (as the video predictor stores it):
        memory features in ``memory_dtype``, the one shared ``maskmem_pos_enc``
        (:attr:`maskmem_pos_enc`), the low-res logits, the object pointer and score."""
        if self._maskmem_pos_enc is None:
            self._maskmem_pos_enc = [p[0:1].clone() for p in out["maskmem_pos_enc"]]
        return {
            "maskmem_features": out["maskmem_features"].to(self.memory_dtype),
            "maskmem_pos_enc": self._maskmem_pos_enc,
            "pred_masks": out["pred_masks"],
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }

    def _result(self, out: dict, feats: FrameFeatures) -> TrackResult:
        return TrackResult(out["pred_masks"], float(out["object_score_logits"].reshape(-1)[0]),
                           feats.image_hw, self.transform)

    def fill_holes(self, low_res: torch.Tensor) -> torch.Tensor:
        """``low_res`` logits with the holes of at most ``fill_hole_area`` pixels filled
        (:func:`~vrs_node.core.hole_filling.fill_holes_in_mask_scores`)."""
        return fill_holes_in_mask_scores(low_res, self.fill_hole_area)

    def autocast(self):
        """The context every model call runs in: ``torch.autocast`` to ``autocast_dtype`` on the
        model's current device type, or no context at all when ``autocast_dtype`` is None."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _token_mask_input(self, feats: FrameFeatures, prompt: TokenPrompt) -> torch.Tensor:
        """1 x 1 x S x S {0, 1} mask of the token's decode on ``feats``
        (:func:`~vrs_node.core.prompts.decoded_mask_input`): of the prompt's ``low_res_logits``
        when it carries them, else of a decode run here (holes filled)."""
        low_res = prompt.low_res_logits
        if low_res is None:
            with self.autocast():
                decoded = decode_heads(self.model, [(feats, [prompt.token])], self.num_frames)
            low_res = self.fill_holes(decoded["pred_masks"])
        return decoded_mask_input(low_res.to(self.device), self.model.image_size)
