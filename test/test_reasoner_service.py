"""The reasoner server's logic without ROS: answers equal a local ``reason_many``, batching up to
``max_batch`` with one ``reason_many`` per batch whatever frames its requests name (each answer as
its request's alone), a batch waiting ``batch_wait_s`` for more requests, stamps the reasoner does
not hold, refusals, per-frame inputs computed once, the service's counters."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest
from conftest import HeldCall, davis_sequence, failed_call

from vrs_node.core.frames import CLIP_KEY, MLLM_KEY, SAM2_KEY, FrameWindow
from vrs_node.core.pipeline import build_pipeline
from vrs_node.core.reasoner_protocol import PROTOCOL_VERSION, Answer, Failure, Request, Response
from vrs_node.core.reasoner_service import MAX_PENDING, MAX_PENDING_PER_CLIENT, ReasonerService, build_reasoner_grounder
from vrs_node.models.profiles import get_profile, load_models
from vrs_node.models.prompt import clean_instruction

STAMP0 = 1_700_000_000_000_000_000
STEP = 33_333_333


@pytest.fixture(scope="module")
def models():
    return load_models(get_profile("tiny-random"), image_size=128)


@pytest.fixture(scope="module")
def frames():
    return [f[::4, ::4].copy() for f in davis_sequence("blackswan", 5)[0]]


def stamps(n: int) -> list[int]:
    return [STAMP0 + i * STEP for i in range(n)]


def service(models, frames, max_batch=4, window=8, batch_wait_s=0.0):
    sent = []
    s = ReasonerService(build_reasoner_grounder(models), window, max_batch, sent.append, log=sent.append,
                        batch_wait_s=batch_wait_s)
    for image, stamp in zip(frames, stamps(len(frames))):
        s.add_frame(image, stamp, "cam")
    return s, sent


def local_reasoning(models, frames, texts, frame_stamps=None):
    """``reason_many`` as the tracker runs it: a window of the frames with their SAM-2 features."""
    engine = build_pipeline(models)
    window = FrameWindow(len(frames))
    for image, stamp in zip(frames, frame_stamps or stamps(len(frames))):
        frame = window.append(image, stamp, "cam")
        window.set_feature(frame.index, SAM2_KEY, engine.tracker.encode_frame(frame))
    return engine.grounder.reason_many(window, [clean_instruction(t) for t in texts])


def assert_equal(answer: Answer, reasoning, frames_stamps):
    index_stamp = dict(zip(range(len(frames_stamps)), frames_stamps))
    assert answer.dense_ns == [f.stamp_ns for f in reasoning.dense]
    assert answer.anchor_ns == index_stamp[reasoning.anchor]
    for got, want in [(answer.seg, reasoning.tokens.seg), (answer.tak, reasoning.tokens.tak),
                      (answer.tak_prime, reasoning.token), (answer.tda_weights, reasoning.tda_weights)]:
        np.testing.assert_allclose(got, want.float().numpy(), rtol=0, atol=1e-6)


def test_answers_equal_a_local_reason_many_and_inputs_are_computed_once(models, frames):
    s, _ = service(models, frames)
    texts = ["the black swan", "the water"]
    (response,) = s.answer([Request("c", 1, texts, stamps(len(frames)))])
    for answer, reasoning in zip(response.results, local_reasoning(models, frames, texts)):
        assert_equal(answer, reasoning, stamps(len(frames)))
        assert set(answer.timings_s) >= {"clip_anchor", "mllm_frame_tokens", "mllm_prefill", "tda"}
    held = s.window.snapshot()
    assert all(s.window.has_feature(f.index, CLIP_KEY) for f in held)
    assert not any(s.window.has_feature(f.index, SAM2_KEY) for f in held)
    calls = []
    mllm = s.grounder.mllm
    original = mllm.frame_tokens
    mllm.frame_tokens = lambda images: calls.append(len(images)) or original(images)
    try:
        s.answer([Request("c", 2, texts, stamps(len(frames)))])
    finally:
        del mllm.frame_tokens
    assert calls == []
    assert all(s.window.has_feature(f.index, MLLM_KEY) for f in held if f.stamp_ns in response.results[0].dense_ns)


def test_a_request_is_answered_over_the_frames_it_names_only(models, frames):
    s, _ = service(models, frames)
    named = stamps(len(frames))[1:4] + [5]
    (response,) = s.answer([Request("c", 1, ["the black swan"], named)])
    assert set(response.results[0].dense_ns) <= set(named)
    assert_equal(response.results[0], local_reasoning(models, frames[1:4], ["the black swan"], named[:3])[0],
                 named[:3])
    (none,) = s.answer([Request("c", 2, ["the black swan", "x"], [5, 6])])
    assert all(isinstance(r, Failure) and "none of the 2 stamps given" in r.error for r in none.results)
    (bad,) = s.answer([Request("c", 3, ["", "the swan"], named)])
    assert isinstance(bad.results[0], Failure) and "instruction refused" in bad.results[0].error
    assert isinstance(bad.results[1], Answer)
    stats = s.stats
    assert (stats.batches, stats.answered, stats.instructions_answered, stats.failures) == (3, 3, 2, 3)
    assert (stats.batch_instructions, stats.largest_batch, stats.mean_batch) == (5, 2, 5 / 3)
    assert stats.last_error.startswith("instruction refused")


def test_a_batch_over_different_frames_is_one_reason_many_each_answer_as_its_request_alone(models, frames, monkeypatch):
    s, _ = service(models, frames)
    all_stamps = stamps(len(frames))
    requests = [Request("a", 1, ["the black swan"], all_stamps[0:3]),
                Request("b", 1, ["the water", "x"], all_stamps[1:5]),
                Request("c", 2, ["the bird"], all_stamps[2:5] + [7]),
                Request("d", 3, ["the swan"], [7])]
    calls, original = [], s.grounder.reason_many
    monkeypatch.setattr(s.grounder, "reason_many", lambda window, instructions, **options: calls.append(
        [[f.stamp_ns for f in fs] for fs in options["frames"]]) or original(window, instructions, **options))
    embedded, tokenized = [], []
    mllm, scorer = s.grounder.mllm, s.grounder.anchor_scorer
    embed_image, frame_tokens = scorer.embed_image, mllm.frame_tokens
    monkeypatch.setattr(scorer, "embed_image", lambda image: embedded.append(image.ctypes.data) or embed_image(image))
    monkeypatch.setattr(mllm, "frame_tokens", lambda images: tokenized.extend(i.ctypes.data for i in images)
                        or frame_tokens(images))
    responses = s.answer(requests)
    monkeypatch.undo()
    assert calls == [[all_stamps[0:3], all_stamps[1:5], all_stamps[1:5], all_stamps[2:5]]]
    # every frame named is embedded once for the whole batch, the MLLM's frame tokens at most once
    assert sorted(embedded) == sorted(f.image.ctypes.data for f in s.window.snapshot())
    assert len(tokenized) == len(set(tokenized)) > 0
    assert all(isinstance(r, Failure) and "none of the 1 stamps given" in r.error for r in responses[3].results)
    for request, response in zip(requests[:3], responses):
        alone, _ = service(models, frames)
        (want,) = alone.answer([request])
        assert (response.client_id, response.request_id) == (request.client_id, request.request_id)
        for got, expected in zip(response.results, want.results, strict=True):
            assert (got.instruction, got.anchor_ns, got.dense_ns, got.sparse_ns) == \
                (expected.instruction, expected.anchor_ns, expected.dense_ns, expected.sparse_ns)
            assert set(got.dense_ns) <= set(request.stamps_ns)
            for a, b in [(got.seg, expected.seg), (got.tak, expected.tak), (got.tak_prime, expected.tak_prime),
                         (got.tda_weights, expected.tda_weights)]:
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    local = local_reasoning(models, frames[1:5], ["the water"], all_stamps[1:5])[0]
    assert_equal(responses[1].results[0], local, all_stamps[1:5])
    stats = s.stats
    assert (stats.batches, stats.batch_instructions, stats.largest_batch) == (1, 5, 5)
    assert (stats.answered, stats.instructions_answered, stats.failures) == (4, 4, 1)


def test_waiting_requests_are_batched_up_to_max_batch(models, frames):
    s, sent = service(models, frames, max_batch=3)
    calls, original = [], s.grounder.reason_many
    s.grounder.reason_many = lambda window, instructions, **options: calls.append(len(instructions)) or \
        original(window, instructions, **options)
    all_stamps, done = stamps(len(frames)), threading.Event()
    for i, texts in enumerate([["the swan"], ["the water", "the bank"], ["the swan"], ["the bird"]]):
        s.submit(Request(f"client-{i % 2}", i, texts, all_stamps).to_json())
    s.submit(Request("client-1", 9, ["x"], all_stamps[:2]).to_json())
    original_publish = s._publish
    s._publish = lambda text: original_publish(text) or (len(sent) == 5 and done.set())
    s.start()
    try:
        assert done.wait(120)
    finally:
        s.stop()
    # [1 + 2], [1 + 1 + 1 over other frames]: one call per batch
    assert calls == [3, 3]
    responses = [Response.from_json(t) for t in sent]
    assert [(r.client_id, r.request_id) for r in responses] == [("client-0", 0), ("client-1", 1), ("client-0", 2),
                                                                ("client-1", 3), ("client-1", 9)]
    assert [len(r.results) for r in responses] == [1, 2, 1, 1, 1]
    assert all(isinstance(a, Answer) for r in responses for a in r.results)
    stats = s.stats
    assert (stats.requests, stats.refused, stats.answered, stats.pending) == (5, 0, 5, 0)
    assert (stats.batches, stats.batch_instructions, stats.largest_batch) == (2, 6, 3)
    assert (stats.instructions_answered, stats.failures, stats.last_error) == (6, 0, "")


def record_calls(s):
    """[(instructions, time.monotonic()) of each ``reason_many`` call of ``s``'s grounder]."""
    calls, original = [], s.grounder.reason_many
    s.grounder.reason_many = lambda window, instructions, **options: calls.append(
        (len(instructions), time.monotonic())) or original(window, instructions, **options)
    return calls


def answered(s, sent, count):
    """An event set once ``s`` has published ``count`` responses into ``sent``."""
    done, publish = threading.Event(), s._publish
    s._publish = lambda text: publish(text) or (len(sent) >= count and done.set())
    return done


def test_a_batch_that_is_not_full_waits_batch_wait_s_after_its_first_request(models, frames):
    s, sent = service(models, frames, max_batch=3, batch_wait_s=3.0)  # ample for the 0.3 s below under load
    calls, done = record_calls(s), answered(s, sent, 2)
    all_stamps = stamps(len(frames))
    s.start()
    try:
        first = time.monotonic()
        s.submit(Request("client-0", 0, ["the swan"], all_stamps).to_json())
        time.sleep(0.3)  # arrives while the first waits: the same batch
        s.submit(Request("client-1", 1, ["the water"], all_stamps).to_json())
        assert done.wait(120)
    finally:
        s.stop()
    assert [n for n, _ in calls] == [2] and calls[0][1] - first >= 3.0
    assert all(isinstance(a, Answer) for t in sent for a in Response.from_json(t).results)


def test_a_full_batch_or_one_the_next_request_does_not_fit_runs_without_waiting(models, frames):
    s, sent = service(models, frames, max_batch=3, batch_wait_s=30.0)  # a wait would fail the 25 s below
    calls, done = record_calls(s), answered(s, sent, 5)
    all_stamps = stamps(len(frames))
    for i, texts in enumerate([["a"], ["b", "c"], ["d", "e"], ["f", "g"], ["h"]]):
        s.submit(Request(f"client-{i}", i, texts, all_stamps).to_json())
    s.start()
    try:
        assert done.wait(25)
    finally:
        s.stop()
    # [1 + 2] full; [2], since the next 2 do not fit; [2 + 1] full
    assert [n for n, _ in calls] == [3, 2, 3]
    assert s.stats.pending == 0 and s.stats.answered == 5


def test_stop_ends_a_batch_waiting_for_more_requests_at_once(models, frames):
    s, sent = service(models, frames, batch_wait_s=30.0)
    calls = record_calls(s)
    s.start()
    s.submit(Request("client-0", 0, ["the swan"], stamps(len(frames))).to_json())
    time.sleep(0.2)
    start = time.monotonic()
    assert s.stop(timeout_s=10) is True
    assert not s._thread.is_alive() and time.monotonic() - start < 10
    assert calls == [] and sent == []


def test_stop_waits_at_most_its_timeout_for_a_batch_inside_the_model(models, frames, caplog):
    """A batch held inside reason_many: stop(timeout_s) returns False after about its timeout,
    naming the thread; once the batch ends, the worker ends and stop is True."""
    s, _ = service(models, frames)
    s.grounder.reason_many = held = HeldCall(failed_call)
    s.start()
    try:
        s.submit(Request("client-0", 0, ["the swan"], stamps(len(frames))).to_json())
        assert held.inside.wait(30)
        start = time.monotonic()
        assert s.stop(timeout_s=0.5) is False
        assert 0.4 < time.monotonic() - start < 5
        assert "vrs-reasoner still running" in caplog.text
    finally:
        held.release.set()
    assert s.stop(timeout_s=30) is True


@pytest.mark.parametrize("wait", [-0.1, math.nan, math.inf])
def test_batch_wait_s_must_be_a_finite_number_of_at_least_0(models, wait):
    with pytest.raises(ValueError, match="batch_wait_s"):
        ReasonerService(build_reasoner_grounder(models), 8, 4, lambda text: None, batch_wait_s=wait)


def test_refused_requests_are_answered_when_the_client_is_known_and_logged(models, frames):
    s, sent = service(models, frames, max_batch=2)
    request = json.loads(Request("c", 1, ["a"], [1]).to_json())
    s.submit(json.dumps({**request, "version": PROTOCOL_VERSION + 1}))
    s.submit(json.dumps({**request, "instructions": ["a", "b", "c"]}))
    s.submit(json.dumps({**request, "client_id": 5}))
    s.submit("{nope")
    logs = [t for t in sent if t.startswith("request refused")]
    answers = [Response.from_json(t) for t in sent if not t.startswith("request refused")]
    assert len(logs) == 4
    assert [(a.client_id, a.request_id) for a in answers] == [("c", 1), ("c", 1)]
    assert f"protocol version {PROTOCOL_VERSION + 1}, this side speaks {PROTOCOL_VERSION}" in answers[0].error
    assert "at most 2 (parameter max_batch)" in answers[1].error
    sent.clear()
    for i in range(MAX_PENDING_PER_CLIENT + 1):  # one client floods: its own surplus is refused
        s.submit(Request("flood", i, ["a"], [1]).to_json())
    responses = lambda: [Response.from_json(t) for t in sent if not t.startswith("request refused")]  # noqa: E731
    (refused,) = responses()
    assert refused.request_id == MAX_PENDING_PER_CLIENT and "8 requests of this client" in refused.error
    s.submit(Request("calm", 0, ["a"], [1]).to_json())  # the others still get in
    others = MAX_PENDING - MAX_PENDING_PER_CLIENT - 1
    for i in range(others):
        s.submit(Request(f"c{i // MAX_PENDING_PER_CLIENT}", i, ["a"], [1]).to_json())
    assert len(responses()) == 1
    s.submit(Request("calm", 1, ["a"], [1]).to_json())
    assert f"busy: {MAX_PENDING} requests are waiting" in responses()[-1].error
    stats = s.stats
    assert (stats.requests, stats.refused, stats.pending, stats.batches) == (4 + 9 + 1 + others + 1, 6, MAX_PENDING, 0)
    assert "busy" in stats.last_error
