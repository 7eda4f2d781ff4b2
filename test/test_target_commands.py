"""The ``targets`` topic's commands (vrs_node.core.target_commands): strict parsing, every refusal
with its reason, and the commands applied to a real engine (tiny-random models), where a refusal
leaves the engine's targets as they were."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import FUZZ_EXAMPLES, box_of, davis_sequence, grounding_engine
from hypothesis import given, settings
from hypothesis import strategies as st

from vrs_node.core.prompt_json import MAX_PROMPT_BYTES
from vrs_node.core.target_commands import (OPS, TargetCommandRefused, apply_target_command, handle_instructions,
                                           handle_target_message, instructions_command, parse_target_command)
from vrs_node.core.target_specs import MAX_TARGET_ID, TargetSpec
from vrs_node.models.prompt import clean_instruction


def parse(command, **limits):
    return parse_target_command(command if isinstance(command, str) else json.dumps(command), **limits)


# --- parsing -------------------------------------------------------------------------------------

def test_each_op_parses_to_its_command():
    add = parse({"op": "add", "instruction": "The  Cup", "id": 3})
    assert (add.op, add.entries) == ("add", ((3, TargetSpec(instruction="The  Cup")),))
    (target_id, spec), = parse({"op": "add", "box": [1, 2, 30, 40], "stamp_ns": 7}).entries
    assert target_id is None and spec.prompt.box == (1.0, 2.0, 30.0, 40.0) and spec.stamp_ns == 7
    assert spec.label == "box"
    (_, spec), = parse({"op": "add", "points": [[5, 6]], "labels": [1], "box": [0, 0, 9, 9]}).entries
    assert spec.prompt.points.tolist() == [[5.0, 6.0]] and spec.prompt.box == (0.0, 0.0, 9.0, 9.0)
    assert parse({"op": "remove", "id": 255}).target_id == 255
    assert parse({"op": "clear"}).op == "clear"
    many = parse({"op": "set", "targets": [{"instruction": "a"}, {"id": 9, "points": [[1, 2]], "labels": [0]}]})
    assert [(i, s.label) for i, s in many.entries] == [(None, "a"), (9, "points")]
    assert parse({"op": "set", "targets": []}).entries == ()


@pytest.mark.parametrize("command, op, words", [
    ("{not json", None, "targets command is not JSON"),
    ('{"op": "add", "box": [0, 0, NaN, 5]}', None, "targets command numbers must be finite; got NaN"),
    ('{"op": "add", "id": ' + "9" * 30 + ', "instruction": "a"}', None, "integer of 30 digits"),
    ("[" * 20 + "]" * 20, None, "nests arrays/objects 20 deep"),
    ('"add"', None, 'a targets command must be a JSON object with "op": one of add, remove, clear, set'),
    ({"instruction": "a"}, None, 'JSON object with "op"'),
    ({"op": "rename"}, None, 'unknown op "rename"; known: add, remove, clear, set'),
    ({"op": ["add"]}, None, "unknown op"),
    ({"op": "add", "instruction": "a", "colour": "red"}, "add", 'unknown fields for op add: \\["colour"\\]'),
    ({"op": "remove", "id": 1, "instruction": "a"}, "remove", "unknown fields for op remove"),
    ({"op": "clear", "id": 1}, "clear", "unknown fields for op clear"),
    ({"op": "set", "instruction": "a"}, "set", "unknown fields for op set"),
    ({"op": "add", "instruction": "a", "box": [0, 0, 5, 5]}, "add", 'exactly one of "instruction" and a prompt.*both'),
    ({"op": "add"}, "add", 'exactly one of "instruction" and a prompt.*neither'),
    ({"op": "add", "id": 2}, "add", "neither"),
    ({"op": "add", "instruction": "   "}, "add", "instruction refused: the instruction is empty"),
    ({"op": "add", "instruction": ""}, "add", "instruction refused: the instruction is empty"),
    ({"op": "add", "instruction": 5}, "add", "instruction refused: the instruction must be text, got int"),
    ({"op": "add", "instruction": "x" * 1001}, "add", "instruction refused: the instruction is 1001 characters"),
    ({"op": "add", "instruction": "a\x00b"}, "add", "instruction refused: .*control character \\(U\\+0000\\)"),
    ({"op": "add", "box": [10, 10, 5, 20]}, "add", "prompt refused: box must be .* x0 < x1"),
    ({"op": "add", "points": [[1, 2]]}, "add", 'prompt refused: "points" and "labels" must be given together'),
    ({"op": "add", "stamp_ns": 5}, "add", 'prompt refused: prompt must be a JSON object with "box"'),
    ({"op": "add", "box": [0, 0, 5, 5], "stamp_ns": -1}, "add", "prompt refused: stamp_ns must be"),
    ({"op": "add", "instruction": "a", "id": 0}, "add", "id must be a JSON integer in 1..255, got 0"),
    ({"op": "add", "instruction": "a", "id": 256}, "add", "id must be a JSON integer in 1..255, got 256"),
    ({"op": "add", "instruction": "a", "id": 2.0}, "add", "id must be a JSON integer in 1..255, got 2.0"),
    ({"op": "add", "instruction": "a", "id": True}, "add", "got true"),
    ({"op": "add", "instruction": "a", "id": None}, "add", "got null"),
    ({"op": "remove"}, "remove", 'remove needs the "id"'),
    ({"op": "remove", "id": "3"}, "remove", 'id must be a JSON integer in 1..255, got "3"'),
    ({"op": "set"}, "set", 'set needs "targets": a list of targets \\(may be empty\\), got null'),
    ({"op": "set", "targets": {"instruction": "a"}}, "set", 'set needs "targets"'),
    ({"op": "set", "targets": ["a"]}, "set", 'targets\\[0\\]: a target must be a JSON object, got "a"'),
    ({"op": "set", "targets": [{"instruction": "a"}, {"op": "add", "instruction": "b"}]}, "set",
     'targets\\[1\\]: unknown fields: \\["op"\\]'),
    ({"op": "set", "targets": [{"instruction": "a"}, {"instruction": " "}]}, "set",
     "targets\\[1\\]: instruction refused: the instruction is empty"),
    ({"op": "set", "targets": [{"instruction": "a", "id": 4}, {"box": [0, 0, 5, 5], "id": 4}]}, "set",
     "id 4 is given to more than one target"),
    ({"op": "set", "targets": [{"instruction": f"t{i}"} for i in range(9)]}, "set",
     "9 targets given; at most 8 are followed at once \\(parameter max_targets\\)"),
])
def test_every_malformed_command_is_refused_with_its_reason(command, op, words):
    with pytest.raises(TargetCommandRefused, match=words) as caught:
        parse(command)
    assert caught.value.op == op


def test_the_limits_are_the_callers():
    with pytest.raises(TargetCommandRefused, match="3 targets given; at most 2"):
        parse({"op": "set", "targets": [{"instruction": "a"}, {"instruction": "b"}, {"instruction": "c"}]},
              max_targets=2)
    with pytest.raises(TargetCommandRefused, match="prompt refused: prompt has 3 points; at most 2"):
        parse({"op": "add", "points": [[1, 1]] * 3, "labels": [1] * 3}, max_points=2)
    with pytest.raises(TargetCommandRefused, match=f"longer than {MAX_PROMPT_BYTES} bytes"):
        parse({"op": "add", "instruction": "a" * MAX_PROMPT_BYTES})


def test_the_instructions_parameter_is_a_set_of_instruction_targets():
    command = instructions_command(["the cup", "the hand"])
    assert command.op == "set" and [(i, s.instruction) for i, s in command.entries] == \
        [(None, "the cup"), (None, "the hand")]
    assert instructions_command([]).entries == ()
    with pytest.raises(TargetCommandRefused, match="instructions\\[1\\]: instruction refused: the instruction is empty"):
        instructions_command(["the cup", " "])
    with pytest.raises(TargetCommandRefused, match="2 targets given; at most 1"):
        instructions_command(["a", "b"], max_targets=1)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 300), st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from(["", " ", "the cup", "a\x00b", "x" * 1001]), st.just([0, 0, 5, 5]),
                   st.just([[1, 2]]), st.just([1]), st.just([10, 10, 5, 20]))
GOOD_ENTRY = st.builds(lambda source, extra: {**source, **extra},
                       st.one_of(st.builds(lambda t: {"instruction": t}, st.sampled_from(["the cup", " ", "A  hand"])),
                                 st.just({"box": [0, 0, 5, 5]}), st.just({"points": [[1, 2]], "labels": [1]})),
                       st.dictionaries(st.sampled_from(["id", "stamp_ns"]), st.integers(-1, 256), max_size=2))
ENTRY = st.one_of(GOOD_ENTRY, st.dictionaries(
    st.sampled_from(["id", "instruction", "box", "points", "labels", "stamp_ns", "colour"]), VALUES, max_size=4))
COMMAND = st.one_of(
    st.builds(lambda op, entry: {"op": op, **entry}, st.sampled_from([*OPS, "rename", 1]), ENTRY),
    st.builds(lambda entries: {"op": "set", "targets": entries}, st.lists(ENTRY, max_size=10)),
).map(json.dumps)


@settings(max_examples=int(os.environ.get("VRS_FUZZ_EXAMPLES", "200")), derandomize=True, database=None,
          deadline=None)
@given(text=st.one_of(COMMAND, st.text(max_size=40)), max_targets=st.integers(1, 9))
def test_fuzz_targets_commands(text, max_targets):
    """Any text is a command within its contract or a TargetCommandRefused, nothing else."""
    try:
        command = parse_target_command(text, max_targets)
    except TargetCommandRefused as exc:
        assert str(exc) and exc.op in (None, *OPS)
        FUZZ_EXAMPLES["targets command"] += 1
        return
    assert command.op in OPS and len(command.entries) <= max(max_targets, 1)
    assert command.op in ("add", "set") or not command.entries
    assert (command.target_id is not None) == (command.op == "remove")
    ids = [i for i, _ in command.entries if i is not None] + [command.target_id or 1]
    assert all(type(i) is int and 1 <= i <= MAX_TARGET_ID for i in ids)
    for _, spec in command.entries:
        assert spec.prompt is not None or clean_instruction(spec.instruction).text
    FUZZ_EXAMPLES["targets command"] += 1


# --- applied to the engine -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_frames():
    """A sync engine (tiny-random, 128 px, at most 3 targets) with two frames in its window."""
    frames, masks, _ = davis_sequence("blackswan", 2)
    engine, _ = grounding_engine(max_targets=3, period_s=0.0)
    for i, frame in enumerate(frames):
        engine.push(frame, 1_000 + i)
    yield engine, frames, masks
    engine.close()


def send(engine, command) -> dict:
    return handle_target_message(engine, json.dumps(command) if isinstance(command, dict) else command)


def refused(engine, command, words):
    """``command`` is refused with ``words`` in its reason, and the engine's targets are unchanged."""
    before = engine.target_labels()
    reply = send(engine, command)
    assert reply["event"] == "targets" and reply["status"] == "error", reply
    assert words in reply["reason"] and reply["reason"].startswith("targets command refused: "), reply
    assert engine.target_labels() == before
    return reply


def test_commands_change_the_engines_targets_and_say_which_ids(engine_frames):
    engine, _, masks = engine_frames
    assert send(engine, {"op": "clear"})["status"] == "accepted"
    reply = send(engine, {"op": "add", "box": list(box_of(masks[0]))})
    assert (reply["op"], reply["status"], reply["ids"]) == ("add", "accepted", [1])
    reply = send(engine, {"op": "add", "instruction": "the black swan", "id": 5})
    assert reply["ids"] == [5] and reply["targets"] == [{"id": 1, "label": "box"}, {"id": 5, "label": "the black swan"}]
    assert send(engine, {"op": "add", "points": [[400, 250]], "labels": [1]})["ids"] == [2]
    reply = send(engine, {"op": "remove", "id": 1})
    assert reply["ids"] == [1] and engine.target_labels() == {2: "points", 5: "the black swan"}
    reply = send(engine, {"op": "set", "targets": [{"instruction": "the water"}, {"id": 7, "box": [0, 0, 50, 50]}]})
    assert (reply["op"], reply["ids"]) == ("set", [1, 7]) and engine.target_labels() == {1: "the water", 7: "box"}
    before = sorted(engine.target_labels())
    reply = send(engine, {"op": "clear"})
    assert reply["ids"] == before and reply["targets"] == [] and engine.target_labels() == {}


def test_refused_commands_change_nothing(engine_frames):
    engine, _, masks = engine_frames
    send(engine, {"op": "set", "targets": [{"id": 1, "box": list(box_of(masks[0]))}, {"id": 3, "instruction": "a"}]})
    assert engine.target_labels() == {1: "box", 3: "a"}
    refused(engine, "{not json", "targets command is not JSON")
    refused(engine, {"op": "add", "instruction": "  "}, "the instruction is empty")
    refused(engine, {"op": "remove", "id": 2}, "2")  # an unknown id: the engine's ValueError
    refused(engine, {"op": "add", "id": 3, "box": [0, 0, 9, 9]}, "3")  # an id in use
    refused(engine, {"op": "add", "box": [0, 0, 9, 9], "stamp_ns": 5}, "no frame with stamp 5 ns")
    refused(engine, {"op": "set", "targets": [{"box": [0, 0, 9, 9]}, {"box": [0, 0, 9, 9], "stamp_ns": 5}]},
            "no frame with stamp 5 ns")
    refused(engine, {"op": "add", "box": [9000, 9000, 9500, 9500]}, "outside the 854x480 image")
    send(engine, {"op": "add", "instruction": "the water"})
    assert len(engine.target_labels()) == 3
    refused(engine, {"op": "add", "box": [0, 0, 9, 9]}, "max_targets")  # 3 targets: no room left
    refused(engine, {"op": "set", "targets": [{"instruction": f"t{i}"} for i in range(4)]},
            "4 targets given; at most 3 are followed at once (parameter max_targets)")


def test_the_instructions_parameter_replaces_the_targets_or_is_refused(engine_frames):
    engine, _, masks = engine_frames
    apply_target_command(engine, parse({"op": "set", "targets": [{"box": list(box_of(masks[0]))}]}))
    reply = handle_instructions(engine, ["the black swan", "the water"])
    assert reply["status"] == "accepted" and engine.target_labels() == {1: "the black swan", 2: "the water"}
    before = engine.target_labels()
    reply = handle_instructions(engine, ["a", "b", "c", "d"])
    assert reply["reason"] == ("instructions refused: 4 targets given; at most 3 are followed at once "
                               "(parameter max_targets)") and engine.target_labels() == before
    reply = handle_instructions(engine, ["the cup", ""])
    assert reply["reason"].startswith("instructions refused: instructions[1]: instruction refused: the instruction is")
    assert engine.target_labels() == before
    assert handle_instructions(engine, [])["status"] == "accepted" and engine.target_labels() == {}


def test_two_box_targets_are_tracked_into_the_instance_map(engine_frames):
    engine, frames, masks = engine_frames
    send(engine, {"op": "clear"})
    box = box_of(masks[0])
    send(engine, {"op": "add", "box": list(box)})
    send(engine, {"op": "add", "box": [0, 0, 120, 100]})
    result = engine.push(frames[0], 2_000)
    assert [t.id for t in result.targets] == [1, 2] and [t.label for t in result.targets] == ["box", "box"]
    assert result.instance_map.shape == result.mask.shape and result.instance_map.dtype == np.uint8
    assert np.array_equal(result.mask > 0, result.instance_map > 0)
