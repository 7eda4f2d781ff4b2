"""A grounder whose reasoning runs in a ``vrs-reasoner`` elsewhere: the tracker side of the reasoner
protocol (:mod:`vrs_node.core.reasoner_protocol`), ROS-free.

:class:`RemoteGrounder` takes the place of the local :class:`~vrs_node.core.grounder.Grounder` in
the engine (the :class:`~vrs_node.core.queries.QueryScheduler` calls :meth:`RemoteGrounder.ground_many`
on its grounding thread). A query for k instructions is one request naming the stamps of every
encoded frame the tracker's window holds; the answer's SEG, TAK and TAK' come back per
instruction, and the tracker runs TKS itself (:func:`~vrs_node.core.grounder.select_keyframes`:
TAK' decoded on its own cached SAM-2 features of the answer's lattice stamps, the object scores,
the keyframe and its mask), so what the engine receives is a :class:`Grounding` like a local one.
On the same weights and frames the two are equal: the protocol carries float32, the tokens'
values exactly in fp32.

The transport is two callables given by the caller (the ROS node: :mod:`vrs_node.ros.remote`):
``send(text)`` publishes a request, and every response text received is handed to
:meth:`RemoteGrounder.on_response` (from any thread). ``reachable()`` says whether a reasoner
listens at all (the ROS side: a subscriber on the request topic); when it says no, a query fails
at once instead of waiting for the timeout.

Faults; each is counted in :attr:`RemoteGrounder.stats`, and a failed query raises
:class:`ReasonerUnavailable` or :class:`ReasonerFault` (the scheduler reports it, tracking goes on):

- no reasoner reachable, or no response within ``timeout_s``: a failure of the reasoner. After n
  failures in a row, no request is sent for ``min(backoff_s * 2^(n-1), max_backoff_s)`` seconds
  (a query in that time fails at once, saying when the next try is); the first answer ends it;
- a response refused by the protocol parser, or one whose content does not fit the request (another
  number of results, an instruction not asked for, a stamp not sent), addressed to this client:
  refused (counted, logged) and the request fails at once with the reason. A response addressed to
  another client is none of this client's business (clients share the topic) and is ignored; one
  addressed to this client with a request id that is not waiting (timed out earlier, or of a
  previous run of a client with the same id) is late or foreign: counted and dropped;
- an instruction the reasoner could not reason about (its FAILURE): that target's query fails with
  the reasoner's reason (:class:`ReasonerFault` in that slot of the list; the others are answered);
- the answer names frames that have left the tracker's window meanwhile (the query took longer
  than the window lasts): said in the log and counted (``left_window``), and the answer is used:
  as the local query does, the request keeps the SAM-2 features of the frames it names until its
  answer comes, so TKS runs on them and the engine catches up from the keyframe's features
  (asking again would only cost another round trip, and could miss again).

An answer for an instruction the target no longer follows is discarded by the scheduler, as a
local one is (``EngineStats.superseded``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vrs_node.core.frames import SAM2_KEY, Frame, FrameWindow
from vrs_node.core.grounding import Grounding, Reasoning, select_keyframes
from vrs_node.core.reasoner_protocol import (MAX_INSTRUCTIONS, MAX_STAMPS, Answer, Failure, ProtocolError, Request,
                                             Response, check_client_id, response_from_json)
from vrs_node.core.tracker import FrameFeatures, StreamingTracker
from vrs_node.models.mllm import GroundingTokens
from vrs_node.models.prompt import Instruction, clean_instruction

log = logging.getLogger(__name__)

DEFAULT_BACKOFF_S = 0.5
"""The pause after the first failure of the reasoner; it doubles with each failure in a row."""
DEFAULT_MAX_BACKOFF_S = 8.0
"""The longest pause between tries while the reasoner is down: it is re-grounded this soon after it returns."""


class ReasonerUnavailable(RuntimeError):
    """No answer from the reasoner: none reachable, a timeout, or a pause after such failures."""


class ReasonerFault(RuntimeError):
    """The reasoner answered, but not with a usable answer: a refused response, or its failure."""


@dataclass
class RemoteStats:
    """Counters of a :class:`RemoteGrounder` since it was made. ``requests`` sent, ``answered``
    (responses accepted), ``timeouts``, ``unreachable`` (queries failed because no reasoner
    listened), ``backoff_refusals`` (queries failed at once during a pause), ``refused``
    (responses refused), ``late`` (responses to a request no longer waiting), ``failures``
    (instructions the reasoner failed), ``left_window`` (answers whose lattice frames had left the
    window when they came), ``consecutive_failures`` (of the reasoner, now),
    ``last_fault`` (text, None before any) and ``last_latency_s`` (of the last answered request)."""

    requests: int = 0
    answered: int = 0
    timeouts: int = 0
    unreachable: int = 0
    backoff_refusals: int = 0
    refused: int = 0
    late: int = 0
    failures: int = 0
    left_window: int = 0
    consecutive_failures: int = 0
    last_fault: str | None = None
    last_latency_s: float | None = None

    @property
    def connected(self) -> bool:
        """True once a request was answered and no failure of the reasoner came after it."""
        return self.answered > 0 and self.consecutive_failures == 0


class _Waiting:
    """One request waiting for its response: set by :meth:`RemoteGrounder.on_response`."""

    def __init__(self, request: Request):
        self.request = request
        self.done = threading.Event()
        self.response: Response | None = None
        self.error: str | None = None


class RemoteGrounder:
    """The grounder interface of the engine (``tracker``, :meth:`prepare`, :meth:`ground_many`)
    answered by a remote reasoner (module docstring). ``client_id``: this client's id on the
    topic (unique among the reasoner's clients); ``timeout_s``: how long a request waits."""

    def __init__(self, tracker: StreamingTracker, client_id: str, send: Callable[[str], None],
                 timeout_s: float, reachable: Callable[[], bool] = lambda: True,
                 backoff_s: float = DEFAULT_BACKOFF_S, max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
                 clock: Callable[[], float] = time.monotonic):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        check_client_id(client_id)
        self.tracker = tracker
        self.client_id = client_id
        self.timeout_s = float(timeout_s)
        self.stats = RemoteStats()
        self._send, self._reachable, self._clock = send, reachable, clock
        self._backoff_s, self._max_backoff_s = backoff_s, max_backoff_s
        self._ids = itertools.count(int(time.time_ns()) % 2**62)
        self._lock = threading.Lock()
        self._waiting: dict[int, _Waiting] = {}
        self._paused_until = float("-inf")

    def prepare(self, instruction: Instruction) -> None:
        """Nothing to check here: the reasoner embeds the text (a failure there is that query's)."""

    def ground_many(self, window: FrameWindow, instructions: Sequence[Instruction]) -> list[Grounding | ReasonerFault]:
        """One request for ``instructions`` over the encoded frames ``window`` holds, and TKS on
        the answers (module docstring); item i is instruction i's :class:`Grounding`, or the
        :class:`ReasonerFault` of an instruction the reasoner failed. Raises
        :class:`ReasonerUnavailable` or :class:`ReasonerFault` when the request as a whole fails,
        ValueError with no encoded frame held. No instructions: [] (nothing is sent)."""
        if not instructions:
            return []
        if len(instructions) > MAX_INSTRUCTIONS:
            raise ValueError(f"{len(instructions)} instructions in one query; the protocol takes {MAX_INSTRUCTIONS}")
        # The features are taken now, as the local query does: the window may evict these frames meanwhile.
        held = {frame.stamp_ns: (frame, feats) for frame, feats in window.with_feature(SAM2_KEY)[-MAX_STAMPS:]}
        if not held:
            raise ValueError("no encoded frame in the window yet: grounding needs at least one")
        started = time.perf_counter()
        response = self._ask([i.text for i in instructions], list(held))
        roundtrip = time.perf_counter() - started
        results = [self._result(instruction, answer, held, roundtrip)
                   for instruction, answer in zip(instructions, response.results)]
        current = {f.stamp_ns for f in window.snapshot()}
        gone = {f.stamp_ns for r in results if isinstance(r, Reasoning) for f in r.dense} - current
        if gone:
            self.stats.left_window += 1
            log.warning("%d of the reasoner's keyframe candidates left the window during the query (%.2f s); "
                        "their features were kept, the answer is used (a longer window_frames avoids this)",
                        len(gone), roundtrip)
        return self._select(results)

    def on_response(self, text: str) -> None:
        """Take one response (wire text, from any thread): hand it to the request waiting for it,
        or count and drop it (module docstring: faults)."""
        try:
            response = response_from_json(text, for_client=self.client_id)
        except ProtocolError as exc:
            if exc.client_id == self.client_id:
                self._refuse(exc.request_id, f"response refused: {exc}")
            elif exc.client_id is None:
                log.debug("unreadable response on the reasoner topic ignored: %s", exc)
            return
        if response is None:  # another client's: not even its answers are decoded
            return
        with self._lock:
            waiting = self._waiting.get(response.request_id)
            if waiting is None:
                self.stats.late += 1
        if waiting is None:
            log.warning("response to request %s dropped: no such request is waiting (late, after its timeout, "
                        "or foreign)", response.request_id)
            return
        if response.error is not None:
            problem = f"the reasoner refused the request: {response.error}"
        else:
            problem = _mismatch(waiting.request, response)
        if problem:
            self._refuse(response.request_id, problem)
            return
        waiting.response = response
        waiting.done.set()

    # -- one request ---------------------------------------------------------------------------

    def _ask(self, texts: list[str], stamps: list[int]) -> Response:
        """Send a request and wait for its accepted response; raise on a failure (module docstring)."""
        now = self._clock()
        if now < self._paused_until:
            self.stats.backoff_refusals += 1
            raise ReasonerUnavailable(f"reasoner unavailable ({self.stats.last_fault}); next try in "
                                      f"{self._paused_until - now:.1f} s")
        if not self._reachable():
            self.stats.unreachable += 1
            self._failed("no reasoner is listening (no subscriber on the request topic)")
        with self._lock:
            request = Request(self.client_id, next(self._ids), texts, stamps)
            waiting = self._waiting[request.request_id] = _Waiting(request)
            self.stats.requests += 1
        started = time.perf_counter()
        try:
            self._send(request.to_json())
            answered = waiting.done.wait(self.timeout_s)
        finally:
            with self._lock:
                self._waiting.pop(request.request_id, None)
        if not answered:
            self.stats.timeouts += 1
            self._failed(f"no response within reasoner_timeout_s = {self.timeout_s:g} s")
        if waiting.error is not None:
            self.stats.last_fault = waiting.error
            raise ReasonerFault(waiting.error)
        self.stats.answered += 1
        self.stats.consecutive_failures = 0
        self._paused_until = float("-inf")
        self.stats.last_latency_s = time.perf_counter() - started
        return waiting.response

    def _failed(self, reason: str) -> None:
        """A failure of the reasoner: pause the next tries (module docstring) and raise."""
        self.stats.consecutive_failures += 1
        self.stats.last_fault = reason
        pause = min(self._backoff_s * 2 ** (self.stats.consecutive_failures - 1), self._max_backoff_s)
        self._paused_until = self._clock() + pause
        raise ReasonerUnavailable(f"{reason}; next try in {pause:.1f} s")

    def _refuse(self, request_id: int | None, reason: str) -> None:
        """Count a refused response addressed to this client and fail its request, if one waits."""
        with self._lock:
            self.stats.refused += 1
            waiting = self._waiting.get(request_id)
        log.warning("%s", reason)
        if waiting is not None:
            waiting.error = reason
            waiting.done.set()

    # -- the answers ---------------------------------------------------------------------------

    def _result(self, instruction: Instruction, result: Answer | Failure,
                held: dict[int, tuple[Frame, FrameFeatures]], roundtrip_s: float) -> Reasoning | ReasonerFault:
        """An answer as the :class:`Reasoning` TKS needs (its frames and SAM-2 features looked up
        by stamp in ``held``, the request's), or the fault of a failure."""
        if isinstance(result, Failure):
            self.stats.failures += 1
            return ReasonerFault(f"the reasoner could not answer {instruction.text!r}: {result.error}")
        dense = [held[s][0] for s in result.dense_ns]
        device = self.tracker.device
        tokens = GroundingTokens(seg=torch.from_numpy(result.seg).to(device),
                                 tak=torch.from_numpy(result.tak).to(device), rows=(), hidden=torch.empty(0))
        timings = {**result.timings_s, "reasoner_roundtrip": roundtrip_s}
        return Reasoning(instruction=instruction, anchor=held[result.anchor_ns][0].index, dense=dense,
                         candidates=[held[s][1] for s in result.dense_ns],
                         sparse_frames=[held[s][0].index for s in result.sparse_ns], input_ids=[],
                         tokens=tokens, token=torch.from_numpy(result.tak_prime).to(device),
                         tda_weights=torch.from_numpy(result.tda_weights).to(device), timings_s=timings)

    def _select(self, results: list[Reasoning | ReasonerFault]) -> list[Grounding | ReasonerFault]:
        """TKS for every answered instruction in one batch; the faults stay in their slots."""
        selected = iter(select_keyframes(self.tracker, [r for r in results if isinstance(r, Reasoning)]))
        return [next(selected) if isinstance(r, Reasoning) else r for r in results]


def _mismatch(request: Request, response: Response) -> str | None:
    """Why a response does not fit its request (None when it does): as many results as
    instructions, each answer for its own instruction (as the reasoner cleans it), over stamps
    the request named, its anchor among its lattice stamps."""
    if len(response.results) != len(request.instructions):
        return (f"response refused: {len(response.results)} results for {len(request.instructions)} instructions "
                f"(request {request.request_id})")
    sent = set(request.stamps_ns)
    for text, result in zip(request.instructions, response.results):
        if isinstance(result, Failure):
            continue
        if result.instruction != clean_instruction(text).text:
            return f"response refused: an answer for {result.instruction!r} where {text!r} was asked"
        stamps = [*result.dense_ns, *result.sparse_ns]
        if not set(stamps) <= sent or result.anchor_ns not in result.dense_ns:
            return (f"response refused: the answer for {text!r} names stamps the request did not send "
                    f"or an anchor outside its lattice")
    return None
