"""The reasoner protocol's wire format: round trips, bit-exact arrays, and every refusal."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from vrs_node.core.reasoner_protocol import (MAX_REQUEST_BYTES, PROTOCOL_VERSION, Answer, Failure, ProtocolError,
                                             Request, Response, decode_array, encode_array)


def request(**changes) -> dict:
    data = {"version": PROTOCOL_VERSION, "client_id": "robot-1", "request_id": 7,
            "instructions": ["the swan", "the boat"], "stamps_ns": [10, 20, 30]}
    return {**data, **changes}


def answer(seed: int = 0, n: int = 3, d: int = 8) -> Answer:
    rng = np.random.default_rng(seed)
    return Answer(instruction="the swan", anchor_ns=20, dense_ns=[10, 20, 30][:n], sparse_ns=[],
                  seg=rng.standard_normal((n, d)), tak=rng.standard_normal(d), tak_prime=rng.standard_normal(d),
                  tda_weights=rng.random(n), timings_s={"mllm_prefill": 0.5, "tda": 0.001})


def refused(parse, data, *words):
    with pytest.raises(ProtocolError) as exc:
        parse(data if isinstance(data, str) else json.dumps(data))
    for word in words:
        assert word in str(exc.value)
    return exc.value


def test_a_request_round_trips():
    sent = Request("robot-1", 7, ["the swan"], [10, 2**63 - 1])
    assert Request.from_json(sent.to_json()) == sent
    assert json.loads(sent.to_json()) == {"version": PROTOCOL_VERSION, "client_id": "robot-1", "request_id": 7,
                                          "instructions": ["the swan"], "stamps_ns": [10, 2**63 - 1]}


def test_a_response_round_trips_with_arrays_bit_exact():
    special = np.array([[np.float32(1e-45), -0.0, np.float32(3.4028235e38), 1 / 3]], np.float32)
    sent = Response("robot-1", 7, results=[answer(0), Failure("no frame held"), answer(1, n=1, d=4)])
    got = Response.from_json(sent.to_json())
    assert (got.client_id, got.request_id, got.version, got.error) == ("robot-1", 7, PROTOCOL_VERSION, None)
    assert got.results[1] == Failure("no frame held")
    for a, b in zip([got.results[0], got.results[2]], [sent.results[0], sent.results[2]]):
        assert (a.instruction, a.anchor_ns, a.dense_ns, a.sparse_ns, a.timings_s) == \
            (b.instruction, b.anchor_ns, b.dense_ns, b.sparse_ns, b.timings_s)
        for name in ("seg", "tak", "tak_prime", "tda_weights"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == np.float32 and x.tobytes() == y.tobytes()
    decoded = decode_array(encode_array(special), "x", 2)
    assert decoded.tobytes() == special.tobytes() and np.signbit(decoded[0, 1])
    error = Response.from_json(Response("robot-1", None, error="busy").to_json())
    assert (error.request_id, error.error, error.results) == (None, "busy", None)


def test_the_wire_array_is_little_endian_float32_in_c_order():
    values = np.arange(6, dtype=np.float64).reshape(2, 3)
    wire = encode_array(values)
    assert wire["dtype"] == "float32" and wire["shape"] == [2, 3]
    assert base64.b64decode(wire["b64"]) == values.astype("<f4").tobytes()


def test_another_version_is_refused_and_names_both_versions():
    error = refused(Request.from_json, request(version=PROTOCOL_VERSION + 1),
                    f"protocol version {PROTOCOL_VERSION + 1}, this side speaks {PROTOCOL_VERSION}")
    assert (error.client_id, error.request_id) == ("robot-1", 7)
    wire = json.loads(Response("robot-1", 7, error="x").to_json())
    refused(Response.from_json, {**wire, "version": 0}, "protocol version 0")
    error = refused(Request.from_json, request(version="1"), "no integer version")
    assert error.client_id == "robot-1"
    refused(Request.from_json, {k: v for k, v in request().items() if k != "version"}, "no integer version")


@pytest.mark.parametrize("changes, words", [
    ({"instructions": []}, ["instructions must be a list of 1..16"]),
    ({"instructions": ["a"] * 17}, ["instructions must be a list"]),
    ({"instructions": ["a", 3]}, ["instructions must be a list"]),
    ({"instructions": "the swan"}, ["instructions must be a list"]),
    ({"stamps_ns": []}, ["stamps_ns must be a list of 1..4096"]),
    ({"stamps_ns": [1.0]}, ["stamps_ns must hold integers"]),
    ({"stamps_ns": [-1]}, ["stamps_ns must hold integers"]),
    ({"stamps_ns": [True]}, ["stamps_ns must hold integers"]),
    ({"request_id": "7"}, ["request_id must be an integer"]),
    ({"request_id": None}, ["request_id must be an integer"]),
    ({"extra": 1}, ['unknown ["extra"]']),
])
def test_malformed_requests_are_refused_with_the_sender_when_readable(changes, words):
    error = refused(Request.from_json, request(**changes), *words)
    assert error.client_id == "robot-1"
    assert error.request_id == (None if "request_id" in changes else 7)


@pytest.mark.parametrize("text, words", [
    ("{not json", ["not JSON"]),
    ("[1, 2]", ["must be a JSON object"]),
    (json.dumps(request(client_id="")), ["client_id must be a string"]),
    (json.dumps(request(client_id=5)), ["client_id must be a string"]),
    (json.dumps(request(client_id="x" * 129)), ["client_id must be a string"]),
    (json.dumps(request()).replace("[10,", "[1e400,"), ["does not fit a float"]),
    ('{"version": NaN}', ["finite"]),
    ("[" * 40 + "]" * 40, ["nests"]),
    (json.dumps(request(instructions=["x" * MAX_REQUEST_BYTES])), ["longer than"]),
])
def test_unreadable_requests_are_refused(text, words):
    assert refused(Request.from_json, text, *words).client_id is None
    with pytest.raises(ProtocolError, match="must be text"):
        Request.from_json(b"{}")


def wire_response(**answer_changes) -> dict:
    wire = json.loads(Response("robot-1", 7, results=[answer()]).to_json())
    wire["results"][0].update(answer_changes)
    return wire


def test_malformed_responses_are_refused():
    ok = wire_response()
    seg = ok["results"][0]["seg"]
    cases = [
        (wire_response(seg={**seg, "dtype": "float64"}), "dtype must be \"float32\""),
        (wire_response(seg={**seg, "shape": [3, 9]}), "needs 108"),
        (wire_response(seg={**seg, "shape": [24]}), "shape must be 2"),
        (wire_response(seg={**seg, "shape": [3, -8]}), "shape must be 2"),
        (wire_response(seg={**seg, "b64": "!!" + seg["b64"]}), "not standard base64"),
        (wire_response(seg={**seg, "b64": 5}), "b64 must be a base64 string"),
        (wire_response(seg={**seg, "extra": 1}), "seg fields must be exactly"),
        (wire_response(dense_ns=[10, 20]), "do not match 2 dense frames"),
        (wire_response(tak=encode_array(np.zeros(7))), "do not match 3 dense frames"),
        (wire_response(tda_weights=encode_array(np.zeros(2))), "do not match"),
        (wire_response(anchor_ns=-5), "anchor_ns must hold integers"),
        (wire_response(dense_ns="10"), "dense_ns must be a list"),
        (wire_response(instruction=1), "instruction must be a string"),
        (wire_response(timings_s={"tda": "1"}), "timings_s must be an object of numbers"),
        (wire_response(timings_s=[1]), "timings_s must be an object of numbers"),
        ({**ok, "results": [{"error": 3}]}, "failure error must be a string"),
        ({**ok, "results": [{"error": "x", "why": 1}]}, "failure fields"),
        ({**ok, "results": []}, "results must be a list of 1..16"),
        ({**ok, "results": [5]}, "answer must be a JSON object"),
        ({**ok, "error": "both"}, "response fields must be exactly"),
        ({**ok, "results": None, "error": 5} | {}, "response fields"),
        ({k: v for k, v in ok.items() if k != "results"}, "response fields must be exactly"),
        ({**ok, "request_id": "7"}, "request_id must be an integer"),
        ({"version": PROTOCOL_VERSION, "client_id": "c", "request_id": 7, "error": 5}, "error must be a string"),
    ]
    for data, words in cases:
        refused(Response.from_json, data, words)


def test_answers_and_responses_check_themselves():
    with pytest.raises(ProtocolError, match="do not match"):
        Answer("x", 1, [1, 2], [], np.zeros((3, 4)), np.zeros(4), np.zeros(4), np.zeros(3))
    with pytest.raises(ProtocolError, match="either results or an error"):
        Response("c", 1)
    with pytest.raises(ProtocolError, match="either results or an error"):
        Response("c", 1, results=[], error="x")
