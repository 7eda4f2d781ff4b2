"""The reasoner server's logic, ROS-free: camera frames in, protocol requests answered in batches.

:class:`ReasonerService` keeps a bounded :class:`FrameWindow` of the camera's frames with only the
reasoner's per-frame inputs cached beside them (the CLIP anchor embedding and the MLLM frame
tokens, each computed at most once per frame, when a request first needs it), takes requests as
wire text (:mod:`vrs_node.core.reasoner_protocol`) on any thread and answers them on its own
worker thread, so the caller (a ROS callback) never waits on a model.

Batching: the worker takes the waiting requests in arrival order while their instructions add up
to at most ``max_batch`` (always at least one request). With ``batch_wait_s`` > 0 a batch that is
not full waits for more requests until ``batch_wait_s`` after its first request arrived (a request
that waited while the worker was busy adds no wait), or until the next request does not fit. It
answers all the instructions of a
batch with one :meth:`Grounder.reason_many` call (one batched prefill), whatever frames each
request names: each instruction is reasoned about over the held frames whose stamps its request
names (``reason_many``'s ``frames``), as it would be alone, and the per-frame inputs of a frame
several requests name are computed once. A request that names no held frame gets a failure per
instruction saying which stamps the reasoner holds; a reasoning error fails every instruction of
the batch that was being reasoned about, with the reason. Each response carries its request's
client id and request id; every response goes to the one ``publish`` callable, and clients keep
their own.

Counters (:attr:`ReasonerService.stats`, a :class:`ReasonerStats`): requests received, refused
and answered, instructions answered and failed, batches run and their sizes, requests waiting,
and the last error.

A refused request (malformed, another protocol version, more than ``max_batch`` instructions,
:data:`MAX_PENDING` requests already waiting, or :data:`MAX_PENDING_PER_CLIENT` of its own client's)
is answered at once with an error response when its client id can be read, and logged either way.
A slow client cannot hold the others up: responses are published, never awaited, and one client's
requests never fill the queue.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from vrs_node.core.frames import Frame, FrameWindow, check_frame
from vrs_node.core.grounder import Grounder, GrounderConfig, Reasoning
from vrs_node.core.process_exit import join_workers
from vrs_node.core.reasoner_protocol import Answer, Failure, ProtocolError, Request, Response, request_from_json
from vrs_node.models.profiles import LoadedModels
from vrs_node.models.prompt import Instruction, clean_instruction

MAX_PENDING = 64
"""Most requests waiting for the worker; more are refused ("busy"), so a flood cannot grow memory."""
MAX_PENDING_PER_CLIENT = 8
"""Most requests of one client waiting; more of its own are refused ("busy"), so one flooding or
looping client cannot fill the queue and keep the others out."""


def build_reasoner_grounder(models: LoadedModels, sparse_frames: int = 0) -> Grounder:
    """A reasoning-only :class:`Grounder` (no tracker: ``reason_many(..., with_candidates=False)``)
    over ``models``' grounding models, on the MLLM's device (ValueError for models without them).
    ``models`` need no SAM-2 (``load_models(..., parts="reasoner")``); any they hold is unused."""
    if models.grounding is None:
        raise ValueError("this model profile has no reasoner (MLLM); choose a profile with language models")
    g = models.grounding
    return Grounder(g.mllm, g.tokenizer, g.anchor_scorer, None, GrounderConfig(sparse_frames=sparse_frames),
                    g.special_ids, device=g.mllm.device)


@dataclass
class ReasonerStats:
    """The service's counters since it was made (a snapshot from :attr:`ReasonerService.stats`).

    ``requests``: received (every :meth:`~ReasonerService.submit`); ``refused``: answered at once
    with an error response (or only logged); ``answered``: answered with one result per
    instruction; ``instructions_answered`` / ``failures``: those results that are answers /
    failures, plus, in ``failures``, the instructions of a batch whose worker step raised;
    ``batches``: worker steps (:meth:`~ReasonerService.answer` calls), ``batch_instructions`` the
    instructions they held in all and ``largest_batch`` the most in one; ``pending``: requests
    waiting now; ``last_error``: the last refusal, failure or batch error ("" when none yet).
    """

    requests: int = 0
    refused: int = 0
    answered: int = 0
    instructions_answered: int = 0
    failures: int = 0
    batches: int = 0
    batch_instructions: int = 0
    largest_batch: int = 0
    pending: int = 0
    last_error: str = ""

    @property
    def mean_batch(self) -> float:
        """Instructions per batch, on average (0 before the first batch)."""
        return self.batch_instructions / self.batches if self.batches else 0.0


class ReasonerService:
    """Frames and requests in, responses out through ``publish(text)`` (module docstring).

    ``window_frames`` (≥ 1) frames are held; ``max_batch`` (≥ 1) bounds the instructions answered
    by one batch and in one request; ``batch_wait_s`` (≥ 0) is how long after its first request
    arrived a batch that is not full may wait for more (module docstring); ``log(text)`` receives a
    line per refused request. Call :meth:`start` to run the worker and :meth:`stop` to end it;
    :meth:`answer` is the worker's step, callable directly."""

    def __init__(self, grounder: Grounder, window_frames: int, max_batch: int, publish: Callable[[str], None],
                 log: Callable[[str], None] = print, batch_wait_s: float = 0.0):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if not 0.0 <= batch_wait_s < float("inf"):
            raise ValueError(f"batch_wait_s must be a finite number >= 0, got {batch_wait_s!r}")
        self.grounder = grounder
        self.window = FrameWindow(window_frames)
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._publish, self._log = publish, log
        self._pending: deque[tuple[float, Request]] = deque()  # (time.monotonic() at arrival, request)
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._stats = ReasonerStats()  # updated under self._wake

    @property
    def stats(self) -> ReasonerStats:
        """A snapshot of the counters (:class:`ReasonerStats`), ``pending`` as of now."""
        with self._wake:
            return replace(self._stats, pending=len(self._pending))

    def add_frame(self, image: np.ndarray, stamp_ns: int, frame_id: str = "",
                  camera_hw: tuple[int, int] | None = None) -> Frame | None:
        """Hold a camera frame (checked: :func:`check_frame`, ValueError); None, and nothing
        held, when a frame with this stamp is held already (a repeated message)."""
        camera_hw = check_frame(image, camera_hw)
        if any(f.stamp_ns == stamp_ns for f in self.window.snapshot()):
            return None
        return self.window.append(image, stamp_ns, frame_id, camera_hw)

    def submit(self, text: str) -> None:
        """Queue one request (wire text) for the worker; a refused one is answered and logged at once."""
        with self._wake:
            self._stats.requests += 1
        try:
            request = request_from_json(text)
            if len(request.instructions) > self.max_batch:
                raise ProtocolError(f"{len(request.instructions)} instructions in one request; this reasoner "
                                    f"takes at most {self.max_batch} (parameter max_batch)",
                                    request.client_id, request.request_id)
            with self._wake:
                if len(self._pending) >= MAX_PENDING:
                    raise ProtocolError(f"the reasoner is busy: {MAX_PENDING} requests are waiting; retry later",
                                        request.client_id, request.request_id)
                if sum(r.client_id == request.client_id for _, r in self._pending) >= MAX_PENDING_PER_CLIENT:
                    raise ProtocolError(f"the reasoner is busy: {MAX_PENDING_PER_CLIENT} requests of this client "
                                        f"are waiting already; retry later", request.client_id, request.request_id)
                self._pending.append((time.monotonic(), request))
                self._wake.notify()
        except ProtocolError as exc:
            self._refuse(exc)

    def start(self) -> None:
        """Run the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vrs-reasoner", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> bool:
        """End the worker after the batch in progress, waiting at most ``timeout_s``; waiting
        requests are dropped unanswered. False, logged, when the batch is still running then
        (:func:`~vrs_node.core.process_exit.join_workers`)."""
        with self._wake:
            self._stopping = True
            self._pending.clear()
            self._wake.notify_all()
        return join_workers([self._thread] if self._thread is not None else [], timeout_s)

    def answer(self, requests: Sequence[Request]) -> list[Response]:
        """One response per request, in order, with one ``reason_many`` call for all their
        instructions (each over the held frames its request names); an instruction that cannot be
        reasoned about gets its :class:`Failure` (the others are answered), and a reasoning error
        gives every reasoned instruction that error's failure. Counted in :attr:`stats`."""
        held = self.window.snapshot()
        results: list[list[Answer | Failure | None]] = [[None] * len(r.instructions) for r in requests]
        slots: list[tuple[int, int]] = []
        instructions: list[Instruction] = []
        frames: list[list[Frame]] = []
        for i, request in enumerate(requests):
            wanted = set(request.stamps_ns)
            named = [f for f in held if f.stamp_ns in wanted]
            for j, text in enumerate(request.instructions):
                if not named:
                    results[i][j] = Failure(_none_held(request, held))
                    continue
                try:
                    instructions.append(clean_instruction(text))
                except ValueError as exc:
                    results[i][j] = Failure(f"instruction refused: {exc}")
                    continue
                slots.append((i, j))
                frames.append(named)
        for (i, j), result in zip(slots, self._reason(instructions, frames, {f.index: f.stamp_ns for f in held})):
            results[i][j] = result
        self._count(results)
        return [Response(r.client_id, r.request_id, results=results[i]) for i, r in enumerate(requests)]

    def _reason(self, instructions: list[Instruction], frames: list[list[Frame]],
                stamps: dict[int, int]) -> list[Answer | Failure]:
        """One ``reason_many`` over the service's window, instruction i over ``frames[i]`` → one
        answer per instruction (``stamps``: window frame number → stamp), or the failure for all."""
        try:
            reasonings = self.grounder.reason_many(self.window, instructions, with_candidates=False, frames=frames)
        except (ValueError, RuntimeError) as exc:
            return [Failure(f"reasoning failed: {exc}")] * len(instructions)
        return [_answer(r, stamps) for r in reasonings]

    def _count(self, results: list[list[Answer | Failure]]) -> None:
        """Count one answered batch (its requests' results) in the stats."""
        flat = [r for request in results for r in request]
        failed = [r for r in flat if isinstance(r, Failure)]
        with self._wake:
            s = self._stats
            s.batches += 1
            s.batch_instructions += len(flat)
            s.largest_batch = max(s.largest_batch, len(flat))
            s.answered += len(results)
            s.instructions_answered += len(flat) - len(failed)
            s.failures += len(failed)
            if failed:
                s.last_error = failed[-1].error

    def _refuse(self, exc: ProtocolError) -> None:
        """Log a refused request and answer it with an error response when its client id is known."""
        with self._wake:
            self._stats.refused += 1
            self._stats.last_error = f"request refused: {exc}"
        self._log(f"request refused (client {exc.client_id!r}, request {exc.request_id!r}): {exc}")
        if exc.client_id is not None:
            self._publish(Response(exc.client_id, exc.request_id, error=str(exc)).to_json())

    def _take(self) -> list[Request] | None:
        """The next batch (waiting for its first request, then up to ``batch_wait_s`` after that
        request arrived while it is not full and the next request fits), or None once stopping."""
        with self._wake:
            while not self._pending and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
            deadline = self._pending[0][0] + self.batch_wait_s
            batch, count = [], 0
            while not self._stopping:
                while self._pending and (not batch or count + len(self._pending[0][1].instructions) <= self.max_batch):
                    _, request = self._pending.popleft()
                    batch.append(request)
                    count += len(request.instructions)
                left = deadline - time.monotonic()
                if self._pending or count >= self.max_batch or left <= 0:
                    return batch
                self._wake.wait(left)
            return None

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                responses = self.answer(batch)
            except Exception as exc:  # noqa: BLE001 -- the worker must outlive any one batch
                self._log(f"batch of {len(batch)} requests failed: {exc!r}")
                with self._wake:
                    self._stats.failures += sum(len(r.instructions) for r in batch)
                    self._stats.last_error = f"reasoner error: {exc}"
                responses = [Response(r.client_id, r.request_id, error=f"reasoner error: {exc}") for r in batch]
            for response in responses:
                self._publish(response.to_json())


def _none_held(request: Request, held: list[Frame]) -> str:
    """The failure of a request that names no frame the reasoner holds."""
    span = f"{held[0].stamp_ns}..{held[-1].stamp_ns} ns" if held else "nothing yet"
    return (f"none of the {len(request.stamps_ns)} stamps given is a frame the reasoner holds "
            f"({len(held)} frames: {span})")


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()


def _answer(reasoning: Reasoning, stamps: dict[int, int]) -> Answer:
    """A reasoning as the protocol's answer, its window frame numbers as stamps."""
    return Answer(instruction=reasoning.instruction.text, anchor_ns=stamps[reasoning.anchor],
                  dense_ns=[f.stamp_ns for f in reasoning.dense],
                  sparse_ns=[stamps[i] for i in reasoning.sparse_frames], seg=_array(reasoning.tokens.seg),
                  tak=_array(reasoning.tokens.tak), tak_prime=_array(reasoning.token),
                  tda_weights=_array(reasoning.tda_weights), timings_s=dict(reasoning.timings_s))
