"""The settings dataclasses (vrs_node.models.config, vrs_node.core.config) and what is derived from them."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from vrs_node.core.config import ENGINE_MODES, PipelineConfig
from vrs_node.models.config import (PRECISION_CHOICES, QUANTIZATION_MODES, ModelConfig, add_arguments,
                                    from_arguments, settings)
from vrs_node.models.precision import PRECISIONS


def test_every_field_is_a_setting_with_help():
    for cls in (ModelConfig, PipelineConfig):
        names = [s.name for s in settings(cls)]
        assert names == [f.name for f in dataclasses.fields(cls)]
        for s in settings(cls):
            assert s.help.strip(), s.name
            assert isinstance(s.default, s.type)
            if s.choices is not None:
                assert s.default in s.choices, s.name
            if s.range is not None:
                assert s.range[0] <= s.default <= s.range[1], s.name


def test_choices_are_the_libraries_values():
    assert PRECISION_CHOICES == ("auto", *PRECISIONS)
    assert QUANTIZATION_MODES[0] == "none"
    assert ENGINE_MODES == ("sync", "live")


@pytest.mark.parametrize("cls, name, value", [
    (PipelineConfig, "mode", "fast"),
    (PipelineConfig, "window_frames", 0),
    (PipelineConfig, "max_cond_frames", 0),
    (PipelineConfig, "max_catchup_frames", 0),
    (PipelineConfig, "period_s", -1.0),
    (PipelineConfig, "lost_after_frames", -1),
    (PipelineConfig, "sparse_frames", -1),
    (ModelConfig, "precision", "fp16"),
    (ModelConfig, "reasoner_quantization", "int4"),
    (ModelConfig, "image_size", -32),
])
def test_values_off_their_choices_or_below_their_range_are_refused_with_the_name(cls, name, value):
    with pytest.raises(ValueError, match=name):
        cls(**{name: value})


def test_flags_carry_defaults_types_choices_and_aliases():
    parser = argparse.ArgumentParser()
    add_arguments(parser, ModelConfig, aliases={"model_profile": "--profile"})
    add_arguments(parser, PipelineConfig, exclude=("mode",))
    defaults = parser.parse_args([])
    assert from_arguments(ModelConfig, defaults) == ModelConfig()
    assert from_arguments(PipelineConfig, defaults) == PipelineConfig()
    assert not hasattr(defaults, "mode")

    args = parser.parse_args(["--profile", "vrshq-7b", "--compile", "--window-frames", "30", "--period-s", "2.5",
                              "--precision", "bf16"])
    assert from_arguments(ModelConfig, args) == ModelConfig(model_profile="vrshq-7b", compile=True, precision="bf16")
    assert from_arguments(PipelineConfig, args, mode="live") == PipelineConfig(window_frames=30, period_s=2.5,
                                                                               mode="live")
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--window-frames", "many"])
