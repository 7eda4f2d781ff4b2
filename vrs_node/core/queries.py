"""QueryScheduler: when the grounding queries of the followed instructions run, and what each answer becomes.

Each target that follows an instruction (:meth:`QueryScheduler.follow`, needs a :class:`Grounder`)
is grounded by queries over the window: one at once, one every ``period_s`` of stamp time, and one
when its object score has been <= the score threshold for ``lost_after_frames`` processed frames.
The queries due together (several targets) run as one batch (:meth:`Grounder.ground_many`: the
per-frame inputs shared, one batched LLM prefill). Each answer is handed to the ``apply`` callback
with its target's id (the engine makes it a mask prompt on its keyframe for that target only);
the first answer of an instruction is a new target, later ones add a conditioning frame. Without
the grounding thread (sync mode) the due queries run inside :meth:`QueryScheduler.on_frame`, before
that frame is tracked (reproducible); after :meth:`QueryScheduler.start` (live mode) they run on
grounding threads, one batch at a time, and the tracking thread never waits for them (a query
waits for the first encoded frame): the periodic re-queries of tracked targets at
``grounding_nice`` below tracking's CPU priority, the others (a new instruction, a lost target) at
it. A target's triggers that fire while its query runs are dropped, except an
instruction change, which runs next; the answer of a query for a superseded instruction (or a
removed target) is discarded and counted (``stats.superseded``). A failed query (any exception of
the grounder, ``torch.OutOfMemoryError`` included: every target of its batch fails; or one
target's failure returned in its slot, as a remote reasoner's per-instruction failure) is
reported (``on_query``, ``stats.query_errors``, and in :meth:`QueryScheduler.waiting_reasons`) and
retried at the next trigger: the next periodic one, or,
while the target is not tracked, after ``lost_after_frames`` more frames (frames still waiting for a
grounding after a failed query count as frames without the target). Tracking goes on meanwhile.

Before a query's answers are applied, the optional ``prepare`` callback gets them, all in one
call, on the thread that ran the query (the engine prepares the targets' catch-ups there, together,
off the tracking thread); what it made of each is handed to ``apply`` with the answer (None when
it raised: logged, the answers applied as they are).

Thread-safety: all state is guarded by one condition; ``apply`` is called while it is held (take
no lock there that is held while calling into the scheduler), ``prepare`` and ``on_query`` while
it is released.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vrs_node.core.frames import Frame, FrameWindow
from vrs_node.core.grounder import Grounder
from vrs_node.core.grounding import Grounding
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
    """One finished grounding query for one target: why it ran (``TRIGGER_*``), its ``grounding`` or
    ``error``, its duration (of the whole batch it ran in), whether its answer was applied (False
    when the target's instruction changed meanwhile) and the target's id."""

    instruction: Instruction
    trigger: str
    grounding: Grounding | None
    error: str | None
    latency_s: float
    applied: bool
    target_id: int = 1


@dataclass
class _Followed:
    """One followed instruction's schedule: ``generation`` changes whenever the target's instruction
    does (an answer for an older one is discarded); ``due`` the trigger of a query waiting to run."""

    instruction: Instruction
    generation: int
    due: str | None = TRIGGER_INSTRUCTION
    grounded: bool = False
    last_stamp_ns: int | None = None
    lost_frames: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class _Job:
    """A due query taken for a batch."""

    target_id: int
    instruction: Instruction
    generation: int
    trigger: str


def lower_thread_priority(nice: int) -> None:
    """Add ``nice`` (0-19) to the calling thread's niceness, at most 19: on Linux each thread has
    its own, and the threads it starts (torch's OpenMP workers) inherit it, so under CPU contention
    the tracking thread gets the CPU first (CFS weight 1024 at nice 0 against 110 at nice 10).
    Elsewhere, or when the system refuses, it logs why and changes nothing."""
    if nice <= 0:
        return
    if not sys.platform.startswith("linux"):
        log.info("grounding_nice ignored: threads have their own priority only on Linux")
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        log.warning("grounding_nice %d not applied: %s", nice, exc)


class QueryScheduler:
    """The followed instructions (one per target id) and their query schedules (module docstring).

    ``config()`` gives the current ``period_s`` and ``lost_after_frames`` (read at each use: they
    may change at run time); ``apply(target_id, grounding, new_target, prepared)`` receives each
    applied answer, with what ``prepare`` made of it first (given a query's current answers as
    ``[(target_id, grounding, new_target), ...]``, it returns a target id -> that; None without
    ``prepare``); ``stats.queries`` and ``stats.query_errors`` count finished and failed
    queries (one per target of a batch); ``on_query`` gets a :class:`QueryReport` for each."""

    def __init__(self, grounder: Grounder | None, window: FrameWindow, config: Callable[[], PipelineConfig],
                 stats: EngineStats, apply: Callable[[int, Grounding, bool, Any], None],
                 on_query: Callable[[QueryReport], None] | None = None,
                 prepare: Callable[[list[tuple[int, Grounding, bool]]], dict[int, Any]] | None = None):
        self._grounder = grounder
        self._window = window
        self._config = config
        self._stats = stats
        self._apply = apply
        self._prepare = prepare
        self._on_query = on_query
        self._cond = threading.Condition()
        self._followed: dict[int, _Followed] = {}
        self._generation = 0
        self._running: set[int] = set()
        self._started: float | None = None
        self._frames_seen = False
        self._closed = False
        self._workers: list[threading.Thread] = []

    def start(self) -> list[threading.Thread]:
        """Run due queries on grounding threads from now on (live mode); the threads started (none
        without a grounder): ``vrs-grounding`` at the process's priority, and with
        ``grounding_nice`` > 0 ``vrs-grounding-periodic`` below it (:meth:`_urgent`)."""
        if self._grounder is None:
            return []
        kinds = [True, False] if self._config().grounding_nice > 0 else [None]
        self._workers = [threading.Thread(target=self._run_thread, args=(urgent,), daemon=True,
                                          name="vrs-grounding-periodic" if urgent is False else "vrs-grounding")
                         for urgent in kinds]
        for worker in self._workers:
            worker.start()
        return self._workers

    def stop(self) -> None:
        """Tell the grounding threads to end (after the query in progress, if any)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def check(self, text: str) -> Instruction:
        """``text`` normalised and neutralised as :meth:`follow` would follow it; ValueError if
        empty or too long, RuntimeError without a grounder. Changes nothing."""
        if self._grounder is None:
            raise RuntimeError("this engine has no grounder (MLLM): it cannot follow instructions; "
                               "use a model profile with language grounding")
        instruction = clean_instruction(text)
        self._grounder.prepare(instruction)
        return instruction

    def follow(self, target_id: int, instruction: Instruction) -> None:
        """Follow ``instruction`` (from :meth:`check`) as target ``target_id``: a query is due at
        once; an instruction that target followed before is replaced (its answer discarded)."""
        with self._cond:
            self._generation += 1
            self._followed[target_id] = _Followed(instruction, self._generation)
            self._cond.notify_all()

    def forget(self, target_id: int | None = None) -> None:
        """Stop following target ``target_id``'s instruction (None: every target's); the answer of
        a query still running for it is discarded."""
        with self._cond:
            if target_id is None:
                self._followed.clear()
            else:
                self._followed.pop(target_id, None)

    @property
    def instructions(self) -> dict[int, Instruction]:
        """The followed instructions by target id, ascending."""
        with self._cond:
            return {i: self._followed[i].instruction for i in sorted(self._followed)}

    @property
    def running(self) -> bool:
        """True while a query is due or running."""
        with self._cond:
            return bool(self._running) or any(f.due is not None for f in self._followed.values())

    @property
    def elapsed_s(self) -> float | None:
        """Seconds the query in progress has been running (None when none runs)."""
        with self._cond:
            started = self._started
        return None if started is None else time.perf_counter() - started

    def waiting_reasons(self) -> dict[int, str]:
        """Why each target that follows an instruction but has no applied answer for it yet waits
        (``grounding 'text'``, with the last query's error when it failed), by target id; one
        lock acquisition for all targets (read once per processed frame)."""
        with self._cond:
            waiting = [(i, f.instruction.text, f.last_error) for i, f in self._followed.items() if not f.grounded]
        return {i: f"grounding {text!r}" + (f" (last query failed: {error})" if error else "")
                for i, text, error in waiting}

    def restart_period(self, stamp_ns: int) -> None:
        """A new timeline starts at ``stamp_ns``: the periodic schedules count from it."""
        with self._cond:
            for followed in self._followed.values():
                if followed.last_stamp_ns is not None:
                    followed.last_stamp_ns = stamp_ns

    def on_frame(self, frame: Frame) -> None:
        """A frame is encoded: mark a periodic query due for each target whose last one was
        ``period_s`` of stamp time ago; without grounding threads, run the due queries now."""
        with self._cond:
            if not self._frames_seen:
                self._frames_seen = True
                self._cond.notify_all()
            period_ns = self._config().period_s * 1e9
            for target_id, followed in self._followed.items():
                if (period_ns and followed.due is None and target_id not in self._running
                        and followed.last_stamp_ns is not None
                        and frame.stamp_ns - followed.last_stamp_ns >= period_ns):
                    followed.due = TRIGGER_PERIOD
                    self._cond.notify_all()
            if self._workers:
                return
            jobs = self._take_due()
        if jobs:
            self._run(jobs)

    def count_lost(self, target_id: int, absent: bool, waiting: bool) -> None:
        """Count target ``target_id``'s consecutive frames without it (``absent``, or ``waiting``
        for a grounding after a failed query); after ``lost_after_frames`` of them a query is due."""
        with self._cond:
            lost_after_frames = self._config().lost_after_frames
            followed = self._followed.get(target_id)
            if followed is None or not lost_after_frames:
                return
            missing = absent or (waiting and followed.last_error is not None)
            followed.lost_frames = followed.lost_frames + 1 if missing else 0
            if followed.lost_frames >= lost_after_frames:
                followed.lost_frames = 0
                if followed.due is None and target_id not in self._running:
                    followed.due = TRIGGER_LOST
                    self._cond.notify_all()

    def _take_due(self) -> list[_Job]:
        """The due queries (their triggers cleared), ids ascending; call with the lock held."""
        jobs = [_Job(i, f.instruction, f.generation, f.due) for i, f in sorted(self._followed.items())
                if f.due is not None]
        for job in jobs:
            self._followed[job.target_id].due = None
        return jobs

    def _urgent(self) -> bool:
        """Whether a due query is for a target without a current answer (a new instruction, a lost
        target, a failed query): those run at the process's priority, so a saturated CPU delays a
        target's first mask no more than without ``grounding_nice``; the periodic re-queries of
        tracked targets run niced. Call with the lock held."""
        return any(f.due is not None and (f.due != TRIGGER_PERIOD or not f.grounded) for f in self._followed.values())

    def _run_thread(self, urgent: bool | None) -> None:
        """A grounding thread: run the due queries as one batch at a time, once a frame is in and
        no other batch runs; ``urgent`` True takes the batches with an urgent query
        (:meth:`_urgent`), False the others at ``grounding_nice`` below the process's CPU
        priority, None all of them."""
        if urgent is False:
            lower_thread_priority(self._config().grounding_nice)
        while True:
            with self._cond:
                while not self._closed and not (self._frames_seen and not self._running
                                                and any(f.due for f in self._followed.values())
                                                and urgent in (None, self._urgent())):
                    self._cond.wait()
                if self._closed:
                    return
                jobs = self._take_due()
                self._running = {job.target_id for job in jobs}
            try:
                self._run(jobs)
            finally:
                with self._cond:
                    self._running = set()
                    self._cond.notify_all()

    def _run(self, jobs: list[_Job]) -> None:
        """Run one batched query (``ground_many``: a Grounding per job, or the exception of a job
        that failed alone; an exception raised fails them all); each current answer goes to
        ``apply``; report each."""
        started = time.perf_counter()
        latest = self._window.latest
        with self._cond:
            self._started = started
        try:
            answers = self._grounder.ground_many(self._window, [job.instruction for job in jobs])
        except Exception as exc:  # report, keep tracking, retry on the next trigger
            answers = [exc] * len(jobs)
        latency_s = time.perf_counter() - started
        prepared = self._prepared(jobs, answers)
        reports = []
        with self._cond:
            self._started = None
            for job, answer in zip(jobs, answers):
                error = f"{type(answer).__name__}: {answer}" if isinstance(answer, Exception) else None
                if error is not None:
                    log.warning("grounding %r failed: %s", job.instruction.text, error)
                reports.append(self._finish(job, None if error else answer, error, latest, latency_s,
                                            prepared.get(job.target_id)))
        for report in reports if self._on_query is not None else ():
            try:
                self._on_query(report)
            except Exception:
                log.exception("on_query callback failed")

    def _current(self, job: _Job) -> _Followed | None:
        """The instruction ``job`` ran for, when its target still follows it (not superseded);
        call with the lock held."""
        followed = self._followed.get(job.target_id)
        return followed if followed is not None and followed.generation == job.generation else None

    def _prepared(self, jobs: list[_Job], answers: list) -> dict[int, Any]:
        """``prepare`` of the answers still current, all in one call (a target's id -> what it made
        of its answer), run with the lock released; when it raises, logged and nothing prepared."""
        if self._prepare is None:
            return {}
        with self._cond:
            current = {job.target_id: not f.grounded for job in jobs if (f := self._current(job)) is not None}
        todo = [(job.target_id, answer, current[job.target_id]) for job, answer in zip(jobs, answers)
                if job.target_id in current and not isinstance(answer, Exception)]
        try:
            return self._prepare(todo) if todo else {}
        except Exception:  # the answers are applied without it
            log.exception("preparing the answers for %s failed", [job.instruction.text for job in jobs])
            return {}

    def _finish(self, job: _Job, grounding: Grounding | None, error: str | None, latest: Frame | None,
                latency_s: float, prepared: Any = None) -> QueryReport:
        """Count a finished query, apply a current answer, and its report; call with the lock held."""
        followed = self._followed.get(job.target_id)
        current = self._current(job) is not None
        applied = grounding is not None and current
        self._stats.queries += 1
        if error is not None:
            self._stats.query_errors += 1
        if grounding is not None and not current:
            self._stats.superseded += 1
        if current:
            followed.last_stamp_ns = latest.stamp_ns if latest is not None else None
            followed.last_error = error
        if applied:
            self._apply(job.target_id, grounding, not followed.grounded, prepared)
            followed.grounded = True
        return QueryReport(job.instruction, job.trigger, grounding, error, latency_s, applied, job.target_id)
