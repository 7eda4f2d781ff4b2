"""Settings as dataclass fields, and :class:`ModelConfig`, the settings that say which models load.

A setting is a frozen-dataclass field made by :func:`setting`: its default, a sentence of help, its
choices or its range, and whether it may change while running. That field is the one home of
these facts; the node's parameter descriptors (:mod:`vrs_node.ros.params`), the command-line
flags of ``vrs-replay`` (:func:`add_arguments`, :func:`from_arguments`) and
``config/vrs_node.yaml`` (checked by ``test/test_ros_params.py``) are derived from it.

``range = (lo, hi)`` or ``(lo, hi, step)``: the dataclass refuses a value below ``lo`` or off
``choices``; ``hi`` and ``step`` are also enforced by the node's parameter descriptors (a ROS
parameter gets a range, a library caller may go beyond it).

This module imports no torch, so that a command's ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

PRECISION_CHOICES = ("auto", "fp32", "bf16")
"""Values of ``precision`` (:mod:`vrs_node.models.precision` says what each means)."""
QUANTIZATION_MODES = ("none", "int8", "nf4")
"""Values of ``reasoner_quantization`` (:mod:`vrs_node.models.quantize`)."""


def setting(default: Any, help: str, *, choices: tuple | None = None, range: tuple | None = None,
            runtime: bool = False):
    """A dataclass field holding a setting: ``default`` (its type is the setting's), ``help`` (one
    sentence), ``choices`` or ``range`` (``(lo, hi)`` or ``(lo, hi, step)``), ``runtime`` (may be
    changed while running: a node parameter that is not read-only)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": range, "runtime": runtime})


@dataclass(frozen=True)
class Setting:
    """One setting of a settings dataclass, as :func:`settings` lists it."""

    name: str
    default: Any
    help: str
    choices: tuple | None
    range: tuple | None
    runtime: bool

    @property
    def type(self) -> type:
        return type(self.default)


def settings(cls) -> list[Setting]:
    """The settings of the dataclass ``cls`` (fields made by :func:`setting`), in field order."""
    return [Setting(f.name, f.default, f.metadata["help"], f.metadata["choices"], f.metadata["range"],
                    f.metadata["runtime"])
            for f in dataclasses.fields(cls) if "help" in f.metadata]


def check_settings(config) -> None:
    """ValueError if a setting of ``config`` is off its choices or below its range."""
    for s in settings(type(config)):
        value = getattr(config, s.name)
        if s.choices is not None and value not in s.choices:
            raise ValueError(f"{s.name} must be one of {', '.join(map(str, s.choices))}, got {value!r}")
        if s.range is not None and value < s.range[0]:
            raise ValueError(f"{s.name} must be >= {s.range[0]}, got {value}")


def add_arguments(parser, cls, exclude: tuple[str, ...] = (), aliases: dict[str, str] | None = None) -> None:
    """A ``--name-with-dashes`` option on ``parser`` (a parser or an argument group) per setting of
    ``cls`` not in ``exclude``, with its type, default, choices and help; ``aliases`` maps a
    setting to one more option string (``{"model_profile": "--profile"}``). A bool setting is a
    ``--flag`` / ``--no-flag`` pair."""
    for s in settings(cls):
        if s.name in exclude:
            continue
        flags = [f"--{s.name.replace('_', '-')}"] + ([aliases[s.name]] if aliases and s.name in aliases else [])
        text = f"{s.help} (default {s.default!r})"
        if s.type is bool:
            parser.add_argument(*flags, dest=s.name, action=argparse.BooleanOptionalAction, default=s.default,
                                help=text)
        else:
            parser.add_argument(*flags, dest=s.name, type=s.type, choices=s.choices, default=s.default, help=text)


def from_arguments(cls, args: argparse.Namespace, **overrides):
    """A ``cls`` from the options :func:`add_arguments` made (settings absent from ``args`` keep
    their defaults), with ``overrides`` on top."""
    values = {s.name: getattr(args, s.name) for s in settings(cls) if hasattr(args, s.name)}
    return cls(**{**values, **overrides})


@dataclass(frozen=True)
class ModelConfig:
    """Which models to load, on which device, in which precision
    (:func:`vrs_node.models.profiles.load_configured_models`)."""

    model_profile: str = setting(
        "tiny-random", "model profile (vrs_node.models.profiles): tiny-random, vrshq-7b, sam2.1-hiera-{t,s,b+,l}, "
        "*-random, ...")
    device: str = setting("auto", "torch device: auto, cpu, cuda, cuda:N")
    precision: str = setting(
        "auto", "fp32 | bf16 | auto (bf16 on CUDA, fp32 elsewhere): bf16 = SAM-2 under autocast, MLLM bf16 weights",
        choices=PRECISION_CHOICES)
    compile: bool = setting(
        False, "torch.compile SAM-2's parts as sam2's vos_optimized does (for CUDA; the first frames compile)")
    reasoner_quantization: str = setting(
        "none", "none | int8 | nf4: the MLLM's LLaMA quantized with bitsandbytes (for GPUs short of memory)",
        choices=QUANTIZATION_MODES)
    image_size: int = setting(0, "SAM-2 input resolution in pixels (multiple of 32); 0 = the profile's",
                              range=(0, 2048, 32))
    sam2_checkpoint: str = setting("", "SAM-2 checkpoint file (.pt) for the sam2.1-hiera-* profiles")
    vrshq_checkpoint: str = setting("", "directory of the released VRS-HQ weights (profile vrshq-7b)")
    clip_anchor: str = setting(
        "openai", "open_clip weights of the CLIP ViT-L-14-336 anchor scorer (profile vrshq-7b): a tag or a file")

    def __post_init__(self) -> None:
        check_settings(self)
