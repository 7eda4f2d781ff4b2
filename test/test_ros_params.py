"""The node's parameters (vrs_node.ros.params) are derived from the settings dataclasses and listed,
in order and with their defaults, in config/vrs_node.yaml; no ROS graph is started."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import REPO
from rcl_interfaces.msg import FloatingPointRange, IntegerRange
from rclpy.parameter import Parameter

from vrs_node.core.config import PipelineConfig
from vrs_node.models.config import ModelConfig, Setting, settings
from vrs_node.ros.params import (AUTOSTART, RUNTIME_ENGINE_PARAMETERS, check_choices, declare_parameters,
                                 description, descriptor, empty_lists_as_string_arrays, parameter_help, parameters,
                                 read_config)

DEFAULTS = {s.name: s.default for s in parameters()}


class ParameterTable:
    """Stands in for an rclpy node in :func:`declare_parameters`: records each declaration, a
    parameter declared by its type (a string array) unset, and each value set afterwards."""

    def __init__(self):
        self.rows = []

    def declare_parameter(self, name, value, descriptor):
        self.rows.append((name, value, descriptor))
        return Parameter(name, value=None) if isinstance(value, Parameter.Type) else Parameter(name, value=value)

    def set_parameters(self, params):
        for param in params:
            index = next(i for i, row in enumerate(self.rows) if row[0] == param.name)
            self.rows[index] = (param.name, param.value, self.rows[index][2])


def test_the_packaged_parameter_file_lists_the_declared_parameters_in_order_with_their_defaults():
    values = yaml.safe_load((REPO / "config" / "vrs_node.yaml").read_text())["/**"]["ros__parameters"]
    assert list(values) == list(DEFAULTS), "config/vrs_node.yaml's names or order differ from the node's"
    for name, value in values.items():
        assert (value, type(value)) == (DEFAULTS[name], type(DEFAULTS[name])), name


@pytest.mark.parametrize("lifecycle", [False, True], ids=["node", "lifecycle"])
def test_the_node_declares_each_parameter_once_with_its_default_and_a_description(lifecycle):
    table = ParameterTable()
    declare_parameters(table, lifecycle)
    assert [(name, value) for name, value, _ in table.rows] == [(s.name, s.default) for s in parameters(lifecycle)]
    names = [name for name, _, _ in table.rows]
    assert len(set(names)) == len(names)
    assert ("autostart" in names) == lifecycle
    for name, _, d in table.rows:
        assert d.description.strip(), f"{name} has no description"


@pytest.mark.parametrize("s", [*settings(ModelConfig), *settings(PipelineConfig)], ids=lambda s: s.name)
def test_a_settings_help_runtime_flag_and_range_are_its_descriptors(s):
    d = descriptor(s)
    assert d.description.startswith(s.help)
    assert d.read_only == (not s.runtime)
    if s.range is None:
        assert not d.integer_range and not d.floating_point_range
    elif s.type is int:
        (r,) = d.integer_range
        assert (r.from_value, r.to_value, r.step) == (*s.range[:2], s.range[2] if len(s.range) > 2 else 0)
        assert not d.floating_point_range
    else:
        (r,) = d.floating_point_range
        assert (r.from_value, r.to_value) == s.range[:2] and not d.integer_range


def test_some_descriptors_by_name():
    by_name = {s.name: descriptor(s) for s in parameters(lifecycle=True)}
    assert by_name["image_size"].integer_range == [IntegerRange(from_value=0, to_value=2048, step=32)]
    assert by_name["score_threshold"].floating_point_range == [FloatingPointRange(from_value=-50.0, to_value=50.0)]
    assert not by_name["score_threshold"].read_only and not by_name["instruction"].read_only
    assert by_name["mode"].read_only and by_name["model_profile"].read_only and by_name["autostart"].read_only
    assert by_name["max_image_pixels"].integer_range[0].to_value == 1_000_000_000
    assert RUNTIME_ENGINE_PARAMETERS == {"score_threshold", "period_s", "lost_after_frames"}
    runtime = {name for name, d in by_name.items() if not d.read_only}
    assert runtime == RUNTIME_ENGINE_PARAMETERS | {"instruction", "instructions"}
    assert by_name["max_targets"].read_only and by_name["max_targets"].integer_range[0].to_value == 255


def test_choices_the_help_does_not_name_are_added_to_the_description():
    named = Setting(name="x", default="a", help="a: one thing; b: another", choices=("a", "b"), range=None,
                    runtime=False)
    assert description(named) == named.help
    unnamed = dataclasses.replace(named, help="how it runs", choices=("a", "bb"))
    assert description(unnamed) == "how it runs (one of: a, bb)"
    for s in parameters():
        for choice in s.choices or ():
            assert choice in description(s), (s.name, choice)


def test_the_node_reads_back_the_library_defaults_but_mode_live():
    assert read_config(ModelConfig, DEFAULTS.__getitem__) == ModelConfig()
    assert read_config(PipelineConfig, DEFAULTS.__getitem__) == PipelineConfig(mode="live")
    assert PipelineConfig().mode == "sync" and DEFAULTS["mode"] == "live"
    with pytest.raises(ValueError, match="window_frames"):
        read_config(PipelineConfig, {**DEFAULTS, "window_frames": 0}.__getitem__)


def test_choices_are_checked_at_start_but_the_models_are_left_to_their_load():
    check_choices(DEFAULTS.__getitem__)
    with pytest.raises(ValueError, match=r"^parameter mode must be one of sync, live; got 'bogus'$"):
        check_choices({**DEFAULTS, "mode": "bogus"}.__getitem__)
    with pytest.raises(ValueError, match=r"^parameter image_transport must be one of raw, compressed; got 'x'$"):
        check_choices({**DEFAULTS, "image_transport": "x"}.__getitem__)
    check_choices({**DEFAULTS, "precision": "fp16"}.__getitem__)  # a model load failure, reported on status


def test_the_help_lists_every_parameter_with_its_default():
    text = "\n".join(parameter_help(lifecycle=True))
    for s in parameters(lifecycle=True):
        assert f"  {s.name} (default {s.default!r}" in text, s.name
    assert "  score_threshold (default 0.0, runtime-settable)\n" in text
    assert f"  autostart (default True)\n      {AUTOSTART.help}" in text


def test_instructions_is_a_string_array_even_empty_or_empty_in_a_parameter_file(ros_nodes, tmp_path):
    import rclpy

    path = tmp_path / "params.yaml"
    path.write_text("/**:\n  ros__parameters:\n    instructions: []\n")
    for args in ([], ["--ros-args", "--params-file", str(path)], ["--ros-args", "-p", "instructions:=[a, b]"]):
        node = rclpy.create_node("params_probe", cli_args=args)
        ros_nodes.append(node)
        declare_parameters(node)
        param = node.get_parameter("instructions")
        assert param.type_ == Parameter.Type.STRING_ARRAY, args
        assert param.value == (["a", "b"] if "-p" in args else []), args
        assert node.set_parameters([Parameter("instructions", value=["the cup"])])[0].successful


def test_an_empty_array_of_any_type_sets_instructions_to_none(ros_nodes):
    import rclpy

    node = rclpy.create_node("params_probe", cli_args=["--ros-args", "-p", "instructions:=[a]"])
    ros_nodes.append(node)
    declare_parameters(node)
    node.add_pre_set_parameters_callback(empty_lists_as_string_arrays)
    for empty in (Parameter("instructions", value=[]), Parameter("instructions", Parameter.Type.BOOL_ARRAY, [])):
        assert node.set_parameters([empty])[0].successful
        assert node.get_parameter("instructions").type_ == Parameter.Type.STRING_ARRAY
    assert not node.set_parameters([Parameter("instructions", value=[1, 2])])[0].successful
