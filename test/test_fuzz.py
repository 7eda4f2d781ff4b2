"""Property-based fuzz tests (hypothesis) of every input surface: image messages, compressed
images, prompt JSON, instruction strings and (live) ``targets`` commands (their parsing alone:
test_target_commands.py).

Invariants: the ROS-free functions behind each callback raise nothing but their documented
refusal (ImageConversionError, PromptRefused, ValueError), accept exactly what their contract
accepts, and what they return keeps that contract; a live node (in-process, ros_harness) fed a
hostile message raises nothing out of its callback, publishes the next valid frame's mask with
that frame's stamp and size, and keeps its state bounded (window, tracker memory).

Budget: ``VRS_FUZZ_EXAMPLES`` examples per ROS-free surface (default 200) and
``VRS_FUZZ_LIVE_EXAMPLES`` per live-node surface (default 50); derandomized (a fixed seed) with no
example database, so every run tries the same examples. The count each surface ran is printed at
the end of the session (conftest.pytest_terminal_summary). ``scripts/fuzz.sh`` runs a long budget.
"""

from __future__ import annotations

import json
import os
import struct
import types
import unicodedata
import zlib

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from conftest import FUZZ_EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from test_image import png_bytes
from test_target_commands import COMMAND as TARGETS_COMMAND

from vrs_node.core.prompt_json import (DEFAULT_MAX_PROMPT_POINTS, FIELDS, PromptRefused, fit_to_image,
                                       prompt_from_json)
from vrs_node.core.prompts import PointsPrompt
from vrs_node.io.image import (SUPPORTED_ENCODINGS, ImageConversionError, compressed_msg_to_rgb, compressed_size,
                               image_msg_to_rgb, jpeg_reduction, ns_to_stamp, rgb_to_msg, stamp_to_ns)
from vrs_node.models.prompt import IMAGE_TOKEN, MAX_INSTRUCTION_CHARS, RESERVED_TEXT, build_prompt, clean_instruction

EXAMPLES = int(os.environ.get("VRS_FUZZ_EXAMPLES", "200"))
LIVE_EXAMPLES = int(os.environ.get("VRS_FUZZ_LIVE_EXAMPLES", "50"))


def fuzz(examples: int):
    """Hypothesis settings of one surface: a fixed budget, a fixed seed, no database. A live test
    keeps one node across its examples (that is the point: state must stay bounded), hence the
    function-scoped fixture is allowed."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# --- image messages -------------------------------------------------------------------------------

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
RGB_OFFSETS = {"rgb8": (0, 1, 2), "bgr8": (2, 1, 0), "rgba8": (0, 1, 2), "bgra8": (2, 1, 0), "mono8": (0, 0, 0)}
SMALL_OR_HUGE = st.one_of(st.integers(0, 9), st.integers(0, 2**32 - 1))


@st.composite
def image_fields(draw):
    """Fields of an Image message: a valid small one (a supported encoding, padded rows, random
    pixels) with, half the time, one field made hostile: a junk encoding, a small or huge size, a
    step anywhere, data of any length."""
    encoding = draw(st.sampled_from(SUPPORTED_ENCODINGS))
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    step = width * CHANNELS[encoding] + draw(st.integers(0, 8))
    length = step * height + draw(st.integers(0, 8))
    hostile = draw(st.sampled_from([None, None, None, "encoding", "height", "width", "step", "length"]))
    if hostile == "encoding":
        encoding = draw(st.text(max_size=10))
    elif hostile in ("height", "width"):
        value = draw(SMALL_OR_HUGE)
        height, width = (value, width) if hostile == "height" else (height, value)
    elif hostile == "step":
        step = draw(SMALL_OR_HUGE)
    elif hostile == "length":
        length = draw(st.integers(0, length + 8))
    return dict(encoding=encoding, height=height, width=width, step=step, data=draw(st.binary(min_size=length,
                                                                                               max_size=length)))


@fuzz(EXAMPLES)
@given(fields=image_fields(), max_pixels=st.one_of(st.just(16_000_000), st.integers(1, 64)), where=st.data())
def test_fuzz_image_messages(fields, max_pixels, where):
    msg = types.SimpleNamespace(**fields)
    encoding, height, width, step, data = (fields[k] for k in ("encoding", "height", "width", "step", "data"))
    acceptable = (encoding in SUPPORTED_ENCODINGS and height > 0 and width > 0 and height * width <= max_pixels
                  and step >= width * CHANNELS[encoding] and len(data) >= step * height)
    try:
        rgb = image_msg_to_rgb(msg, max_pixels)
    except ImageConversionError:
        assert not acceptable
    else:
        assert acceptable and rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
        y, x = where.draw(st.integers(0, height - 1)), where.draw(st.integers(0, width - 1))
        first = y * step + x * CHANNELS[encoding]
        assert list(rgb[y, x]) == [data[first + offset] for offset in RGB_OFFSETS[encoding]]
    FUZZ_EXAMPLES["image messages"] += 1


# --- compressed images -----------------------------------------------------------------------------

@st.composite
def compressed_data(draw):
    """Bytes of a CompressedImage: random, or a small PNG/JPEG (cv2-encoded or hand-built) that may
    be cut short, get bytes overwritten, get its header's size rewritten, or get junk segments."""
    kind = draw(st.sampled_from(["random", "png", "jpeg", "jpeg", "bomb"]))
    if kind == "random":
        return draw(st.one_of(st.binary(max_size=300),
                              st.binary(max_size=300).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                              st.binary(max_size=300).map(lambda b: b"\xff\xd8" + b)))
    if kind == "bomb":
        return png_bytes(draw(st.integers(1, 3000)), draw(st.integers(1, 3000)))
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    pixels = np.frombuffer(draw(st.binary(min_size=height * width * 3, max_size=height * width * 3)), np.uint8)
    _, encoded = cv2.imencode(".png" if kind == "png" else ".jpg", pixels.reshape(height, width, 3))
    data = bytearray(encoded.tobytes())
    if kind == "jpeg" and draw(st.booleans()):  # metadata-like segments and fill bytes before the frame header
        segment = draw(st.binary(max_size=40))
        data[2:2] = b"\xff" * draw(st.integers(0, 3)) + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment
    size_at = {"png": 16, "jpeg": data.find(b"\xff\xc0") + 5}[kind]
    if draw(st.booleans()):  # the header claims another size (a PNG keeps a valid CRC)
        claimed = struct.pack(">II", draw(SMALL_OR_HUGE), draw(SMALL_OR_HUGE)) if kind == "png" else \
            struct.pack(">HH", draw(st.integers(0, 2**16 - 1)), draw(st.integers(0, 2**16 - 1)))
        data[size_at:size_at + len(claimed)] = claimed
        if kind == "png":
            data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    for _ in range(draw(st.integers(0, 3))):  # bytes overwritten anywhere
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[:draw(st.integers(0, len(data)))]) if draw(st.booleans()) else bytes(data)


@fuzz(EXAMPLES)
@given(data=compressed_data(), max_pixels=st.integers(1, 4096),
       min_hw=st.none() | st.tuples(st.integers(1, 80), st.integers(1, 80)))
def test_fuzz_compressed_images(data, max_pixels, min_hw):
    size = compressed_size(data)
    try:
        rgb, camera_hw = compressed_msg_to_rgb(types.SimpleNamespace(format="fuzz", data=data), max_pixels,
                                               None if min_hw is None else lambda h, w: min_hw)
    except ImageConversionError:
        pass
    else:  # decoded only when the header was read, at the header's size or a reduced one, within the limit
        assert size is not None and camera_hw == (size[1], size[0]) and rgb.dtype == np.uint8
        f = 1 if min_hw is None or data[:1] != b"\xff" else jpeg_reduction(*camera_hw, min_hw)
        assert rgb.shape == (-(-size[1] // f), -(-size[0] // f), 3)
        assert size[0] * size[1] <= max_pixels
    FUZZ_EXAMPLES["compressed images"] += 1


# --- prompt JSON -----------------------------------------------------------------------------------

ODD_NUMBERS = st.one_of(  # odd values, integers too long for a float or an int64, and what looks like 0 or 1
    st.sampled_from([-1, 0.5, 1.9, 1e20, -1e30, 1e300, 2**31, -0.0, float("nan"), float("inf"), float("-inf")]),
    st.sampled_from([2**63, 2**64, 10**30, 10**400, -(10**400)]),
    st.sampled_from([0, 1, 0.0, 1.0, True, False, "0", "1"]))
NUMBER = st.one_of(st.integers(-2000, 2000), st.floats(-3000, 3000), st.integers(), st.floats(), ODD_NUMBERS)
LEAF = st.one_of(st.none(), st.booleans(), NUMBER, st.text(max_size=6), st.sampled_from(["1", "0", "1234"]))
JSON_TREE = st.recursive(LEAF, lambda kids: st.one_of(
    st.lists(kids, max_size=5),
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=5)), kids, max_size=5)), max_leaves=25)
COORD = st.one_of(st.integers(-50, 2100), st.floats(-50, 2100))


@st.composite
def near_valid_prompts(draw, mutations=(None, None, None, "value", "value", "odd", "drop", "add")):
    """A valid prompt object (a box and/or up to 70 labelled points, in or near a 2000-pixel image,
    maybe a stamp) with one of ``mutations``: none, one value replaced by any JSON value
    ("value") or by an odd number ("odd"), one field dropped or one added."""
    prompt = {}
    kind = draw(st.sampled_from(["box", "points", "both"]))
    if kind != "points":
        x0, y0 = draw(COORD), draw(COORD)
        prompt["box"] = [x0, y0, x0 + draw(st.integers(1, 500)), y0 + draw(st.integers(1, 500))]
    if kind != "box":
        n = draw(st.one_of(st.integers(1, 4), st.integers(1, 70)))
        prompt["points"] = draw(st.lists(st.lists(COORD, min_size=2, max_size=2), min_size=n, max_size=n))
        prompt["labels"] = draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n))
    if draw(st.booleans()):
        prompt["stamp_ns"] = draw(st.integers(0, 2**63 - 1))
    mutation = draw(st.sampled_from(mutations))
    if mutation in ("value", "odd"):  # an odd number always replaces a number: a coordinate, label or stamp
        key = draw(st.sampled_from(sorted(prompt)))
        new = draw(st.one_of(JSON_TREE, LEAF) if mutation == "value" else ODD_NUMBERS)
        if isinstance(prompt[key], list) and (mutation == "odd" or draw(st.booleans())):
            target = prompt[key]
            if isinstance(target[0], list) and (mutation == "odd" or draw(st.booleans())):
                target = target[draw(st.integers(0, len(target) - 1))]
            target[draw(st.integers(0, len(target) - 1))] = new
        else:
            prompt[key] = new
    elif mutation == "drop":
        del prompt[draw(st.sampled_from(sorted(prompt)))]
    elif mutation == "add":
        prompt[draw(st.one_of(st.sampled_from(FIELDS), st.text(max_size=5)))] = draw(JSON_TREE)
    return prompt


LABEL_LOOKALIKES = ["1.0", "0.0", "true", "false", '"1"', '"0"', "1e0", "0.5", "1.9", "-1", "2", "[1]", "null",
                    "1e20", "1e400", "9" * 400]
NUMBER_LOOKALIKES = ["1e400", "-1e999", "9" * 400, "-" + "9" * 30, "NaN", "Infinity", "-Infinity", "1E+308",
                     "4.9e-324", "1e30", "-1e30", "true", "false", '"1"', "null", "[1]"]
LABEL_SLOTS = ['{"points": [[1, 1]], "labels": [%s]}', '{"points": [[1, 1], [2, 2]], "labels": [1, %s]}']
NUMBER_SLOTS = ['{"box": [%s, 0, 5, 5]}', '{"box": [0, 0, 5, %s]}', '{"points": [[%s, 1]], "labels": [1]}',
                '{"points": [[1, %s]], "labels": [0]}', '{"box": [0, 0, 5, 5], "stamp_ns": %s}']
SLOT_CASES = [slot % value for slot in LABEL_SLOTS for value in LABEL_LOOKALIKES] + \
    [slot % value for slot in NUMBER_SLOTS for value in NUMBER_LOOKALIKES]
"""One value of an otherwise valid prompt written as raw JSON text: every slot with every look-alike."""
SLOTS = st.sampled_from(SLOT_CASES)
PROMPT_TEXT = st.one_of(
    near_valid_prompts().map(json.dumps),  # json.dumps writes NaN/Infinity for non-finite floats
    near_valid_prompts().map(json.dumps),
    near_valid_prompts(mutations=("odd",)).map(json.dumps),
    SLOTS,
    JSON_TREE.map(json.dumps),
    st.integers(1, 40_000).map(lambda n: '{"box": ' + "[" * n + "]" * n + "}"),
    st.text(alphabet='[]{}",:\\01. ebox', max_size=200),
    st.text(max_size=200),
)


def check_prompt(prompt: PointsPrompt, stamp, max_points: int) -> None:
    """An accepted prompt keeps prompt_from_json's contract."""
    assert prompt.points is not None or prompt.box is not None
    assert stamp is None or (type(stamp) is int and 0 <= stamp < 2**63)
    if prompt.points is not None:
        assert prompt.points.dtype == np.float64 and prompt.points.shape[1:] == (2,)
        assert 1 <= len(prompt.points) <= max_points and np.isfinite(prompt.points).all()
        assert prompt.labels.dtype == np.int64 and set(prompt.labels.tolist()) <= {0, 1}
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        assert np.isfinite(prompt.box).all() and x0 < x1 and y0 < y1


def check_strict_json(text: str) -> None:
    """What an accepted prompt's text holds, read back with the standard decoder: known fields only,
    labels exactly the JSON integers 0/1, box and point coordinates JSON numbers (never bools)."""
    data = json.loads(text)
    assert set(data) <= set(FIELDS)
    assert all(type(label) is int and label in (0, 1) for label in data.get("labels", []))
    coords = list(data.get("box", [])) + [v for point in data.get("points", []) for v in point]
    assert all(type(v) in (int, float) for v in coords)


@pytest.mark.parametrize("text", SLOT_CASES)
def test_every_look_alike_in_every_slot(text):
    """The finite table behind SLOTS, exhaustively: refused, or accepted within the contract."""
    try:
        prompt, stamp = prompt_from_json(text)
    except PromptRefused:
        return
    check_prompt(prompt, stamp, DEFAULT_MAX_PROMPT_POINTS)
    check_strict_json(text)


@fuzz(EXAMPLES)
@given(text=PROMPT_TEXT, max_points=st.one_of(st.just(DEFAULT_MAX_PROMPT_POINTS), st.integers(1, 8)),
       width=st.integers(1, 2000), height=st.integers(1, 2000))
def test_fuzz_prompt_json(text, max_points, width, height):
    try:
        prompt, stamp = prompt_from_json(text, max_points)
    except PromptRefused:
        FUZZ_EXAMPLES["prompt JSON"] += 1
        return
    check_prompt(prompt, stamp, max_points)
    check_strict_json(text)
    try:
        fitted, notice = fit_to_image(prompt, width, height)
    except PromptRefused:
        pass
    else:
        check_prompt(fitted, stamp, max_points)
        if fitted.points is not None:
            assert ((fitted.points >= 0) & (fitted.points <= (width, height))).all()
        if fitted.box is not None:
            x0, y0, x1, y1 = fitted.box
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert bool(notice) == (fitted.box != prompt.box)
    FUZZ_EXAMPLES["prompt JSON"] += 1


# --- instructions ----------------------------------------------------------------------------------

WHITESPACE_CONTROLS = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85"  # str.split whitespace among the controls
INSTRUCTION_PIECES = st.one_of(
    st.text(max_size=12), st.sampled_from(RESERVED_TEXT + ("[seg]", "<IMAGE>", "</S>", "<s", "[SE", "G]", "İ")),
    st.characters(categories=["Cc", "Cs", "Cf", "Zs", "Zl"]), st.sampled_from(WHITESPACE_CONTROLS),
)
INSTRUCTION = st.one_of(
    st.lists(INSTRUCTION_PIECES, max_size=30).map("".join),
    st.text(max_size=60),
    st.tuples(st.sampled_from(["İ", "x", " ", "[SEG]"]), st.integers(MAX_INSTRUCTION_CHARS // 5 - 2,
                                                                     MAX_INSTRUCTION_CHARS + 2)).map(
        lambda t: (t[0] * t[1])[:MAX_INSTRUCTION_CHARS + 2]),
)


def acceptable_instruction(raw: str) -> bool:
    """clean_instruction's contract, written with unicodedata rather than its regular expression."""
    refused = any(unicodedata.category(c) in ("Cc", "Cs") and not c.isspace() for c in raw)
    return len(raw) <= MAX_INSTRUCTION_CHARS and not refused and bool(raw.split())


@fuzz(EXAMPLES)
@given(raw=INSTRUCTION)
def test_fuzz_instructions(raw):
    try:
        instruction = clean_instruction(raw)
    except ValueError:
        assert not acceptable_instruction(raw)
    else:
        assert acceptable_instruction(raw)
        text = instruction.text
        assert text == " ".join(text.split()) and text == text.lower() and text
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in text)
        assert not any(r.lower() in text for r in RESERVED_TEXT), "reserved text survived"
        prompt = build_prompt(instruction, 3)
        assert prompt.count(IMAGE_TOKEN) == 3 and prompt.count("[SEG]") == 3 and prompt.count("[TAK]") == 1
        assert prompt.count("</s>") == 1
    FUZZ_EXAMPLES["instructions"] += 1


# --- a live node -----------------------------------------------------------------------------------

VALID = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
STAMP = st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**32 - 1))


def raw_frame(header):
    return rgb_to_msg(VALID, header)


def jpeg_frame(header):
    return CompressedImage(header=header, format="jpeg", data=cv2.imencode(".jpg", VALID)[1].tobytes())


class LiveFuzz:
    """A harness node (sync, tiny-random, no re-grounding) tracking a box on valid 64x48 frames,
    fed one hostile message at a time; after each, a valid frame (``make_frame(header)``) must
    come back as a mask with its stamp and size, and the node's state must stay bounded."""

    def __init__(self, h, make_frame):
        self.h, self.make_frame, self.stamp = h, make_frame, 1_700_000_000_000_000_000
        self.valid_frame_gets_its_mask()
        h.prompt_pub.publish(String(data=json.dumps({"box": [8, 8, 40, 30]})))
        h.spin_until(lambda: h.node.engine.prompt_pending)
        self.valid_frame_gets_its_mask()

    def valid_frame_gets_its_mask(self, avoid: int | None = None) -> None:
        """Send the next valid frame (its stamp 1/30 s after the last one, never ``avoid``, the
        hostile message's stamp) and check its mask and the bounds."""
        self.stamp += 33_333_333 + (self.stamp + 33_333_333 == avoid)
        stamp, count = self.stamp, len(self.h.masks)
        self.h.send_frame(self.make_frame(Header(stamp=ns_to_stamp(stamp), frame_id="fuzz")))
        mine = lambda: [m for m in self.h.masks[count:] if stamp_to_ns(m.header.stamp) == stamp]  # noqa: E731
        self.h.spin_until(mine)
        (mask,) = mine()
        assert (mask.height, mask.width, mask.encoding) == (48, 64, "mono8")
        engine = self.h.node.engine
        assert len(engine.window) <= engine.window.capacity
        memory = engine.target_tracker  # at most max_targets targets, each within its memory's bound
        assert len(memory.ids) <= memory.max_targets
        assert memory.state_size()[0] <= len(memory.ids) * (memory.max_cond_frames + memory.keep_non_cond)


def hostile_header(stamp) -> Header:
    """A header with any ``(sec, nanosec)`` the message type allows (nanosec may exceed 1e9)."""
    sec, nanosec = stamp
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id="hostile")


def test_fuzz_live_image_messages(ros):
    node = LiveFuzz(ros(period_s=0.0, lost_after_frames=0,
                        **{"qos_overrides./image.subscription.reliability": "reliable"}), raw_frame)

    @fuzz(LIVE_EXAMPLES)
    @given(fields=image_fields(), stamp=STAMP)
    def run(fields, stamp):
        hostile = Image(header=hostile_header(stamp), is_bigendian=0, **fields)
        node.h.image_pub.publish(hostile)
        node.valid_frame_gets_its_mask(avoid=stamp_to_ns(hostile.header.stamp))
        FUZZ_EXAMPLES["live: image messages"] += 1

    run()


def test_fuzz_live_compressed_images(ros):
    node = LiveFuzz(ros(period_s=0.0, lost_after_frames=0, image_transport="compressed",
                        max_image_pixels=100_000), jpeg_frame)

    @fuzz(LIVE_EXAMPLES)
    @given(data=compressed_data(), fmt=st.text(max_size=20), stamp=STAMP)
    def run(data, fmt, stamp):
        hostile = CompressedImage(header=hostile_header(stamp), format=fmt, data=data)
        node.h.image_pub.publish(hostile)
        node.valid_frame_gets_its_mask(avoid=stamp_to_ns(hostile.header.stamp))
        FUZZ_EXAMPLES["live: compressed images"] += 1

    run()


def test_fuzz_live_prompts(ros):
    node = LiveFuzz(ros(period_s=0.0, lost_after_frames=0), raw_frame)
    h = node.h

    @fuzz(LIVE_EXAMPLES)
    @given(text=PROMPT_TEXT)
    def run(text):
        count = len(h.statuses)
        h.prompt_pub.publish(String(data=text))
        h.spin_until(lambda: h.node.engine.prompt_pending or any(s.get("event") == "prompt"
                                                                 for s in h.statuses[count:]))
        node.valid_frame_gets_its_mask()
        FUZZ_EXAMPLES["live: prompt JSON"] += 1

    run()


def test_fuzz_live_instructions(ros):
    node = LiveFuzz(ros(period_s=0.0, lost_after_frames=0), raw_frame)

    @fuzz(LIVE_EXAMPLES)
    @given(raw=INSTRUCTION)
    def run(raw):
        node.h.node._on_instruction(String(data=raw))  # the subscription's callback, as the executor calls it
        node.valid_frame_gets_its_mask()
        FUZZ_EXAMPLES["live: instructions"] += 1

    run()


LIVE_ENTRY = st.fixed_dictionaries({}, optional={"id": st.integers(1, 5)}).flatmap(lambda entry: st.one_of(
    st.builds(lambda x, y, w, h: {**entry, "box": [x, y, x + w, y + h]},
              st.integers(0, 40), st.integers(0, 30), st.integers(1, 23), st.integers(1, 17)),
    st.builds(lambda text: {**entry, "instruction": text}, st.sampled_from(["the cup", "the [SEG] hand", "  "]))))
LIVE_COMMAND = st.one_of(
    st.builds(lambda entry: {"op": "add", **entry}, LIVE_ENTRY),
    st.builds(lambda i: {"op": "remove", "id": i}, st.integers(0, 5)),
    st.just({"op": "clear"}),
    st.builds(lambda entries: {"op": "set", "targets": entries}, st.lists(LIVE_ENTRY, max_size=4)),
).map(json.dumps)
"""Commands a user would send to a 64 x 48 stream, valid or not for the node's state: ids 1-5 (3
targets at most), boxes in the frame, instructions (one empty)."""


def test_fuzz_live_targets_commands(ros):
    """``targets`` commands (:data:`LIVE_COMMAND`, test_target_commands.COMMAND's hostile ones, any
    text) to a node taking at most 3 targets: each is answered on ``status`` (its ids, or the reason
    it was refused, a refusal changing nothing) and the next valid frame gets its mask, the targets
    and their memories within their bounds."""
    node = LiveFuzz(ros(period_s=0.0, lost_after_frames=0, max_targets=3), raw_frame)
    h = node.h

    @fuzz(LIVE_EXAMPLES)
    @given(text=st.one_of(LIVE_COMMAND, TARGETS_COMMAND, st.text(max_size=40)))
    def run(text):
        before = h.node.engine.target_labels()
        reply = h.send_targets(text)
        assert reply["status"] in ("accepted", "error"), reply
        if reply["status"] == "error":
            assert reply["reason"].startswith("targets command refused: ") and h.node.engine.target_labels() == before
        node.valid_frame_gets_its_mask()
        FUZZ_EXAMPLES["live: targets commands"] += 1

    run()
