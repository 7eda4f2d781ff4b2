"""The tracker side of the reasoner protocol without ROS (:mod:`vrs_node.core.remote_reasoner`):
an engine grounding through a :class:`ReasonerService` equals one grounding locally on the same
weights and frames; each fault (no reasoner, a timeout, a refused, foreign or late response, a
failed instruction, frames that left the window, a superseded instruction) is counted, reported,
and tracking goes on."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import davis_sequence

from vrs_node.core.config import PipelineConfig
from vrs_node.core.frames import SAM2_KEY, FrameWindow
from vrs_node.core.pipeline import build_pipeline
from vrs_node.core.reasoner_protocol import Failure, Request, Response, request_from_json
from vrs_node.core.reasoner_service import ReasonerService, build_reasoner_grounder
from vrs_node.core.remote_reasoner import ReasonerFault, ReasonerUnavailable, RemoteGrounder
from vrs_node.core.target_specs import TargetSpec
from vrs_node.models.profiles import get_profile, load_models
from vrs_node.models.prompt import clean_instruction

STAMP0 = 1_700_000_000_000_000_000
STEP = 33_333_333
TEXTS = ["the black swan", "the water"]


@pytest.fixture(scope="module")
def models():
    return load_models(get_profile("tiny-random"), image_size=128)


@pytest.fixture(scope="module")
def frames():
    return [f[::4, ::4].copy() for f in davis_sequence("blackswan", 6)[0]]


class InProcessReasoner:
    """A :class:`ReasonerService` as the far side: requests go to it as wire text, its responses
    come back to every connected grounder as wire text (as on the shared DDS topic)."""

    def __init__(self, models, window=16):
        self.clients: list[RemoteGrounder] = []
        self.service = ReasonerService(build_reasoner_grounder(models), window, 4, self._publish, log=lambda t: None)
        self.service.start()

    def _publish(self, text: str) -> None:
        for client in self.clients:
            client.on_response(text)

    def connect(self, tracker, client_id="tracker-1", **options) -> RemoteGrounder:
        grounder = RemoteGrounder(tracker, client_id, self.service.submit, options.pop("timeout_s", 30.0), **options)
        self.clients.append(grounder)
        return grounder


def run(engine, frames, texts, before=None):
    """Push the first frames, follow ``texts`` (one target each), push the last frame; the results."""
    results = []
    for i, image in enumerate(frames):
        if i == len(frames) - 1:
            engine.set_targets([(None, TargetSpec(instruction=t)) for t in texts])
        if before is not None:
            before(image, STAMP0 + i * STEP)
        results.append(engine.push(image, STAMP0 + i * STEP, "cam"))
    return results


def test_a_remote_grounding_equals_the_local_one(models, frames):
    local_reports, remote_reports = [], []
    local = build_pipeline(models, PipelineConfig(mode="sync"), on_query=local_reports.append)
    reasoner = InProcessReasoner(models)
    remote = build_pipeline(models, PipelineConfig(mode="sync"), on_query=remote_reports.append,
                            remote_grounder=reasoner.connect)
    try:
        want = run(local, frames, TEXTS)
        got = run(remote, frames, TEXTS, before=lambda image, stamp: reasoner.service.add_frame(image, stamp, "cam"))
    finally:
        reasoner.service.stop()
    assert [r.target_id for r in remote_reports] == [r.target_id for r in local_reports] == [1, 2]
    for mine, theirs in zip(remote_reports, local_reports):
        assert mine.error is None and mine.applied
        a, b = mine.grounding, theirs.grounding
        assert a.keyframe_stamp_ns == b.keyframe_stamp_ns and a.dense_frames == b.dense_frames
        assert a.anchor == b.anchor
        for x, y in [(a.tokens.seg, b.tokens.seg), (a.tokens.tak, b.tokens.tak), (a.token, b.token)]:
            np.testing.assert_allclose(x.numpy(), y.float().numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.tda_weights, b.tda_weights, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.tks_object_scores, b.tks_object_scores, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert {"mllm_prefill", "reasoner_roundtrip", "tks"} <= set(a.timings_s)
    np.testing.assert_array_equal(got[-1].instance_map, want[-1].instance_map)
    stats = remote.grounder.stats
    assert (stats.requests, stats.answered, stats.timeouts, stats.refused) == (1, 1, 0, 0) and stats.connected


class Scripted:
    """A far side that answers each request with ``respond(request) -> list of response texts``
    (or nothing), the answers computed by a real service over the same frames when asked."""

    def __init__(self, models, window: FrameWindow, respond):
        self.requests: list[Request] = []
        self.respond = respond
        self.service = ReasonerService(build_reasoner_grounder(models), 16, 4, lambda t: None)
        self.window = window
        self.grounder: RemoteGrounder | None = None

    def send(self, text: str) -> None:
        request = request_from_json(text)
        self.requests.append(request)
        for reply in self.respond(self, request) or ():
            self.grounder.on_response(reply)

    def answer(self, request: Request) -> Response:
        for frame in self.window.snapshot():
            self.service.add_frame(frame.image, frame.stamp_ns)
        return self.service.answer([request])[0]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def encoded_window(engine, frames, capacity=8, start=0) -> FrameWindow:
    window = FrameWindow(capacity)
    add_encoded(engine, window, frames, start)
    return window


def add_encoded(engine, window, frames, start):
    for i, image in enumerate(frames, start):
        frame = window.append(image, STAMP0 + i * STEP, "cam")
        window.set_feature(frame.index, SAM2_KEY, engine.tracker.encode_frame(frame))


@pytest.fixture(scope="module")
def engine(models):
    return build_pipeline(models, PipelineConfig(mode="sync"))


def scripted(models, engine, frames, respond, **options):
    window = encoded_window(engine, frames[:4])
    far = Scripted(models, window, respond)
    far.grounder = RemoteGrounder(engine.tracker, "me", far.send, options.pop("timeout_s", 0.2), **options)
    return far, window


INSTRUCTIONS = [clean_instruction(t) for t in TEXTS]


def test_no_reasoner_listening_fails_at_once_and_backs_off_until_it_returns(models, engine, frames):
    clock, listening = Clock(), [False]
    far, window = scripted(models, engine, frames, lambda far, r: [far.answer(r).to_json()],
                           reachable=lambda: listening[0], clock=clock, backoff_s=1.0, max_backoff_s=4.0)
    g = far.grounder
    started = time.perf_counter()
    with pytest.raises(ReasonerUnavailable, match="no reasoner is listening.*next try in 1.0 s"):
        g.ground_many(window, INSTRUCTIONS)
    assert time.perf_counter() - started < 0.1 and far.requests == []
    with pytest.raises(ReasonerUnavailable, match="next try in 1.0 s"):
        g.ground_many(window, INSTRUCTIONS)  # paused: not even asked whether one listens
    assert g.stats.backoff_refusals == 1 and g.stats.unreachable == 1
    for expected in ("2.0", "4.0", "4.0"):  # doubling, capped
        clock.now += 10
        with pytest.raises(ReasonerUnavailable, match=f"next try in {expected} s"):
            g.ground_many(window, INSTRUCTIONS)
    listening[0] = True
    clock.now += 10
    groundings = g.ground_many(window, INSTRUCTIONS)
    assert [x.instruction for x in groundings] == INSTRUCTIONS
    assert g.stats.connected and g.stats.consecutive_failures == 0 and len(far.requests) == 1


def test_a_request_without_response_times_out_and_a_late_response_is_dropped(models, engine, frames):
    clock = Clock()
    far, window = scripted(models, engine, frames, lambda far, r: None, clock=clock, timeout_s=0.2)
    g = far.grounder
    started = time.perf_counter()
    with pytest.raises(ReasonerUnavailable, match="no response within reasoner_timeout_s = 0.2 s"):
        g.ground_many(window, INSTRUCTIONS)
    assert 0.2 <= time.perf_counter() - started < 2.0
    assert g.stats.timeouts == 1 and g.stats.last_fault.startswith("no response")
    g.on_response(far.answer(far.requests[0]).to_json())
    assert g.stats.late == 1 and g.stats.answered == 0


def test_responses_for_other_clients_are_ignored_and_refused_ones_fail_the_request_at_once(models, engine, frames):
    def respond(far, request):
        other = Response("someone-else", request.request_id, error="not yours").to_json()
        if len(far.requests) == 1:  # then a malformed one for us
            return [other, '{"version": 1, "client_id": "me", "request_id": %d, "results": 3}' % request.request_id]
        if len(far.requests) == 2:  # an answer for another instruction
            wrong = far.answer(Request(request.client_id, request.request_id, ["the bank"], request.stamps_ns))
            return [Response("me", request.request_id, results=wrong.results * 2).to_json()]
        if len(far.requests) == 3:
            return [Response("me", request.request_id, error="the reasoner is busy").to_json()]
        return [other, far.answer(request).to_json()]

    far, window = scripted(models, engine, frames, respond, timeout_s=5.0)
    g = far.grounder
    for reason in ("results must be a list", "an answer for 'the bank' where 'the black swan' was asked",
                   "refused the request: the reasoner is busy"):
        started = time.perf_counter()
        with pytest.raises(ReasonerFault, match=reason):
            g.ground_many(window, INSTRUCTIONS)
        assert time.perf_counter() - started < 2.0, "a refused response does not wait for the timeout"
    assert g.stats.refused == 3 and g.stats.consecutive_failures == 0
    assert len(g.ground_many(window, INSTRUCTIONS)) == 2 and g.stats.answered == 1


def test_an_instruction_the_reasoner_fails_fails_alone(models, engine, frames):
    def respond(far, request):
        response = far.answer(request)
        return [Response("me", request.request_id, results=[Failure("out of memory"), response.results[1]]).to_json()]

    far, window = scripted(models, engine, frames, respond)
    failed, grounded = far.grounder.ground_many(window, INSTRUCTIONS)
    assert isinstance(failed, ReasonerFault) and "could not answer 'the black swan': out of memory" in str(failed)
    assert grounded.instruction == INSTRUCTIONS[1]
    assert grounded.keyframe_stamp_ns in [STAMP0 + i * STEP for i in range(4)]
    assert far.grounder.stats.failures == 1


def test_frames_that_left_the_window_during_the_query_are_said_and_their_answer_used(models, engine, frames, caplog):
    def respond(far, request):  # the window moves on while the reasoner thinks
        answer = far.answer(request)
        add_encoded(engine, window, frames, start=10)  # 6 new frames: the old ones drop out of 8
        add_encoded(engine, window, frames[:2], start=16)
        return [answer.to_json()]

    far, window = scripted(models, engine, frames, respond)
    old = [f.stamp_ns for f in window.snapshot()]
    groundings = far.grounder.ground_many(window, INSTRUCTIONS)
    assert not set(old) & {f.stamp_ns for f in window.snapshot()}, "every frame asked about has left the window"
    assert len(far.requests) == 1 and far.grounder.stats.left_window == 1
    assert all(g.keyframe_stamp_ns in old and g.keyframe_features is not None for g in groundings)
    assert "left the window during the query" in caplog.text and "the answer is used" in caplog.text


def test_an_answer_for_a_superseded_instruction_is_discarded_and_counted(models, frames):
    release, asked = threading.Event(), threading.Event()
    reasoner = InProcessReasoner(models)
    submit = reasoner.service.submit

    def slow_submit(text):
        asked.set()
        release.wait(30)
        submit(text)

    reports = []
    engine = build_pipeline(models, PipelineConfig(mode="live"), on_result=lambda r: None, on_query=reports.append,
                            remote_grounder=lambda tracker: reasoner.connect(tracker))
    engine.grounder._send = lambda text: threading.Thread(target=slow_submit, args=(text,), daemon=True).start()
    try:
        for i, image in enumerate(frames[:3]):
            reasoner.service.add_frame(image, STAMP0 + i * STEP)
            engine.push(image, STAMP0 + i * STEP)
        engine.set_instruction("the black swan")
        assert asked.wait(30)
        engine.set_instruction("the water")
        release.set()
        deadline = time.monotonic() + 60
        while len(reports) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        engine.close()
        reasoner.service.stop()
    first, second = reports[:2]
    assert first.instruction.text == "the black swan" and first.grounding is not None and not first.applied
    assert second.instruction.text == "the water" and second.applied
    assert engine.stats.superseded == 1
