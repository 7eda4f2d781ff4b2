"""VRS-HQ's offline protocol over a whole video: every frame encoded, one grounding query, one
prompt on the keyframe propagated forward and then backward.

ROS-free. This is the reference protocol (VRS-HQ ``evaluation_multiseg.py``), not the streaming
engine's: the whole video is the window, so it is not causal. Its steps:

1. :meth:`OfflineVideo.add`: each frame is encoded once (SAM-2 features cached with the frame in a
   :class:`~vrs_node.core.frames.FrameWindow` that holds every frame; frame numbers = positions);
2. :meth:`OfflineVideo.ground`: one :meth:`~vrs_node.core.grounder.Grounder.ground` query over all
   frames (CLIP anchor, lattice <= 11 frames, TDA, TKS) picks the keyframe and TAK';
3. :meth:`OfflineVideo.propagate`: :func:`~vrs_node.core.propagation.first_results` conditions
   the keyframe with the prompt (for an instruction, ``TokenPrompt(TAK')``: its decode thresholded
   at the SAM input resolution, as VRS-HQ does) and tracks forward, then, after a reset (the
   backward pass sees no forward memory), backward over the preceding frames.

:func:`segment_offline` runs the three on a list of images; ``vrs-replay --mode offline`` runs
them one by one (progress, timings) and ``vrs-parity`` compares them with the authors' outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from vrs_node.core.frames import SAM2_KEY, FrameWindow
from vrs_node.core.grounder import Grounder
from vrs_node.core.grounding import Grounding
from vrs_node.core.prompts import Prompt, TokenPrompt
from vrs_node.core.propagation import first_results, propagate_reference
from vrs_node.core.track_result import TrackResult
from vrs_node.core.tracker import FrameFeatures, StreamingTracker
from vrs_node.models.prompt import Instruction


class OfflineVideo:
    """A video of at most ``num_frames`` frames, encoded by ``tracker``, for the offline protocol.

    Frames are numbered by position (0, 1, ...) in the order :meth:`add` receives them; a
    :class:`Grounding` of :meth:`ground` names frames by these numbers."""

    def __init__(self, tracker: StreamingTracker, num_frames: int):
        self.tracker = tracker
        self._window = FrameWindow(num_frames)
        self._features: list[FrameFeatures] = []

    def add(self, image: np.ndarray, stamp_ns: int, frame_id: str = "") -> None:
        """Encode ``image`` (H x W x 3 uint8 RGB) as the next frame. ValueError for another image,
        or once the video holds ``num_frames`` frames (the first frame would leave the window)."""
        if len(self._features) == self._window.capacity:
            raise ValueError(f"the video holds its {self._window.capacity} frames already")
        features = self.tracker.encode(image)  # checks the image
        frame = self._window.append(image, stamp_ns, frame_id)
        self._window.set_feature(frame.index, SAM2_KEY, features)
        self._features.append(features)

    def ground(self, grounder: Grounder, instruction: Instruction, anchor_frame: int | None = None) -> Grounding:
        """One grounding query over every frame added (``anchor_frame`` fixes the anchor instead
        of the CLIP scorer); ``grounder`` must score keyframes with this video's tracker."""
        if grounder.tracker is not self.tracker:
            raise ValueError("the grounder must score keyframes with the video's tracker")
        return grounder.ground(self._window, instruction, anchor_frame=anchor_frame)

    @property
    def features(self) -> list[FrameFeatures]:
        """The frames' SAM-2 features, by frame number."""
        return list(self._features)

    def propagate(self, keyframe: int, prompt: Prompt) -> Iterator[tuple[int, TrackResult, float]]:
        """(frame, result, seconds of its step) for every frame once, in
        :func:`~vrs_node.core.propagation.reference_order`: ``prompt`` conditions ``keyframe``,
        tracked forward, then backward from a reset tracker
        (:func:`~vrs_node.core.propagation.first_results`). ValueError for a keyframe outside the video."""
        return first_results(self.tracker, self._features, keyframe, prompt)


@dataclass(frozen=True)
class OfflineSegmentation:
    """The protocol's answer: ``results[i]`` is frame i's; ``keyframe`` the frame the prompt
    conditioned; ``grounding`` the query that chose it (None when a prompt was given)."""

    keyframe: int
    results: list[TrackResult]
    grounding: Grounding | None


def segment_offline(tracker: StreamingTracker, images: Sequence[np.ndarray], target: Instruction | Prompt,
                    grounder: Grounder | None = None, keyframe: int = 0,
                    anchor_frame: int | None = None) -> OfflineSegmentation:
    """Run the offline protocol over ``images`` (frame i stamped i ns).

    ``target`` an :class:`Instruction`: one grounding query by ``grounder`` (required; over
    ``tracker``) picks the keyframe and TAK' conditions it (``anchor_frame`` as
    :meth:`OfflineVideo.ground`); a prompt: it conditions ``keyframe``."""
    video = OfflineVideo(tracker, len(images))
    for index, image in enumerate(images):
        video.add(image, index, str(index))
    grounding = None
    if isinstance(target, Instruction):
        if grounder is None:
            raise ValueError("an instruction needs a grounder")
        grounding = video.ground(grounder, target, anchor_frame)
        keyframe, target = grounding.keyframe, TokenPrompt(grounding.token)
    return OfflineSegmentation(keyframe, propagate_reference(tracker, video.features, keyframe, target), grounding)
