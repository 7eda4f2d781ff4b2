"""The node's ROS parameters, derived from the settings (:mod:`vrs_node.models.config`).

:func:`parameters` lists them in declaration order: the fields of :class:`ModelConfig`, those of
:class:`PipelineConfig` (with the node's own defaults, :data:`NODE_DEFAULTS`), then the node's own
settings (:data:`NODE_SETTINGS`) and, for the lifecycle node, :data:`AUTOSTART`.
``config/vrs_node.yaml`` lists the same, in the same order (``test/test_ros_params.py``).

A setting becomes a parameter with its default, its help as the description (its choices added
when the help does not name them all), ``read_only`` unless the setting is ``runtime``, and its
``range`` as an integer or floating-point range (with the step when the range has one).
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from vrs_node.core.config import PipelineConfig, ReasonerConfig
from vrs_node.core.prompt_json import DEFAULT_MAX_PROMPT_POINTS
from vrs_node.io.image import DEFAULT_MAX_IMAGE_PIXELS
from vrs_node.models.config import ModelConfig, Setting, settings

IMAGE_TRANSPORTS = ("raw", "compressed")
NODE_DEFAULTS = {"mode": "live"}
"""Where the node's default differs from the library's: a node serves a live camera."""
NODE_SETTINGS = (
    Setting(name="image_transport", default="raw", choices=IMAGE_TRANSPORTS, range=None, runtime=False,
            help="raw: sensor_msgs/Image on image; compressed: sensor_msgs/CompressedImage on <image>/compressed"),
    Setting(name="instruction", default="", choices=None, range=None, runtime=True,
            help="language instruction to follow ('' = none); also settable on the instruction topic"),
    Setting(name="instructions", default=[], choices=None, range=None, runtime=True,
            help="language instructions to follow at once, one target each (ids 1, 2, ... in order; "
                 "[] = none); replaces every target; also settable as a set on the targets topic"),
    Setting(name="max_image_pixels", default=DEFAULT_MAX_IMAGE_PIXELS, choices=None, range=(1, 1_000_000_000),
            runtime=False,
            help="images with more pixels (width x height) are refused; compressed ones before decoding"),
    Setting(name="max_prompt_points", default=DEFAULT_MAX_PROMPT_POINTS, choices=None, range=(1, 1000),
            runtime=False, help="prompts with more points are refused"),
    Setting(name="reasoner", default="local", choices=None, range=None, runtime=False,
            help="local: the reasoner (MLLM) runs in this node; remote:<namespace>: a vrs-reasoner in that "
                 "namespace answers (topics <namespace>/vrs_reasoner/requests and /responses) and this node "
                 "loads SAM-2 only"),
    Setting(name="reasoner_timeout_s", default=10.0, choices=None, range=(0.1, 600.0), runtime=False,
            help="with a remote reasoner: seconds a grounding request waits for its response"),
)
"""The node's settings that are no library's: its input, its instruction(s), its input limits, its reasoner."""
AUTOSTART = Setting(name="autostart", default=True, choices=None, range=None, runtime=False,
                    help="vrs-lifecycle-node's main configures and activates the node itself")
"""The lifecycle node's one more parameter."""
RUNTIME_ENGINE_PARAMETERS = frozenset(s.name for s in settings(PipelineConfig) if s.runtime)
"""The engine's settings a running node applies when its parameter is set."""


def parameters(lifecycle: bool = False, base: Sequence[Setting] | None = None) -> list[Setting]:
    """A node's parameters as settings, in declaration order: ``base``, by default (None) those of
    ``vrs-node`` (see the module docstring; ``vrs-reasoner`` passes its own), then for a
    ``lifecycle`` node :data:`AUTOSTART`."""
    if base is None:
        engine = [dataclasses.replace(s, default=NODE_DEFAULTS.get(s.name, s.default))
                  for s in settings(PipelineConfig)]
        base = [*settings(ModelConfig), *engine, *NODE_SETTINGS]
    return [*base, *([AUTOSTART] if lifecycle else [])]


def reasoner_parameters() -> list[Setting]:
    """``vrs-reasoner``'s parameters as settings: the model's, the reasoner's
    (:class:`~vrs_node.core.config.ReasonerConfig`), then its input's."""
    own = [s for s in NODE_SETTINGS if s.name in ("image_transport", "max_image_pixels")]
    return [*settings(ModelConfig), *settings(ReasonerConfig), *own]


def description(s: Setting) -> str:
    """``s``'s help, with ``(one of: ...)`` appended when it does not name each of its choices."""
    if s.choices is None or all(re.search(rf"\b{re.escape(str(c))}\b", s.help) for c in s.choices):
        return s.help
    return f"{s.help} (one of: {', '.join(map(str, s.choices))})"


def descriptor(s: Setting) -> ParameterDescriptor:
    """``s``'s parameter descriptor: description, ``read_only`` = not ``runtime``, and its range
    (``IntegerRange`` for an int setting, ``FloatingPointRange`` for a float one; step 0 = any)."""
    ranges = {}
    if s.range is not None:
        lo, hi, step = (*s.range, 0)[:3]
        if s.type is int:
            ranges["integer_range"] = [IntegerRange(from_value=lo, to_value=hi, step=step)]
        else:
            ranges["floating_point_range"] = [FloatingPointRange(from_value=float(lo), to_value=float(hi),
                                                                 step=float(step))]
    return ParameterDescriptor(description=description(s), read_only=not s.runtime, **ranges)


def declare_parameters(node, lifecycle: bool = False, base: Sequence[Setting] | None = None) -> None:
    """Declare :func:`parameters` (``lifecycle``, ``base``) on ``node`` (an rclpy node), each with
    its :func:`descriptor`.

    A list setting (``instructions``) is declared as a string array: rclpy would take an empty
    list for a byte array, and reads ``[]`` from a parameter file as not set, which then gets
    the default."""
    for s in parameters(lifecycle, base):
        if s.type is not list:
            node.declare_parameter(s.name, s.default, descriptor(s))
        elif node.declare_parameter(s.name, Parameter.Type.STRING_ARRAY, descriptor(s)).value is None:
            node.set_parameters([Parameter(s.name, Parameter.Type.STRING_ARRAY, list(s.default))])


def empty_lists_as_string_arrays(params: list[Parameter]) -> list[Parameter]:
    """``params`` (about to be set) with an empty array given to a list setting (``instructions``)
    made a string array: ``ros2 param set ... instructions "[]"`` sends a bool array, which the
    parameter's type would refuse. A node's pre-set-parameters callback."""
    lists = {s.name for s in NODE_SETTINGS if s.type is list}
    return [Parameter(p.name, Parameter.Type.STRING_ARRAY, []) if p.name in lists and p.type_ in _ARRAYS
            and len(p.value) == 0 else p for p in params]


_NAMESPACE_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""One segment of a ROS namespace: a letter or ``_``, then letters, digits or ``_``."""
_ARRAYS = (Parameter.Type.BOOL_ARRAY, Parameter.Type.INTEGER_ARRAY, Parameter.Type.DOUBLE_ARRAY,
           Parameter.Type.BYTE_ARRAY)


def read_config(cls, value_of: Callable[[str], Any]):
    """A ``cls`` (:class:`ModelConfig` or :class:`PipelineConfig`) from the parameter values
    ``value_of(name)``; ValueError naming the setting for a value off its choices or range."""
    return cls(**{s.name: value_of(s.name) for s in settings(cls)})


def reasoner_namespace(value: str) -> str | None:
    """The ``reasoner`` parameter: None for ``local``; the reasoner's absolute namespace for
    ``remote:<namespace>`` (``remote:/gpu``, ``remote:gpu`` and ``remote:/`` or ``remote:`` for
    the root). ValueError naming the forms for anything else (a namespace segment is a letter or
    ``_`` and then letters, digits or ``_``)."""
    if value == "local":
        return None
    if isinstance(value, str) and value.startswith("remote:"):
        segments = [s for s in value[len("remote:"):].strip("/").split("/") if s]
        if all(_NAMESPACE_SEGMENT.fullmatch(s) for s in segments) and "//" not in value[len("remote:"):].strip("/"):
            return "/" + "/".join(segments)
    raise ValueError(f"parameter reasoner must be 'local' or 'remote:<namespace>' (the vrs-reasoner's namespace, "
                     f"e.g. remote:/gpu); got {value!r}")


def check_choices(value_of: Callable[[str], Any]) -> None:
    """ValueError ``parameter NAME must be one of A, B; got 'X'`` for the first parameter off its
    choices among those that decide how the node runs (the engine's and the node's own), or for a
    ``reasoner`` that is neither ``local`` nor ``remote:<namespace>``. The model settings are left
    to the model load, whose failure the node reports and survives."""
    for s in (*settings(PipelineConfig), *NODE_SETTINGS):
        if s.choices is not None and value_of(s.name) not in s.choices:
            raise ValueError(f"parameter {s.name} must be one of {', '.join(s.choices)}; got {value_of(s.name)!r}")
    reasoner_namespace(value_of("reasoner"))


def parameter_help(lifecycle: bool = False, base: Sequence[Setting] | None = None) -> list[str]:
    """The ``--help`` lines of :func:`parameters` (``lifecycle``, ``base``): ``  name (default
    X[, runtime-settable])`` and the wrapped description under it."""
    lines = []
    for s in parameters(lifecycle, base):
        settable = ", runtime-settable" if s.runtime else ""
        lines.append(f"  {s.name} (default {s.default!r}{settable})")
        lines += textwrap.wrap(description(s), 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return lines
