"""Prompt messages from outside (the ``prompt`` topic's JSON), parsed and checked strictly. ROS-free.

A prompt is a JSON object with ``"box": [x0, y0, x1, y1]`` and/or ``"points": [[x, y], ...]``
with ``"labels": [1, 0, ...]`` (1 = positive, 0 = negative), in camera pixels, and optionally
``"stamp_ns"``, the capture stamp of the frame it was given on. :func:`prompt_from_json` refuses,
with a :class:`PromptRefused` (a ``ValueError``) that says why, anything else:

- before parsing, a message longer than ``MAX_PROMPT_BYTES`` (UTF-8) or with arrays/objects
  nested deeper than ``MAX_PROMPT_DEPTH``. The depth is measured by a linear scan of the brackets
  outside strings (:func:`nesting_depth`), not by catching the ``RecursionError`` of Python's
  recursive JSON decoder: whether that error comes depends on the interpreter's recursion limit
  and on how deep the calling thread's stack already is, and catching it would also hide real
  bugs; the scan gives the same answer in every thread;
- text that is not JSON, ``NaN``/``Infinity``, a number that does not fit a float (``1e400``), an
  integer of more than ``MAX_INT_DIGITS`` digits (none of a prompt's numbers needs more);
- anything but an object with ``box`` and/or ``points``, an unknown field, ``points`` without
  ``labels`` (or the reverse), ``stamp_ns`` that is not a JSON integer in [0, 2^63);
- a box that is not exactly four JSON numbers with x0 < x1 and y0 < y1;
- points that are not a non-empty list of ``[x, y]`` pairs of JSON numbers, more than
  ``max_points`` of them, labels that are not exactly the JSON integers 0 or 1 (``1.0``, ``true``,
  ``"1"`` are refused), or not one label per point.

The first two items are :func:`read_json` (also the ``targets`` topic's reader,
:mod:`vrs_node.core.target_commands`), the rest :func:`prompt_from_object`.

:func:`fit_to_image` then checks a parsed prompt against the image it is applied to (the engine
calls it: it knows each frame's size).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re

import numpy as np

from vrs_node.core.prompts import PointsPrompt

MAX_PROMPT_BYTES = 65_536
"""Longest prompt message read (UTF-8 bytes); 1,000 points with full-precision floats fit."""
MAX_PROMPT_DEPTH = 8
"""Deepest nesting of JSON arrays/objects read; a valid prompt has 3 (object, points, point)."""
MAX_INT_DIGITS = 19
"""Most digits of a JSON integer read; an int64 nanosecond stamp has 19."""
DEFAULT_MAX_PROMPT_POINTS = 64
"""Default of the node's ``max_prompt_points``: more points than a person clicks."""
FIELDS = ("box", "points", "labels", "stamp_ns")

# A JSON string from its opening quote: escapes skipped; an unterminated one runs to the end. It
# never backtracks, so the scan stays linear even on text full of quotes and backslashes.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_OPEN = np.frombuffer(b"[{", np.uint8)
_CLOSE = np.frombuffer(b"]}", np.uint8)

SHORT_CHARS = 40
"""Most characters of input quoted in a reason (:func:`short`)."""


class PromptRefused(ValueError):
    """A prompt that is refused; the message says why. ``stamp_ns`` is the prompt's own
    ``stamp_ns`` when it could be read (None otherwise), so the refusal can name the prompt."""

    def __init__(self, reason: str, stamp_ns: int | None = None):
        super().__init__(reason)
        self.stamp_ns = stamp_ns


def short(value) -> str:
    """``value`` (anything ``json.loads`` returns) as JSON text cut to ``SHORT_CHARS``
    characters, for quoting input in a reason without echoing all of it."""
    text = json.dumps(value)
    return text if len(text) <= SHORT_CHARS else text[:SHORT_CHARS - 3] + "..."


def nesting_depth(text: str) -> int:
    """Deepest nesting of ``[ ]`` and ``{ }`` outside JSON strings in ``text`` (0 without any).

    Linear in ``len(text)``. Exact at every position up to which ``text`` is valid JSON, which
    covers everything a JSON decoder reads before it stops; past a syntax error the count is
    whatever the brackets give (a decoder refuses that text anyway)."""
    outside = _STRING.sub("", text)
    codes = np.frombuffer(outside.encode("utf-8", "surrogatepass"), np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int64) - np.isin(codes, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


def _json_int(what: str, digits: str) -> int:
    count = len(digits.lstrip("-"))
    if count > MAX_INT_DIGITS:
        raise PromptRefused(f"{what} has an integer of {count} digits ({digits[:12]}...); "
                            f"its integers have at most {MAX_INT_DIGITS}")
    return int(digits)


def _json_float(what: str, text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise PromptRefused(f"{what} number {text[:24]} does not fit a float")
    return value


def _json_constant(what: str, name: str):
    raise PromptRefused(f"{what} numbers must be finite; got {name}")


def read_json(text: str, what: str = "prompt", max_bytes: int = MAX_PROMPT_BYTES):
    """``text`` read as strict JSON (what ``json.loads`` returns), ``what`` naming the message in
    the reasons (``prompt``, ``targets command``). Refused (:class:`PromptRefused`): text longer
    than ``max_bytes`` (UTF-8; ``MAX_PROMPT_BYTES`` by default) or nested deeper than
    ``MAX_PROMPT_DEPTH`` (checked before parsing),
    text that is not JSON, ``NaN``/``Infinity``, a number beyond a float, an integer of more than
    ``MAX_INT_DIGITS`` digits."""
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise PromptRefused(f"{what} is longer than {max_bytes} bytes")
    depth = nesting_depth(text)
    if depth > MAX_PROMPT_DEPTH:
        raise PromptRefused(f"{what} nests arrays/objects {depth} deep; at most {MAX_PROMPT_DEPTH} are read")
    try:
        return json.loads(text, parse_int=functools.partial(_json_int, what),
                          parse_float=functools.partial(_json_float, what),
                          parse_constant=functools.partial(_json_constant, what))
    except json.JSONDecodeError as exc:
        raise PromptRefused(f"{what} is not JSON: {exc}") from None


def prompt_from_json(text: str, max_points: int = DEFAULT_MAX_PROMPT_POINTS) -> tuple[PointsPrompt, int | None]:
    """Parse a ``prompt`` message: (PointsPrompt, stamp_ns or None).

    The module docstring lists what is refused (:class:`PromptRefused`, a ValueError; nothing
    else is raised for any ``str``): :func:`read_json`, then :func:`prompt_from_object`."""
    return prompt_from_object(read_json(text), max_points)


def prompt_from_object(data, max_points: int = DEFAULT_MAX_PROMPT_POINTS) -> tuple[PointsPrompt, int | None]:
    """A prompt from ``data``, what :func:`read_json` returned: (PointsPrompt, stamp_ns or None).

    Refused (:class:`PromptRefused`) unless ``data`` is an object with ``box`` and/or ``points``
    (+ ``labels``) and no field but :data:`FIELDS`, as the module docstring says. The prompt's
    points are a float64 (N, 2) array with an int64 (N,) array of 0/1 labels, N <= ``max_points``;
    its box a tuple of four floats; every coordinate finite. Whether they lie in the image is for
    :func:`fit_to_image`."""
    if not isinstance(data, dict) or not ({"box", "points"} & data.keys()):
        raise PromptRefused('prompt must be a JSON object with "box" and/or "points" (+ "labels")')
    unknown = data.keys() - set(FIELDS)
    if unknown:
        raise PromptRefused(f"unknown prompt fields: {short(sorted(unknown))}; known: {', '.join(FIELDS)}")
    stamp = data.get("stamp_ns")
    if "stamp_ns" in data and (type(stamp) is not int or not 0 <= stamp < 2**63):
        raise PromptRefused(f"stamp_ns must be a JSON integer in [0, 2^63) (nanoseconds), got {short(stamp)}")
    try:
        return _points_prompt(data, max_points), stamp
    except PromptRefused as exc:
        raise PromptRefused(str(exc), stamp) from None


def _number(value, what: str) -> float:
    """A JSON number (int or float, never a bool) as a float; the decoder hooks keep it finite."""
    if type(value) not in (int, float):
        raise PromptRefused(f"{what} must be a number, got {short(value)}")
    return float(value)


def _points_prompt(data: dict, max_points: int) -> PointsPrompt:
    box = None
    if "box" in data:
        raw = data["box"]
        if type(raw) is not list or len(raw) != 4:
            raise PromptRefused(f"box must be a list of 4 numbers [x0, y0, x1, y1], got {short(raw)}")
        box = tuple(_number(v, "box coordinate") for v in raw)
        if not (box[0] < box[2] and box[1] < box[3]):
            raise PromptRefused(f"box must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {short(raw)}")
    points = labels = None
    if "points" in data or "labels" in data:
        if "points" not in data or "labels" not in data:
            raise PromptRefused('"points" and "labels" must be given together')
        raw_points, raw_labels = data["points"], data["labels"]
        if type(raw_points) is not list or not raw_points:
            raise PromptRefused(f"points must be a non-empty list of [x, y], got {short(raw_points)}")
        if len(raw_points) > max_points:
            raise PromptRefused(f"prompt has {len(raw_points)} points; at most {max_points} "
                                "(parameter max_prompt_points)")
        if type(raw_labels) is not list or len(raw_labels) != len(raw_points):
            raise PromptRefused(f"labels must be a list of one 0/1 per point ({len(raw_points)}), "
                                f"got {short(raw_labels)}")
        for point in raw_points:
            if type(point) is not list or len(point) != 2:
                raise PromptRefused(f"each point must be [x, y], got {short(point)}")
        points = np.array([[_number(v, "point coordinate") for v in p] for p in raw_points], np.float64)
        for label in raw_labels:
            if type(label) is not int or label not in (0, 1):
                raise PromptRefused(f"labels must be the JSON integers 0 (negative) or 1 (positive), "
                                    f"got {short(label)}")
        labels = np.array(raw_labels, np.int64)
    return PointsPrompt(points=points, labels=labels, box=box)


def _format(coords) -> str:
    return "[" + ", ".join(f"{v:g}" for v in coords) + "]"


def fit_to_image(prompt: PointsPrompt, width: int, height: int) -> tuple[PointsPrompt, str]:
    """``prompt`` checked against a ``width`` x ``height`` image, whose extent in camera pixels
    is [0, width] x [0, height]: (the prompt to apply, a notice, "" when nothing changed).

    A point outside the extent refuses the prompt (PromptRefused): a click is on the image or
    not. A box inside the extent is kept as given; one partly outside is clipped to the extent
    (the notice gives both boxes), and refused when its part inside has no area (it lies outside,
    at most touching the border)."""
    if prompt.points is not None:
        points = np.asarray(prompt.points, np.float64)
        outside = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
        if outside.any():
            i = int(np.argmax(outside))
            raise PromptRefused(f"point {i} {_format(points[i])} is outside the {width}x{height} image")
    if prompt.box is None:
        return prompt, ""
    x0, y0, x1, y1 = prompt.box
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if clipped == tuple(prompt.box):
        return prompt, ""
    if not (clipped[0] < clipped[2] and clipped[1] < clipped[3]):
        raise PromptRefused(f"box {_format(prompt.box)} is outside the {width}x{height} image")
    return (dataclasses.replace(prompt, box=clipped),
            f"box {_format(prompt.box)} clipped to {_format(clipped)}, its part inside the {width}x{height} image")
