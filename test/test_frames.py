"""Tests for vrs_node.core.frames: the frame window, its feature cache and the sampling rules.

Expected index lists for the sampling rules are worked out by hand from the upstream formulas
(VRS-HQ ``sample_frames``; VideoLISA ``chat.py`` ``uniform_sample`` / ``get_sparse_indices``), not
produced by the code under test.
"""

import dataclasses
import sys
import threading

import numpy as np
import pytest

from vrs_node.core.frames import Frame, FrameWindow, camera_size, check_frame
from vrs_node.core.sampling import anchor_lattice, sparse_sample


def _image(value: int = 0, height: int = 4, width: int = 6) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# anchor_lattice (VRS-HQ)


def test_anchor_lattice_t100_anchor37():
    # step = ceil(100/11) = 10, start = 37 mod 10 = 7
    assert anchor_lattice(100, 37) == [7, 17, 27, 37, 47, 57, 67, 77, 87, 97]


def test_anchor_lattice_t200_anchor123():
    # step = ceil(200/11) = 19, start = 123 mod 19 = 9
    assert anchor_lattice(200, 123) == [9, 28, 47, 66, 85, 104, 123, 142, 161, 180, 199]


def test_anchor_lattice_t12_gives_six_frames():
    # step = ceil(12/11) = 2
    assert anchor_lattice(12, 5) == [1, 3, 5, 7, 9, 11]
    assert anchor_lattice(12, 0) == [0, 2, 4, 6, 8, 10]


def test_anchor_lattice_t23_count_depends_on_anchor():
    # step = 3: 7 frames when the anchor is 2 mod 3, 8 frames otherwise
    assert anchor_lattice(23, 2) == [2, 5, 8, 11, 14, 17, 20]
    assert anchor_lattice(23, 0) == [0, 3, 6, 9, 12, 15, 18, 21]


def test_anchor_lattice_short_clip_gives_every_frame():
    assert anchor_lattice(8, 3) == list(range(8))
    assert anchor_lattice(1, 0) == [0]


def test_anchor_lattice_max_frames_one_gives_anchor_only():
    assert anchor_lattice(50, 17, max_frames=1) == [17]


def test_anchor_lattice_properties():
    for t in range(1, 160):
        for anchor in range(t):
            idx = anchor_lattice(t, anchor)
            assert anchor in idx
            assert 1 <= len(idx) <= 11
            assert idx[0] >= 0 and idx[-1] < t
            assert len({b - a for a, b in zip(idx, idx[1:])}) <= 1  # one constant step
            if t <= 11:
                assert idx == list(range(t))


@pytest.mark.parametrize(
    "args",
    [(0, 0), (-3, 0), (10, -1), (10, 10), (10, 11), (10, 2, 0), (10, 2, -1)],
)
def test_anchor_lattice_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        anchor_lattice(*args)


# ---------------------------------------------------------------------------------------------
# sparse_sample (VideoLISA)


def test_sparse_t100():
    # bin width 3.125: edges 0, 3, 6, 9, 12, 15, 18, 21, 25, ... repeating every 25 frames
    sparse = sparse_sample(100, 32)
    assert sparse[:4] == [1, 4, 7, 10]
    assert sparse[-1] == 97
    assert sparse == [25 * k + j for k in range(4) for j in (1, 4, 7, 10, 13, 16, 19, 22)]


def test_sparse_t40():
    # bin width 1.25: bins [0,0] [1,1] [2,2] [3,4] then repeating every 5 frames
    assert sparse_sample(40, 32) == [5 * k + j for k in range(8) for j in (0, 1, 2, 3)]


def test_sparse_t10_repeats_and_adds_bin_centres():
    # 32 = 3*10 + 2: every frame 3 times, plus the centres of 2 bins over [0,10): 2 and 7
    sparse = sparse_sample(10, 32)
    assert sparse == sorted(list(range(10)) * 3 + [2, 7])
    assert sparse[:10] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


def test_sparse_t32_is_every_frame_once():
    assert sparse_sample(32, 32) == list(range(32))


def test_sparse_t33_skips_last_frame():
    # bin width 33/32: bins [0,0] ... [30,30], [31,32] whose centre is 31; frame 32 is never taken
    assert sparse_sample(33, 32) == list(range(32))


def test_sparse_single_frame_repeated():
    assert sparse_sample(1, 32) == [0] * 32


def test_sparse_uses_upstream_float_linspace_edges():
    # T=58, S=50: exact edge 25*58/50 = 29, but float linspace gives 28.999999999999996 -> 28,
    # so upstream's bin 25 is [28, 29] (centre 28), not [29, 29] (centre 29).
    assert sparse_sample(58, 50)[24:27] == [27, 28, 30]


def test_sparse_properties():
    for s in range(1, 40):
        for t in range(1, 120):
            sparse = sparse_sample(t, s)
            assert len(sparse) == s
            assert sparse == sorted(sparse)
            assert 0 <= sparse[0] and sparse[-1] < t
            if t >= s:
                assert len(set(sparse)) == s
            else:
                counts = np.bincount(sparse, minlength=t)
                assert set(counts.tolist()) <= {s // t, s // t + 1}
                assert counts.min() >= 1


@pytest.mark.parametrize("args", [(0, 32), (-1, 32), (10, 0), (10, -1)])
def test_sparse_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        sparse_sample(*args)


# ---------------------------------------------------------------------------------------------
# Frame and FrameWindow


def test_frame_fields_and_size():
    frame = Frame(index=3, stamp_ns=10, image=_image(height=5, width=7), frame_id="cam")
    assert (frame.index, frame.stamp_ns, frame.frame_id) == (3, 10, "cam")
    assert (frame.height, frame.width) == (5, 7)
    assert Frame(0, 0, _image()).frame_id == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.index = 4


def test_frame_size_is_the_camera_size_the_image_may_be_smaller():
    """A reduced decode of a 10 x 14 camera frame: height/width are the camera's, the image stays."""
    frame = Frame(0, 0, _image(height=5, width=7), camera_hw=(10, 14))
    assert (frame.height, frame.width) == (10, 14) and frame.camera_hw == (10, 14)
    assert frame.image.shape == (5, 7, 3)
    assert Frame(0, 0, _image(height=5, width=7)).camera_hw == (5, 7)
    image = _image(height=5, width=7)
    held = FrameWindow(2).append(image, 0, "cam", camera_hw=check_frame(image, (np.int64(9), 13)))
    assert held.camera_hw == (9, 13) and type(held.camera_hw[0]) is int


@pytest.mark.parametrize("camera_hw", [(4, 7), (5, 6), (5,), (5, 7, 3), (5.0, 7), (True, 7), "57"])
def test_a_camera_size_smaller_than_the_image_or_not_two_ints_is_refused(camera_hw):
    for check in (camera_size, check_frame):
        with pytest.raises(ValueError, match="camera_hw"):
            check(_image(height=5, width=7), camera_hw)


@pytest.mark.parametrize("capacity", [0, -1, 1.5, "3", True])
def test_window_rejects_bad_capacity(capacity):
    with pytest.raises(ValueError):
        FrameWindow(capacity)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((4, 6), np.uint8),
        np.zeros((4, 6, 4), np.uint8),
        np.zeros((4, 6, 1), np.uint8),
        np.zeros((4, 6, 3), np.float32),
        np.zeros((2, 4, 6, 3), np.uint8),
        [[[0, 0, 0]]],
    ],
)
def test_check_frame_rejects_bad_image(image):
    with pytest.raises(ValueError):
        check_frame(image)


def test_append_assigns_indices_and_snapshot_returns_frames():
    window = FrameWindow(4)
    assert len(window) == 0 and window.latest is None and window.indices() == []
    images = [_image(i) for i in range(3)]
    frames = [window.append(img, 100 + i, "cam") for i, img in enumerate(images)]
    assert [f.index for f in frames] == [0, 1, 2]
    assert len(window) == 3
    assert window.indices() == [0, 1, 2]
    assert window.latest is frames[-1]
    got = window.snapshot()[1]
    assert got is frames[1]
    assert got.stamp_ns == 101 and got.frame_id == "cam"
    assert np.array_equal(got.image, images[1])


def test_stored_image_is_read_only_view():
    window = FrameWindow(2)
    image = _image(7)
    frame = window.append(image, 0)
    assert not frame.image.flags.writeable
    with pytest.raises(ValueError):
        frame.image[0, 0, 0] = 1
    assert image.flags.writeable  # the caller's array is left as it was


def test_ring_buffer_evicts_oldest():
    window = FrameWindow(3)
    for i in range(5):
        window.append(_image(i), i)
    assert len(window) == 3
    assert window.indices() == [2, 3, 4]
    assert window.latest.index == 4
    with pytest.raises(KeyError, match="frame 1 is not in the window.*held: 2..4"):
        window.set_feature(1, "emb", 0)
    with pytest.raises(KeyError, match="frame 99"):
        window.set_feature(99, "emb", 0)


def test_set_feature_on_empty_window_raises():
    with pytest.raises(KeyError, match="empty"):
        FrameWindow(2).set_feature(0, "emb", 0)


def test_capacity_one():
    window = FrameWindow(1)
    for i in range(3):
        window.append(_image(i), i)
    assert window.indices() == [2]
    assert window.capacity == 1


def test_feature_cache_set_get_has():
    window = FrameWindow(3)
    frame = window.append(_image(), 0)
    assert not window.has_feature(frame.index, "emb")
    assert window.get_feature(frame.index, "emb") is None
    assert window.get_feature(frame.index, "emb", default="none") == "none"
    value = np.ones(5)
    window.set_feature(frame.index, "emb", value)
    assert window.has_feature(frame.index, "emb")
    assert window.get_feature(frame.index, "emb") is value
    window.set_feature(frame.index, "emb", 2)  # overwrite, not a second entry
    assert window.get_feature(frame.index, "emb") == 2
    assert window.feature_count() == 1
    assert window.get_feature(42, "emb", default=-1) == -1
    assert not window.has_feature(42, "emb")


def test_with_feature_lists_the_frames_holding_a_key_with_their_values():
    window = FrameWindow(3)
    frames = [window.append(_image(i), i) for i in range(4)]  # frame 0 evicted
    window.set_feature(frames[3].index, "emb", "c")
    window.set_feature(frames[1].index, "emb", "a")
    window.set_feature(frames[2].index, "other", "b")
    held = window.with_feature("emb")
    assert [(f.index, v) for f, v in held] == [(1, "a"), (3, "c")]
    window.append(_image(4), 4)  # evicts frame 1: the list taken before is unchanged
    assert [(f.index, v) for f, v in held] == [(1, "a"), (3, "c")]
    assert [(f.index, v) for f, v in window.with_feature("emb")] == [(3, "c")]
    assert window.with_feature("missing") == []


def test_set_feature_on_missing_frame_raises():
    window = FrameWindow(1)
    window.append(_image(), 0)
    window.append(_image(), 1)
    with pytest.raises(KeyError, match="frame 0"):
        window.set_feature(0, "emb", 1)
    with pytest.raises(KeyError, match="frame 5"):
        window.set_feature(5, "emb", 1)
    assert window.feature_count() == 0


def test_features_evicted_with_their_frame():
    window = FrameWindow(2)
    first = window.append(_image(), 0)
    window.set_feature(first.index, "emb", "a")
    window.append(_image(), 1)
    assert window.has_feature(first.index, "emb")
    window.append(_image(), 2)  # evicts frame 0
    assert first.index not in window.indices()
    assert not window.has_feature(first.index, "emb")
    assert window.get_feature(first.index, "emb") is None
    assert window.feature_count() == 0


def test_feature_cache_stays_bounded():
    capacity, keys = 5, ("emb", "clip", "mask")
    window = FrameWindow(capacity)
    for i in range(1000):
        frame = window.append(_image(), i)
        for key in keys:
            window.set_feature(frame.index, key, i)
        assert window.feature_count() <= capacity * len(keys)
    assert window.feature_count() == capacity * len(keys)
    assert window.indices() == list(range(995, 1000))
    assert all(window.get_feature(j, "emb") == j for j in range(995, 1000))


def test_clear_drops_frames_and_features_but_not_the_count():
    window = FrameWindow(3)
    for i in range(4):
        window.set_feature(window.append(_image(), i).index, "emb", i)
    window.clear()
    assert len(window) == 0
    assert window.latest is None
    assert window.indices() == []
    assert window.snapshot() == []
    assert window.feature_count() == 0
    assert not window.has_feature(3, "emb")
    assert window.append(_image(), 9).index == 4


def test_snapshot_is_independent_of_later_changes():
    window = FrameWindow(3)
    for i in range(3):
        window.append(_image(i), i)
    snap = window.snapshot()
    assert [f.index for f in snap] == [0, 1, 2]
    window.append(_image(), 3)
    window.append(_image(), 4)
    assert [f.index for f in snap] == [0, 1, 2]
    assert int(snap[0].image[0, 0, 0]) == 0
    snap.clear()
    assert window.indices() == [2, 3, 4]
    window.clear()
    assert window.snapshot() == [] and len(snap) == 0


def test_concurrent_writer_and_reader():
    capacity, total = 16, 2000
    window = FrameWindow(capacity)
    errors: list[BaseException] = []
    done = threading.Event()
    snapshots_taken = [0]

    def writer():
        try:
            for i in range(total):
                frame = window.append(_image(i % 256, 2, 2), i)
                window.set_feature(frame.index, "emb", i)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)
        finally:
            done.set()

    def reader():
        try:
            while True:
                finished = done.is_set()
                snap = window.snapshot()
                indices = [f.index for f in snap]
                assert len(snap) <= capacity
                assert all(a < b for a, b in zip(indices, indices[1:])), indices
                assert window.feature_count() <= capacity
                latest = window.latest
                assert latest is None or latest.index >= (indices[-1] if indices else 0)
                snapshots_taken[0] += 1
                if finished:
                    break
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often so that unlocked races would show up
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(old_interval)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert snapshots_taken[0] >= 1
    assert window.indices() == list(range(total - capacity, total))
    assert window.latest.index == total - 1


@pytest.mark.parametrize(
    "call",
    [
        lambda w: w.append(_image(), 5),
        len,
        lambda w: w.latest,
        lambda w: w.indices(),
        lambda w: w.snapshot(),
        lambda w: w.clear(),
        lambda w: w.set_feature(0, "emb", 1),
        lambda w: w.get_feature(0, "emb"),
        lambda w: w.has_feature(0, "emb"),
        lambda w: w.feature_count(),
    ],
)
def test_every_method_waits_for_the_window_lock(call):
    # Deterministic counterpart of the concurrency test: while the lock is held elsewhere, each
    # method must block instead of touching the buffer.
    window = FrameWindow(2)
    window.append(_image(), 0)
    worker = threading.Thread(target=call, args=(window,))
    with window._lock:
        worker.start()
        worker.join(timeout=0.05)
        assert worker.is_alive(), "method ran without taking the window lock"
    worker.join(timeout=5)
    assert not worker.is_alive()
