"""TargetBook: the targets a :class:`~vrs_node.core.engine.StreamingEngine` follows, and the commands
waiting for its next processed frame.

Any thread may command (add, remove, replace, clear, set the one prompt or instruction); each
command is checked at once and a refusal raises ValueError and changes nothing. What the target
tracker must do is queued as *operations*, taken by the tracking thread at its next frame
(:meth:`TargetBook.take`), in order: ``(RESET,)`` forget every target's memory, ``(REMOVE, id)``
forget one, ``(PROMPT, id, PendingPrompt)`` condition one. Instructions are handed to the
:class:`~vrs_node.core.queries.QueryScheduler`, whose answers come back through
:meth:`TargetBook.apply_grounding` as prompts on their keyframes.

Locking: the book's lock is never held while calling into the scheduler (the scheduler calls
:meth:`apply_grounding` with its own lock held). A target's instruction is forgotten by the
scheduler before the target leaves the book and followed after it enters, so an answer for a
removed or replaced target is never applied to its successor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from vrs_node.core.frame_report import TargetState
from vrs_node.core.frames import Frame, FrameWindow
from vrs_node.core.grounding import Grounding
from vrs_node.core.prompt_json import fit_to_image
from vrs_node.core.cohorts import PreparedCatchUp
from vrs_node.core.prompts import MaskPrompt, PointsPrompt, Prompt, TokenPrompt
from vrs_node.core.queries import QueryScheduler
from vrs_node.core.target_specs import MAX_TARGET_ID, TargetSpec, check_known_target, check_target_id
from vrs_node.core.tracker import FrameFeatures
from vrs_node.models.prompt import Instruction

log = logging.getLogger(__name__)

SINGLE_TARGET_ID = 1
"""The id of the one target that ``set_instruction`` and ``set_prompt`` set."""
RESET, REMOVE, PROMPT = "reset", "remove", "prompt"


@dataclass
class PendingPrompt:
    """A prompt waiting for the next processed frame, on that frame or on a past one (its
    ``frame_index`` or ``stamp_ns``); ``keyframe`` carries a grounding's keyframe features (usable
    after the window evicted that frame); ``new_target`` starts the target's memory anew (else its
    conditioning frames are kept). ``prepared``: the grounding's catch-up, prepared on the grounding
    thread through the window's frames up to index ``prepared_through``."""

    prompt: Prompt
    frame_index: int | None = None
    stamp_ns: int | None = None
    keyframe: FrameFeatures | None = None
    new_target: bool = True
    prepared: PreparedCatchUp | None = None
    prepared_through: int | None = None


@dataclass
class _Target:
    """A followed target: its label, its instruction (None for a prompt target) and the stamp of
    the keyframe of its last applied grounding."""

    label: str
    instruction: Instruction | None = None
    grounded_stamp_ns: int | None = None


def no_stamp_reason(stamp_ns: int, frames: list[Frame]) -> str:
    """Why a prompt stamped ``stamp_ns`` finds no frame among ``frames`` (the window, oldest first)."""
    held = f"held: stamps {frames[0].stamp_ns}..{frames[-1].stamp_ns}" if frames else "the window is empty"
    return f"no frame with stamp {stamp_ns} ns in the window ({held})"


class TargetBook:
    """The followed targets (module docstring), at most ``max_targets`` of them."""

    def __init__(self, window: FrameWindow, queries: QueryScheduler, max_targets: int):
        self._window = window
        self._queries = queries
        self.max_targets = max_targets
        self._lock = threading.Lock()
        self._targets: dict[int, _Target] = {}
        self._ops: list[tuple] = []

    def set_prompt(self, prompt: Prompt, frame_index: int | None, stamp_ns: int | None, new_target: bool) -> str:
        """``prompt`` becomes the one target (:meth:`StreamingEngine.set_prompt`); the notice."""
        prompt, notice = self.checked_prompt(prompt, stamp_ns)
        pending = PendingPrompt(prompt, frame_index, stamp_ns, new_target=new_target)
        self._queries.forget()
        with self._lock:
            others = [i for i in self._targets if i != SINGLE_TARGET_ID]
            self._targets = {SINGLE_TARGET_ID: _Target(TargetSpec(prompt=prompt).label)}
            if new_target:
                self._ops = [(RESET,)]
            self._ops += [(REMOVE, i) for i in others] + [(PROMPT, SINGLE_TARGET_ID, pending)]
        return notice

    def set_instruction(self, text: str) -> Instruction:
        """``text`` becomes the one target (:meth:`StreamingEngine.set_instruction`)."""
        return self._replace([(SINGLE_TARGET_ID, TargetSpec(instruction=text))], keep=False)[1][0]

    def add(self, spec: TargetSpec, target_id: int | None) -> int:
        """One more target (:meth:`StreamingEngine.add_target`); its id."""
        return self._replace([(target_id, spec)], keep=True)[0][0]

    def set(self, entries: Sequence[tuple[int | None, TargetSpec]]) -> list[int]:
        """Every target replaced by ``entries`` (:meth:`StreamingEngine.set_targets`); their ids."""
        return self._replace(list(entries), keep=False)[0]

    def remove(self, target_id: int) -> None:
        """Stop following ``target_id`` (ValueError for an unknown id)."""
        with self._lock:
            check_known_target(target_id, self._targets)
        self._queries.forget(target_id)
        with self._lock:
            self._targets.pop(target_id, None)
            self._ops.append((REMOVE, target_id))

    def clear(self) -> None:
        """Forget every target and instruction."""
        self._queries.forget()
        with self._lock:
            self._targets, self._ops = {}, [(RESET,)]

    def labels(self) -> dict[int, str]:
        """id -> label of every followed target, ids ascending."""
        with self._lock:
            return {i: self._targets[i].label for i in sorted(self._targets)}

    @property
    def pending(self) -> bool:
        """True while operations wait for the next processed frame."""
        with self._lock:
            return bool(self._ops)

    def take(self) -> list[tuple]:
        """The queued operations, in order (module docstring); the queue is emptied."""
        with self._lock:
            ops, self._ops = self._ops, []
        return ops

    def apply_grounding(self, target_id: int, grounding: Grounding, new_target: bool,
                        prepared: tuple[PreparedCatchUp, int] | None) -> None:
        """The scheduler's answer becomes the target's pending prompt on its keyframe
        (:attr:`Grounding.prompt`), with its catch-up ``prepared`` through a frame index, if any."""
        pending = PendingPrompt(grounding.prompt, grounding.keyframe, keyframe=grounding.keyframe_features,
                                new_target=new_target, prepared=prepared[0] if prepared else None,
                                prepared_through=prepared[1] if prepared else None)
        with self._lock:
            target = self._targets.get(target_id)
            if target is not None:
                target.grounded_stamp_ns = grounding.keyframe_stamp_ns
                self._ops.append((PROMPT, target_id, pending))

    def states(self, errors: dict[int, str], tracked: tuple[int, ...]) -> dict[int, TargetState]:
        """Each target's :class:`TargetState` for a frame whose prompts failed with ``errors``; a
        prompt target whose prompt failed and that has no memory (not in ``tracked``) is reported
        once more and then forgotten."""
        with self._lock:
            targets = dict(self._targets)
            for target_id in errors:
                target = self._targets.get(target_id)
                if target is not None and target.instruction is None and target_id not in tracked:
                    del self._targets[target_id]
        waiting = self._queries.waiting_reasons()
        return {i: TargetState(t.label, waiting.get(i), t.grounded_stamp_ns, errors.get(i))
                for i, t in sorted(targets.items())}

    def checked_prompt(self, prompt: Prompt, stamp_ns: int | None) -> tuple[Prompt, str]:
        """``prompt`` checked against the window (:meth:`StreamingEngine.set_prompt`): fitted, and
        its notice ("" when applied as given)."""
        if not isinstance(prompt, (PointsPrompt, MaskPrompt, TokenPrompt)):
            raise ValueError(f"a prompt is a PointsPrompt, MaskPrompt or TokenPrompt, not {type(prompt).__name__}")
        frames = self._window.snapshot()
        frame = frames[-1] if frames else None
        if stamp_ns is not None:
            frame = next((f for f in frames if f.stamp_ns == stamp_ns), None)
            if frame is None:
                raise ValueError(no_stamp_reason(stamp_ns, frames))
        if isinstance(prompt, PointsPrompt) and frame is not None:
            return fit_to_image(prompt, frame.width, frame.height)
        return prompt, ""

    def _replace(self, entries: list[tuple[int | None, TargetSpec]], keep: bool) -> tuple[list[int], list]:
        """Check ``entries`` (all or nothing), then add them (``keep``) or make them the targets;
        (their ids, their instructions or None)."""
        with self._lock:
            kept = set(self._targets) if keep else set()
        if len(kept) + len(entries) > self.max_targets:
            raise ValueError(f"{len(kept) + len(entries)} targets asked for; at most max_targets = "
                             f"{self.max_targets} are followed at once")
        planned, taken = [], set(kept)
        for target_id, spec in entries:
            target_id = _free_id(taken) if target_id is None else _checked_id(target_id, taken)
            taken.add(target_id)
            planned.append((target_id, *self._planned(spec)))
        if not keep:
            self._queries.forget()
        with self._lock:
            if not keep:
                self._targets, self._ops = {}, [(RESET,)]
            elif any(i in self._targets for i, _, _ in planned):  # taken by another thread meanwhile
                raise ValueError("target ids changed while this command was checked; send it again")
            for target_id, target, pending in planned:
                self._targets[target_id] = target
                if pending is not None:
                    self._ops.append((PROMPT, target_id, pending))
        for target_id, target, _ in planned:
            if target.instruction is not None:
                self._queries.follow(target_id, target.instruction)
        return [i for i, _, _ in planned], [target.instruction for _, target, _ in planned]

    def _planned(self, spec: TargetSpec) -> tuple[_Target, PendingPrompt | None]:
        """A checked spec: the target and, for a prompt, what to apply (ValueError if refused)."""
        if not isinstance(spec, TargetSpec):
            raise ValueError(f"a target is a TargetSpec, not {type(spec).__name__}")
        if spec.instruction is not None:
            instruction = self._queries.check(spec.instruction)
            return _Target(instruction.text, instruction), None
        prompt, notice = self.checked_prompt(spec.prompt, spec.stamp_ns)
        if notice:
            log.warning("target prompt: %s", notice)
        return _Target(spec.label), PendingPrompt(prompt, stamp_ns=spec.stamp_ns)


def _free_id(taken: set[int]) -> int:
    """The lowest target id not in ``taken``."""
    return next(i for i in range(1, MAX_TARGET_ID + 1) if i not in taken)


def _checked_id(target_id, taken: set[int]) -> int:
    """``target_id`` if it is a free int in 1..255, else ValueError with the reason."""
    if check_target_id(target_id) in taken:
        raise ValueError(f"target id {target_id} is taken; remove it first")
    return int(target_id)
