"""Commands of the node's ``targets`` topic (JSON), parsed strictly and applied to an engine. ROS-free.

A command is one JSON object with ``"op"``:

- ``{"op": "add", "instruction": "the cup"}``, or a prompt instead of the instruction:
  ``{"op": "add", "box": [x0, y0, x1, y1]}``, ``{"op": "add", "points": [[x, y]], "labels": [1]}``
  (both may be given; optional ``"stamp_ns"``, as on the ``prompt`` topic); optional ``"id": 3``
  (1..255; without it the lowest free id);
- ``{"op": "remove", "id": 3}``; ``{"op": "clear"}``;
- ``{"op": "set", "targets": [{...}, ...]}``: the whole list, each entry an ``add`` without ``op``.

:func:`parse_target_command` refuses, with a :class:`TargetCommandRefused` (a ``ValueError``) that
says why: what :func:`~vrs_node.core.prompt_json.read_json` refuses (size, depth, not JSON,
non-finite or oversized numbers); anything but an object with a known ``op``; a field the op does
not take; an entry with both or neither of an instruction and a prompt; an instruction that
:func:`~vrs_node.models.prompt.clean_instruction` refuses (empty, too long, control characters);
a prompt that :func:`~vrs_node.core.prompt_json.prompt_from_object` refuses; an id that is not a
JSON integer in 1..255; ``remove`` without an id; ``set`` with more than ``max_targets`` entries
or an id given twice. :func:`apply_target_command` then applies it to the engine, whose own
refusals (an unknown id, an id in use, too many targets, a prompt stamped for no frame) are
reported the same way. Either way a refused command changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vrs_node.core.prompt_json import (DEFAULT_MAX_PROMPT_POINTS, FIELDS as PROMPT_FIELDS, PromptRefused,
                                       prompt_from_object, read_json, short)
from vrs_node.core.target_specs import DEFAULT_MAX_TARGETS, MAX_TARGET_ID, TargetSpec
from vrs_node.models.prompt import clean_instruction

OPS = ("add", "remove", "clear", "set")
ENTRY_FIELDS = ("id", "instruction", *PROMPT_FIELDS)
"""Fields of a target entry: an ``add`` command's besides ``op``, and each of ``set``'s ``targets``."""
OP_FIELDS = {"add": ("op", *ENTRY_FIELDS), "remove": ("op", "id"), "clear": ("op",), "set": ("op", "targets")}
EVENT = "targets"
"""The ``event`` of every reply on ``status``."""


class TargetCommandRefused(ValueError):
    """A refused ``targets`` command; the message says why, ``op`` is its op when it could be read."""

    def __init__(self, reason: str, op: str | None = None):
        super().__init__(reason)
        self.op = op


@dataclass(frozen=True)
class TargetCommand:
    """A parsed command: ``op`` (one of :data:`OPS`); ``entries`` the (id or None, spec) pairs of
    ``add`` (one) and ``set`` (any number, none = no targets); ``target_id`` the id to ``remove``."""

    op: str
    entries: tuple[tuple[int | None, TargetSpec], ...] = ()
    target_id: int | None = None


def parse_target_command(text: str, max_targets: int = DEFAULT_MAX_TARGETS,
                         max_points: int = DEFAULT_MAX_PROMPT_POINTS) -> TargetCommand:
    """Parse a ``targets`` message; the module docstring lists what is refused
    (:class:`TargetCommandRefused`; nothing else is raised for any ``str``). ``max_targets`` bounds
    a ``set``'s entries, ``max_points`` each prompt's points."""
    try:
        data = read_json(text, "targets command")
    except PromptRefused as exc:
        raise TargetCommandRefused(str(exc)) from None
    if not isinstance(data, dict) or "op" not in data:
        raise TargetCommandRefused(f'a targets command must be a JSON object with "op": one of {", ".join(OPS)}')
    op = data["op"]
    if op not in OPS:
        raise TargetCommandRefused(f"unknown op {short(op)}; known: {', '.join(OPS)}")
    unknown = data.keys() - set(OP_FIELDS[op])
    if unknown:
        raise TargetCommandRefused(f"unknown fields for op {op}: {short(sorted(unknown))}; "
                                   f"known: {', '.join(OP_FIELDS[op])}", op)
    try:
        if op == "add":
            return TargetCommand(op, (_entry({k: v for k, v in data.items() if k != "op"}, max_points),))
        if op == "remove":
            if "id" not in data:
                raise TargetCommandRefused('remove needs the "id" of the target to remove')
            return TargetCommand(op, target_id=_target_id(data["id"]))
        if op == "clear":
            return TargetCommand(op)
        return TargetCommand(op, _entries(data.get("targets"), max_targets, max_points))
    except TargetCommandRefused as exc:
        raise TargetCommandRefused(str(exc), op) from None


def instructions_command(texts: Sequence[str], max_targets: int = DEFAULT_MAX_TARGETS) -> TargetCommand:
    """The ``set`` command of the node's ``instructions`` parameter: one instruction target per
    text, ids assigned in order (no texts: no targets). Refused (:class:`TargetCommandRefused`, op
    ``set``) for more than ``max_targets`` texts and for a text ``clean_instruction`` refuses."""
    if len(texts) > max_targets:
        raise TargetCommandRefused(_too_many(len(texts), max_targets), "set")
    entries = []
    for i, text in enumerate(texts):
        try:
            entries.append(_entry({"instruction": text}, DEFAULT_MAX_PROMPT_POINTS))
        except TargetCommandRefused as exc:
            raise TargetCommandRefused(f"instructions[{i}]: {exc}", "set") from None
    return TargetCommand("set", tuple(entries))


def _too_many(count: int, max_targets: int) -> str:
    return f"{count} targets given; at most {max_targets} are followed at once (parameter max_targets)"


def _target_id(value) -> int:
    if type(value) is not int or not 1 <= value <= MAX_TARGET_ID:
        raise TargetCommandRefused(f"id must be a JSON integer in 1..{MAX_TARGET_ID}, got {short(value)}")
    return value


def _entries(raw, max_targets: int, max_points: int) -> tuple[tuple[int | None, TargetSpec], ...]:
    """``set``'s ``targets``: a list of at most ``max_targets`` entries, no id given twice."""
    if type(raw) is not list:
        raise TargetCommandRefused(f'set needs "targets": a list of targets (may be empty), got {short(raw)}')
    if len(raw) > max_targets:
        raise TargetCommandRefused(_too_many(len(raw), max_targets))
    entries = []
    for i, item in enumerate(raw):
        try:
            if not isinstance(item, dict):
                raise TargetCommandRefused(f"a target must be a JSON object, got {short(item)}")
            unknown = item.keys() - set(ENTRY_FIELDS)
            if unknown:
                raise TargetCommandRefused(f"unknown fields: {short(sorted(unknown))}; known: {', '.join(ENTRY_FIELDS)}")
            entries.append(_entry(item, max_points))
        except TargetCommandRefused as exc:
            raise TargetCommandRefused(f"targets[{i}]: {exc}") from None
    ids = [target_id for target_id, _ in entries if target_id is not None]
    twice = sorted({target_id for target_id in ids if ids.count(target_id) > 1})
    if twice:
        raise TargetCommandRefused(f"id {twice[0]} is given to more than one target")
    return tuple(entries)


def _entry(data: dict, max_points: int) -> tuple[int | None, TargetSpec]:
    """One target (fields of :data:`ENTRY_FIELDS` only): (its id or None, its spec)."""
    prompt_fields = {k: v for k, v in data.items() if k in PROMPT_FIELDS}
    if ("instruction" in data) == bool(prompt_fields):
        got = "both" if prompt_fields else "neither"
        raise TargetCommandRefused('a target needs exactly one of "instruction" and a prompt ("box" and/or '
                                   f'"points" + "labels"); got {got}')
    target_id = _target_id(data["id"]) if "id" in data else None
    if "instruction" in data:
        try:
            clean_instruction(data["instruction"])
        except ValueError as exc:
            raise TargetCommandRefused(f"instruction refused: {exc}") from None
        return target_id, TargetSpec(instruction=data["instruction"])
    try:
        prompt, stamp_ns = prompt_from_object(prompt_fields, max_points)
    except PromptRefused as exc:
        raise TargetCommandRefused(f"prompt refused: {exc}") from None
    return target_id, TargetSpec(prompt=prompt, stamp_ns=stamp_ns)


def apply_target_command(engine, command: TargetCommand, what: str = "targets command") -> dict:
    """Apply ``command`` to ``engine`` (a :class:`~vrs_node.core.engine.StreamingEngine`) and
    return the reply for ``status``: ``{"event": "targets", "op": ..., "status": "accepted",
    "ids": [...], "targets": [{"id": ..., "label": ...}, ...]}``, ``ids`` being the ids the command
    assigned (``add``, ``set``) or dropped (``remove``, ``clear``) and ``targets`` the list after
    it. A refusal of the engine (ValueError; RuntimeError for an instruction without a language
    model) changes nothing and is answered by :func:`refusal` (``what`` names the command)."""
    try:
        if command.op == "add":
            (target_id, spec), = command.entries
            ids = [engine.add_target(spec, target_id)]
        elif command.op == "remove":
            engine.remove_target(command.target_id)
            ids = [command.target_id]
        elif command.op == "clear":
            ids = sorted(engine.target_labels())
            engine.clear_targets()
        else:
            ids = list(engine.set_targets(command.entries))
    except (ValueError, RuntimeError) as exc:
        return refusal(command.op, str(exc), what)
    return {"event": EVENT, "op": command.op, "status": "accepted", "ids": ids,
            "targets": [{"id": i, "label": label} for i, label in sorted(engine.target_labels().items())]}


def refusal(op: str | None, reason: str, what: str = "targets command") -> dict:
    """The reply for ``status`` to a refused command: ``{"event": "targets", "op": op (None when it
    could not be read), "status": "error", "reason": "<what> refused: <reason>"}``."""
    return {"event": EVENT, "op": op, "status": "error", "reason": f"{what} refused: {reason}"}


def handle_target_message(engine, text: str, max_points: int = DEFAULT_MAX_PROMPT_POINTS) -> dict:
    """A ``targets`` message, parsed (at most ``engine.config.max_targets`` entries) and applied:
    the reply for ``status`` (:func:`apply_target_command`, or :func:`refusal`)."""
    try:
        command = parse_target_command(text, engine.config.max_targets, max_points)
    except TargetCommandRefused as exc:
        return refusal(exc.op, str(exc))
    return apply_target_command(engine, command)


def handle_instructions(engine, texts: Sequence[str]) -> dict:
    """The node's ``instructions`` parameter set to ``texts``: :func:`instructions_command`
    applied (an empty list clears the targets); the reply for ``status``, a refusal's reason
    starting ``instructions refused:``."""
    try:
        command = instructions_command(texts, engine.config.max_targets)
    except TargetCommandRefused as exc:
        return refusal("set", str(exc), "instructions")
    return apply_target_command(engine, command, "instructions")
