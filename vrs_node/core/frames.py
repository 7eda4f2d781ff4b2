"""Frames and the bounded frame window with its per-frame feature cache.

ROS-free: numpy and the standard library only.

- :class:`Frame` is one camera image with the sequence number the window gave it.
- :class:`FrameWindow` is a thread-safe ring buffer of the most recent frames. Anything cached for a
  frame (image embeddings, CLIP scores, ...) lives in the window next to the frame and is dropped
  with it, so memory stays bounded by ``capacity``.
- The cache keys: :data:`SAM2_KEY` (the frame's SAM-2 features, written by the engine),
  :data:`CLIP_KEY` and :data:`MLLM_KEY` (the grounder's per-frame CLIP anchor embeddings and MLLM
  frame tokens).

Which frames of the window the MLLM sees is :mod:`vrs_node.core.sampling`'s.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


SAM2_KEY = "sam2"
"""Window feature key of a frame's SAM-2 :class:`~vrs_node.core.tracker.FrameFeatures` (written by the engine)."""
CLIP_KEY = "clip_anchor"
"""Window feature key of a frame's CLIP anchor embedding (written by the grounder)."""
MLLM_KEY = "mllm_tokens"
"""Window feature key of a frame's MLLM vision tokens (written by the grounder)."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One RGB camera image held by a :class:`FrameWindow`.

    ``index`` is the monotonic sequence number assigned by the window, ``stamp_ns`` the capture
    time in nanoseconds, ``image`` an H×W×3 uint8 RGB array (read-only when it comes from a
    window), ``frame_id`` the optical frame name from the message header.

    ``camera_hw`` is the camera frame's (height, width); ``height`` and ``width`` are those. The
    image may be smaller than the camera frame (a JPEG decoded at a reduced scale,
    :func:`vrs_node.io.image.compressed_msg_to_rgb`); prompts and masks are in camera pixels
    either way. Default (None): the image's own size. Neither is checked here: a frame is made
    from an image and camera size :func:`check_frame` accepts (:meth:`FrameWindow.append`).

    Frames compare and hash by identity (``eq=False``): comparing the pixel arrays field by field
    would be ambiguous for numpy arrays.
    """

    index: int
    stamp_ns: int
    image: np.ndarray
    frame_id: str = ""
    camera_hw: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.camera_hw is None:
            object.__setattr__(self, "camera_hw", (int(self.image.shape[0]), int(self.image.shape[1])))

    @property
    def height(self) -> int:
        """Camera frame height in pixels."""
        return self.camera_hw[0]

    @property
    def width(self) -> int:
        """Camera frame width in pixels."""
        return self.camera_hw[1]


def check_image(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is an H×W×3 uint8 array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")


def check_frame(image: np.ndarray, camera_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """The one check of a camera frame where it enters (``StreamingEngine.push``,
    ``StreamingTracker.encode``): :func:`check_image` of ``image``, then its :func:`camera_size`."""
    check_image(image)
    return camera_size(image, camera_hw)


def camera_size(image: np.ndarray, camera_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """The camera frame's (height, width) of ``image``: ``camera_hw`` as a tuple of two ints, or
    the image's own (height, width) when it is None. ValueError unless ``camera_hw`` is two
    integers at least as large as the image's sides (the image may be a reduced decode of the
    camera frame, never larger)."""
    image_hw = (int(image.shape[0]), int(image.shape[1]))
    if camera_hw is None:
        return image_hw
    if (len(camera_hw) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in camera_hw)
            or camera_hw[0] < image_hw[0] or camera_hw[1] < image_hw[1]):
        raise ValueError(f"camera_hw must be (height, width), integers at least the image's "
                         f"{image_hw}; got {camera_hw!r}")
    return int(camera_hw[0]), int(camera_hw[1])


class FrameWindow:
    """Thread-safe ring buffer of the last ``capacity`` frames, with a per-frame feature cache.

    ``append`` gives each frame the next sequence number (0, 1, 2, ...; never reused, not even
    after :meth:`clear`) and evicts the oldest frame once ``capacity`` frames are held. Features
    stored with :meth:`set_feature` belong to their frame and are evicted with it, so at most
    ``capacity`` frames' worth of features exist at any time.

    The window does not copy pixels: it keeps a read-only view of the appended array, so the
    caller must not write into that array afterwards (a ROS image conversion yields a fresh
    array per message). Every method takes the window's lock; :meth:`snapshot` returns a list the
    caller owns.
    """

    def __init__(self, capacity: int) -> None:
        """Create an empty window holding at most ``capacity`` (≥ 1) frames."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self._capacity = capacity
        self._lock = threading.Lock()
        self._frames: OrderedDict[int, Frame] = OrderedDict()
        self._features: dict[int, dict[str, Any]] = {}
        self._next_index = 0

    @property
    def capacity(self) -> int:
        """Maximum number of frames held."""
        return self._capacity

    def append(self, image: np.ndarray, stamp_ns: int, frame_id: str = "",
               camera_hw: tuple[int, int] | None = None) -> Frame:
        """Store ``image`` as the newest frame and return it; evicts the oldest frame when full.
        ``camera_hw``: the camera frame's size when ``image`` is a reduced decode of it (:class:`Frame`).

        ``image`` and ``camera_hw`` must be as :func:`check_frame` accepts them; the window does not
        check them again (the engine's ``push`` checks each frame once, where it enters).
        """
        view = image.view()
        view.flags.writeable = False
        with self._lock:
            frame = Frame(self._next_index, int(stamp_ns), view, frame_id, camera_hw)
            self._next_index += 1
            if len(self._frames) >= self._capacity:
                oldest, _ = self._frames.popitem(last=False)
                self._features.pop(oldest, None)
            self._frames[frame.index] = frame
            return frame

    def __len__(self) -> int:
        """Number of frames held."""
        with self._lock:
            return len(self._frames)

    def _missing(self, index: int) -> KeyError:
        """KeyError naming ``index`` and the range held; call with the lock held."""
        if not self._frames:
            return KeyError(f"frame {index} is not in the window (the window is empty)")
        first, last = next(iter(self._frames)), next(reversed(self._frames))
        return KeyError(
            f"frame {index} is not in the window (evicted or never appended; "
            f"held: {first}..{last})"
        )

    @property
    def latest(self) -> Frame | None:
        """The newest frame, or None when the window is empty."""
        with self._lock:
            if not self._frames:
                return None
            return self._frames[next(reversed(self._frames))]

    def indices(self) -> list[int]:
        """Sequence numbers of the frames held, oldest first."""
        with self._lock:
            return list(self._frames)

    def snapshot(self) -> list[Frame]:
        """The frames held, oldest first, as a new list unaffected by later appends."""
        with self._lock:
            return list(self._frames.values())

    def clear(self) -> None:
        """Drop all frames and their features; later frames keep counting up from the last index."""
        with self._lock:
            self._frames.clear()
            self._features.clear()

    def set_feature(self, index: int, key: str, value: Any) -> None:
        """Cache ``value`` under ``key`` for frame ``index``; KeyError if that frame is not held."""
        with self._lock:
            if index not in self._frames:
                raise self._missing(index)
            self._features.setdefault(index, {})[key] = value

    def get_feature(self, index: int, key: str, default: Any = None) -> Any:
        """The value cached under ``key`` for frame ``index``, or ``default`` if there is none."""
        with self._lock:
            return self._features.get(index, {}).get(key, default)

    def with_feature(self, key: str) -> list[tuple[Frame, Any]]:
        """The frames held that have a value cached under ``key``, oldest first, each with that
        value: read together, so evictions after the call change neither."""
        with self._lock:
            return [(frame, self._features[i][key]) for i, frame in self._frames.items()
                    if key in self._features.get(i, {})]

    def has_feature(self, index: int, key: str) -> bool:
        """Whether a value is cached under ``key`` for frame ``index``."""
        with self._lock:
            return key in self._features.get(index, {})

    def feature_count(self) -> int:
        """Total number of cached (frame, key) entries; at most ``capacity`` × distinct keys."""
        with self._lock:
            return sum(len(per_frame) for per_frame in self._features.values())
