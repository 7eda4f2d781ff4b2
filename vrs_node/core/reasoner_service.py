"""The reasoner server's logic, ROS-free: camera frames in, protocol requests answered in batches.

:class:`ReasonerService` keeps a bounded :class:`FrameWindow` of the camera's frames with only the
reasoner's per-frame inputs cached beside them (the CLIP anchor embedding and the MLLM frame
tokens, each computed at most once per frame, when a request first needs it), takes requests as
wire text (:mod:`vrs_node.core.reasoner_protocol`) on any thread and answers them on its own
worker thread, so the caller (a ROS callback) never waits on a model.

Batching: the worker takes the waiting requests in arrival order while their instructions add up
to at most ``max_batch`` (always at least one request); the requests of a batch that name the
same held frames are answered by one :meth:`Grounder.reason_many` call (one batched prefill);
requests naming different frames get one call per distinct set of frames. A request is answered
over the held frames whose stamps it names; one that names none gets a failure per instruction
saying which stamps the reasoner holds. Each response carries its request's client id and request
id; every response goes to the one ``publish`` callable, and clients keep their own.

A refused request (malformed, another protocol version, more than ``max_batch`` instructions, or
:data:`MAX_PENDING` requests already waiting) is answered at once with an error response when
its client id can be read, and logged either way.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vrs_node.core.frames import CLIP_KEY, MLLM_KEY, Frame, FrameWindow, check_frame
from vrs_node.core.grounder import Grounder, GrounderConfig, Reasoning
from vrs_node.core.reasoner_protocol import Answer, Failure, ProtocolError, Request, Response, request_from_json
from vrs_node.core.tracker import StreamingTracker
from vrs_node.models.config import check_settings, setting
from vrs_node.models.profiles import LoadedModels
from vrs_node.models.prompt import Instruction, clean_instruction

MAX_PENDING = 64
"""Most requests waiting for the worker; more are refused ("busy"), so a flood cannot grow memory."""
REASONER_INPUT_KEYS = (CLIP_KEY, MLLM_KEY)
"""The per-frame inputs the reasoner caches (computed by :meth:`Grounder.reason_many`)."""


@dataclass(frozen=True)
class ReasonerConfig:
    """The reasoner's own settings (the ``vrs-reasoner`` node's parameters besides the models')."""

    window_frames: int = setting(16, "camera frames (and their reasoner inputs) held for requests", range=(1, 1000))
    max_batch: int = setting(4, "most instructions answered by one batched prefill, and in one request",
                             range=(1, 16))
    sparse_frames: int = setting(0, "pooled context frames over the requested frames given to the MLLM besides "
                                    "the dense lattice (0 = VRS-HQ)", range=(0, 64))

    def __post_init__(self) -> None:
        check_settings(self)


def build_reasoner_grounder(models: LoadedModels, sparse_frames: int = 0) -> Grounder:
    """A :class:`Grounder` over ``models``' grounding models (ValueError for a profile without
    them); its tracker only gives the device (``reason_many`` runs no SAM-2 model)."""
    if models.grounding is None:
        raise ValueError("this model profile has no reasoner (MLLM); choose a profile with language models")
    g = models.grounding
    tracker = StreamingTracker(models.sam2, models.transform, **models.tracker_options)
    return Grounder(g.mllm, g.tokenizer, g.anchor_scorer, tracker, GrounderConfig(sparse_frames=sparse_frames),
                    g.special_ids)


class ReasonerService:
    """Frames and requests in, responses out through ``publish(text)`` (module docstring).

    ``window_frames`` (≥ 1) frames are held; ``max_batch`` (≥ 1) bounds the instructions answered
    by one batch and in one request; ``log(text)`` receives a line per refused request. Call
    :meth:`start` to run the worker and :meth:`stop` to end it; :meth:`answer` is the worker's
    step, callable directly."""

    def __init__(self, grounder: Grounder, window_frames: int, max_batch: int, publish: Callable[[str], None],
                 log: Callable[[str], None] = print):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        self.grounder = grounder
        self.window = FrameWindow(window_frames)
        self.max_batch = max_batch
        self._publish, self._log = publish, log
        self._pending: deque[Request] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

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
                self._pending.append(request)
                self._wake.notify()
        except ProtocolError as exc:
            self._refuse(exc)

    def start(self) -> None:
        """Run the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vrs-reasoner", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """End the worker after the batch in progress; waiting requests are dropped unanswered."""
        with self._wake:
            self._stopping = True
            self._pending.clear()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def answer(self, requests: Sequence[Request]) -> list[Response]:
        """One response per request, in order: the requests naming the same held frames share one
        ``reason_many`` call; an instruction that cannot be reasoned about gets its
        :class:`Failure` (the others are answered)."""
        held = self.window.snapshot()
        results: list[list[Answer | Failure | None]] = [[None] * len(r.instructions) for r in requests]
        groups: dict[tuple[int, ...], list[tuple[int, int, Instruction]]] = {}
        for i, request in enumerate(requests):
            wanted = set(request.stamps_ns)
            frames = tuple(f.index for f in held if f.stamp_ns in wanted)
            for j, text in enumerate(request.instructions):
                if not frames:
                    results[i][j] = Failure(_none_held(request, held))
                    continue
                try:
                    groups.setdefault(frames, []).append((i, j, clean_instruction(text)))
                except ValueError as exc:
                    results[i][j] = Failure(f"instruction refused: {exc}")
        by_index = {f.index: f for f in held}
        for frames, slots in groups.items():
            for (i, j, _), result in zip(slots, self._reason([by_index[k] for k in frames], [s[2] for s in slots])):
                results[i][j] = result
        return [Response(r.client_id, r.request_id, results=results[i]) for i, r in enumerate(requests)]

    def _reason(self, frames: list[Frame], instructions: list[Instruction]) -> list[Answer | Failure]:
        """``reason_many`` over ``frames`` (a view of the window holding only them, its cached
        reasoner inputs shared both ways) → one answer per instruction, or the failure for all."""
        view, copies = FrameWindow(len(frames)), []
        for frame in frames:
            copies.append(view.append(frame.image, frame.stamp_ns, frame.frame_id, frame.camera_hw))
            self._share(self.window, frame.index, view, copies[-1].index)
        try:
            reasonings = self.grounder.reason_many(view, instructions, with_candidates=False)
        except (ValueError, RuntimeError) as exc:
            return [Failure(f"reasoning failed: {exc}")] * len(instructions)
        finally:
            for frame, copy in zip(frames, copies):
                self._share(view, copy.index, self.window, frame.index)
        stamps = {copy.index: copy.stamp_ns for copy in copies}
        return [_answer(r, stamps) for r in reasonings]

    @staticmethod
    def _share(source: FrameWindow, source_index: int, target: FrameWindow, target_index: int) -> None:
        """Copy the reasoner inputs ``source`` caches for a frame that ``target`` lacks (nothing
        when the target frame has left its window)."""
        for key in REASONER_INPUT_KEYS:
            value = source.get_feature(source_index, key)
            if value is not None and not target.has_feature(target_index, key):
                try:
                    target.set_feature(target_index, key, value)
                except KeyError:
                    return

    def _refuse(self, exc: ProtocolError) -> None:
        """Log a refused request and answer it with an error response when its client id is known."""
        self._log(f"request refused (client {exc.client_id!r}, request {exc.request_id!r}): {exc}")
        if exc.client_id is not None:
            self._publish(Response(exc.client_id, exc.request_id, error=str(exc)).to_json())

    def _take(self) -> list[Request] | None:
        """The next batch (waiting for one), or None once stopping."""
        with self._wake:
            while not self._pending and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
            batch = [self._pending.popleft()]
            count = len(batch[0].instructions)
            while self._pending and count + len(self._pending[0].instructions) <= self.max_batch:
                count += len(self._pending[0].instructions)
                batch.append(self._pending.popleft())
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                responses = self.answer(batch)
            except Exception as exc:  # noqa: BLE001 -- the worker must outlive any one batch
                self._log(f"batch of {len(batch)} requests failed: {exc!r}")
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
