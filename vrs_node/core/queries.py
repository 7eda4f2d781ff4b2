"""QueryScheduler: when the grounding queries of a followed instruction run, and what each answer becomes.

An instruction (:meth:`QueryScheduler.follow`, needs a :class:`Grounder`) is grounded by queries
over the window: one at once, one every ``period_s`` of stamp time, and one when the object score
has been <= the score threshold for ``lost_after_frames`` processed frames. A finished query's
answer is handed to the ``apply`` callback (the engine makes it a mask prompt on its keyframe);
the first answer of an instruction is a new target, later ones add a conditioning frame. Without
the grounding thread (sync mode) a due query runs inside :meth:`QueryScheduler.on_frame`, before
that frame is tracked (reproducible); after :meth:`QueryScheduler.start` (live mode) queries run
on their own thread and the tracking thread never waits for them (a query waits for the first
encoded frame). Triggers that fire while a query runs are dropped, except an instruction change,
which runs next; the answer of a query for a superseded instruction is discarded. A failed query
(any exception of the grounder, ``torch.OutOfMemoryError`` included) is reported (``on_query``,
``stats.query_errors``, and in :meth:`QueryScheduler.waiting_reason`) and retried at the next
trigger: the next periodic one, or, while no target is tracked, after ``lost_after_frames`` more
frames (frames still waiting for a grounding after a failed query count as frames without the
target). Tracking goes on meanwhile.

Thread-safety: all state is guarded by one condition; ``apply`` is called while it is held (take
no lock there that is held while calling into the scheduler), ``on_query`` after it is released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vrs_node.core.frames import Frame, FrameWindow
from vrs_node.core.grounder import Grounder, Grounding
from vrs_node.models.prompt import Instruction, clean_instruction

if TYPE_CHECKING:
    from vrs_node.core.config import PipelineConfig
    from vrs_node.core.results import EngineStats

log = logging.getLogger(__name__)

TRIGGER_INSTRUCTION = "instruction"
TRIGGER_PERIOD = "period"
TRIGGER_LOST = "lost"


@dataclass(frozen=True)
class QueryReport:
    """One finished grounding query: why it ran (``TRIGGER_*``), its ``grounding`` or ``error``,
    its duration, and whether its answer was applied (False when the instruction changed meanwhile)."""

    instruction: Instruction
    trigger: str
    grounding: Grounding | None
    error: str | None
    latency_s: float
    applied: bool


class QueryScheduler:
    """The instruction being followed and its query schedule (module docstring).

    ``config()`` gives the current ``period_s`` and ``lost_after_frames`` (read at each use: they
    may change at run time); ``apply(grounding, new_target)`` receives each applied answer;
    ``stats.queries`` and ``stats.query_errors`` count finished and failed queries; ``on_query``
    gets a :class:`QueryReport` for each."""

    def __init__(self, grounder: Grounder | None, window: FrameWindow, config: Callable[[], PipelineConfig],
                 stats: EngineStats, apply: Callable[[Grounding, bool], None],
                 on_query: Callable[[QueryReport], None] | None = None):
        self._grounder = grounder
        self._window = window
        self._config = config
        self._stats = stats
        self._apply = apply
        self._on_query = on_query
        self._cond = threading.Condition()
        self._instruction: Instruction | None = None
        self._generation = 0
        self._due: str | None = None
        self._running = False
        self._grounded = False
        self._last_stamp_ns: int | None = None
        self._lost_frames = 0
        self._last_error: str | None = None
        self._started: float | None = None
        self._frames_seen = False
        self._closed = False
        self._worker: threading.Thread | None = None

    def start(self) -> threading.Thread | None:
        """Run due queries on a grounding thread from now on (live mode); the thread, None (and
        no thread) without a grounder."""
        if self._grounder is not None:
            self._worker = threading.Thread(target=self._run_thread, name="vrs-grounding", daemon=True)
            self._worker.start()
        return self._worker

    def stop(self) -> None:
        """Tell the grounding thread to end (after the query in progress, if any)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def follow(self, text: str) -> Instruction:
        """Follow ``text``: normalised and neutralised (ValueError if empty or too long); a query
        is due at once. RuntimeError without a grounder."""
        if self._grounder is None:
            raise RuntimeError("this engine has no grounder (MLLM): it cannot follow instructions; "
                               "use a model profile with language grounding")
        instruction = clean_instruction(text)
        self._grounder.text_embedding(instruction)  # fail here, not later, on a bad text model
        with self._cond:
            self._instruction, self._generation, self._grounded = instruction, self._generation + 1, False
            self._lost_frames, self._last_stamp_ns, self._last_error = 0, None, None
            self._due = TRIGGER_INSTRUCTION
            self._cond.notify_all()
        return instruction

    def forget(self) -> None:
        """Stop following the instruction; the answer of a query still running is discarded."""
        with self._cond:
            self._instruction, self._generation, self._due, self._grounded = None, self._generation + 1, None, False

    @property
    def instruction(self) -> Instruction | None:
        """The instruction being followed (None when there is none)."""
        with self._cond:
            return self._instruction

    @property
    def running(self) -> bool:
        """True while a query is due or running."""
        with self._cond:
            return self._running or self._due is not None

    @property
    def elapsed_s(self) -> float | None:
        """Seconds the query in progress has been running (None when none runs)."""
        with self._cond:
            started = self._started
        return None if started is None else time.perf_counter() - started

    def waiting_reason(self) -> str | None:
        """Why a frame without a target waits for a grounding (None when no instruction is followed)."""
        with self._cond:
            instruction, error = self._instruction, self._last_error
        if instruction is None:
            return None
        return f"grounding {instruction.text!r}" + (f" (last query failed: {error})" if error else "")

    def restart_period(self, stamp_ns: int) -> None:
        """A new timeline starts at ``stamp_ns``: the periodic schedule counts from it."""
        with self._cond:
            if self._last_stamp_ns is not None:
                self._last_stamp_ns = stamp_ns

    def on_frame(self, frame: Frame) -> None:
        """A frame is encoded: mark a periodic query due when ``period_s`` of stamp time has passed
        since the last one; without the grounding thread, run a due query now."""
        with self._cond:
            if not self._frames_seen:
                self._frames_seen = True
                self._cond.notify_all()
            if self._instruction is None:
                return
            period_ns = self._config().period_s * 1e9
            if (period_ns and self._due is None and not self._running and self._last_stamp_ns is not None
                    and frame.stamp_ns - self._last_stamp_ns >= period_ns):
                self._due = TRIGGER_PERIOD
                self._cond.notify_all()
            if self._worker is not None or self._due is None:
                return
            trigger, self._due = self._due, None
            instruction, generation = self._instruction, self._generation
        self._run(instruction, generation, trigger)

    def count_lost(self, absent: bool, waiting: bool) -> None:
        """Count consecutive frames without the target (``absent``, or ``waiting`` for a grounding
        after a failed query); after ``lost_after_frames`` of them a query is due."""
        with self._cond:
            lost_after_frames = self._config().lost_after_frames
            if self._instruction is None or not lost_after_frames:
                return
            missing = absent or (waiting and self._last_error is not None)
            self._lost_frames = self._lost_frames + 1 if missing else 0
            if self._lost_frames >= lost_after_frames:
                self._lost_frames = 0
                if self._due is None and not self._running:
                    self._due = TRIGGER_LOST
                    self._cond.notify_all()

    def _run_thread(self) -> None:
        """The grounding thread: run each due query, one at a time, once a frame is in."""
        while True:
            with self._cond:
                while (self._due is None or not self._frames_seen) and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                trigger, self._due = self._due, None
                instruction, generation = self._instruction, self._generation
                self._running = True
            try:
                self._run(instruction, generation, trigger)
            finally:
                with self._cond:
                    self._running = False

    def _run(self, instruction: Instruction, generation: int, trigger: str) -> None:
        """Run one query; a current answer goes to ``apply``; report it."""
        started = time.perf_counter()
        latest = self._window.latest
        with self._cond:
            self._started = started
        grounding, error = None, None
        try:
            grounding = self._grounder.ground(self._window, instruction)
        except Exception as exc:  # report, keep tracking, retry on the next trigger
            error = f"{type(exc).__name__}: {exc}"
            log.warning("grounding %r failed: %s", instruction.text, error)
        with self._cond:
            self._started = None
            current = generation == self._generation
            applied = grounding is not None and current
            self._stats.queries += 1
            if error is not None:
                self._stats.query_errors += 1
            if current:
                self._last_stamp_ns = latest.stamp_ns if latest is not None else None
                self._last_error = error
            if applied:
                self._apply(grounding, not self._grounded)
                self._grounded = True
        if self._on_query is not None:
            try:
                self._on_query(QueryReport(instruction, trigger, grounding, error,
                                           time.perf_counter() - started, applied))
            except Exception:
                log.exception("on_query callback failed")
