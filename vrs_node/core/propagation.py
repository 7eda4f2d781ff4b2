"""VRS-HQ's offline protocol: one prompt on a keyframe, tracked forward, then backward.

ROS-free. It is what ``VrshqForCausalLM.model_forward(inference=True)`` does after keyframe
selection (VRS-HQ ``model/VISA_multiseg_cliptree_bf16.py``), on the frames' cached features:

1. reset; condition the keyframe with the prompt (for VRS-HQ a :class:`TokenPrompt` with TAK':
   the token is decoded and its thresholded S x S mask conditions the frame, see ``TokenPrompt``);
   track forward over the frames after it (``propagate_in_video(start=keyframe, reverse=False)``);
2. reset (the backward pass sees no forward memory); condition the keyframe again with the same
   prompt; track backward over the frames before it (``reverse=True``).

Processing order for N frames and keyframe k (VRS-HQ's ``propagate_in_video`` yields the
conditioning frame first in each pass): ``k, k+1, ..., N-1`` then ``k, k-1, ..., 0``; as in
VRS-HQ's three branches, k = 0 runs the forward pass only and k = N-1 the backward pass only. Each
frame's result is its first one: the keyframe's comes from the first pass (conditioning it again
gives the same output), as VRS-HQ's ``cat(flip(backward)[:-1], forward)`` keeps it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from vrs_node.core.prompts import Prompt
from vrs_node.core.track_result import TrackResult
from vrs_node.core.tracker import FrameFeatures, StreamingTracker


def reference_order(num_frames: int, keyframe: int) -> list[int]:
    """Frame indices in the order :func:`propagation_steps` yields them (VRS-HQ's order)."""
    if not 0 <= keyframe < num_frames:
        raise ValueError(f"keyframe {keyframe} is outside the {num_frames} frames")
    forward, backward = list(range(keyframe, num_frames)), list(range(keyframe, -1, -1))
    if keyframe == 0:
        return forward
    if keyframe == num_frames - 1:
        return backward
    return forward + backward


def propagation_steps(tracker: StreamingTracker, features: Sequence[FrameFeatures], keyframe: int,
                      prompt: Prompt) -> Iterator[tuple[int, TrackResult]]:
    """Run the protocol lazily: yield (frame index, result) in :func:`reference_order`.

    The tracker is reset at the start of each pass; after the last step it holds the last pass's
    memory.
    """
    for frame in reference_order(len(features), keyframe):
        if frame == keyframe:  # the start of a pass
            tracker.reset()
            yield frame, tracker.condition(features[frame], prompt)
        else:
            yield frame, tracker.track(features[frame])


def first_results(tracker: StreamingTracker, features: Sequence[FrameFeatures], keyframe: int,
                  prompt: Prompt) -> Iterator[tuple[int, TrackResult, float]]:
    """(frame, result, seconds of its step) for every frame once, in :func:`reference_order`: a
    frame's first result. The keyframe's second conditioning, at the start of the backward pass,
    is run but neither yielded nor timed (VRS-HQ keeps the first)."""
    seen = set()
    steps = propagation_steps(tracker, features, keyframe, prompt)
    while True:
        start = time.perf_counter()
        step = next(steps, None)
        if step is None:
            return
        frame, result = step
        if frame not in seen:
            seen.add(frame)
            yield frame, result, time.perf_counter() - start


def propagate_reference(tracker: StreamingTracker, features: Sequence[FrameFeatures], keyframe: int,
                        prompt: Prompt) -> list[TrackResult]:
    """One result per frame (index = frame) from VRS-HQ's forward-then-backward protocol."""
    results: list[TrackResult | None] = [None] * len(features)
    for frame, result, _ in first_results(tracker, features, keyframe, prompt):
        results[frame] = result
    return results  # type: ignore[return-value]
