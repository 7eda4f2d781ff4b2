"""The reasoner protocol: grounding requests to a ``vrs-reasoner`` node and its responses. ROS-free,
torch-free (numpy and the standard library).

Transport: each message is one ``std_msgs/String`` whose ``data`` is a standard JSON object (UTF-8).
A client publishes requests on ``<reasoner namespace>/<reasoner node>/requests`` and subscribes to
``.../responses`` (both reliable). Every client receives every response: it keeps those whose
``client_id`` is its own and whose ``request_id`` it sent, and drops the others.

Request (version :data:`PROTOCOL_VERSION`), exactly these fields::

    {"version": 1,
     "client_id": "robot-1/vrs_node",        # 1..128 characters, chosen by the client, unique
     "request_id": 7,                        # integer in [0, 2^63), unique per client
     "instructions": ["the black swan"],     # 1..16 texts (each cleaned as the node cleans one)
     "stamps_ns": [1700000000000000000, ...]}  # 1..4096 capture stamps (ns, integers in [0, 2^63))
                                             # of the frames the client still holds

The reasoner reasons over the frames of its own window whose stamps are in ``stamps_ns`` (the
same camera, so the same stamps): CLIP anchor, lattice, MLLM, TDA; no SAM-2.

Response, exactly these fields::

    {"version": 1, "client_id": "robot-1/vrs_node", "request_id": 7,
     "results": [ANSWER or FAILURE, ...]}    # one per instruction, in the request's order

or, when the request as a whole is refused (malformed, another version, too many instructions,
the reasoner busy), ``{"version": 1, "client_id": ..., "request_id": 7 or null, "error": "why"}``
(``request_id`` is null when it could not be read; a request whose ``client_id`` cannot be read
gets no response, only the reasoner's log line). An ANSWER::

    {"instruction": "the black swan",        # the instruction as cleaned
     "anchor_ns": 1700000000033333333,       # the anchor frame's stamp
     "dense_ns": [...],                      # the lattice: the stamp of SEG embedding i, N >= 1 of them
     "sparse_ns": [...],                     # the sparse context frames' stamps (usually [])
     "seg": ARRAY (N, D),                    # the SEG embeddings, in lattice order
     "tak": ARRAY (D,),                      # TAK, from the MLLM
     "tak_prime": ARRAY (D,),                # TAK' = TAK fused with the SEGs by TDA: TKS decodes it
     "tda_weights": ARRAY (N,),              # TDA's softmax weights, one per dense frame
     "timings_s": {"clip_anchor": 0.01, "mllm_frame_tokens": 0.2, "mllm_prefill": 0.5, "tda": 0.001}}

a FAILURE is ``{"error": "why"}`` (say, no frame of ``stamps_ns`` is held by the reasoner). An
ARRAY is ``{"dtype": "float32", "shape": [...], "b64": "..."}``: the values in C order as
little-endian IEEE float32, standard base64 (RFC 4648, with padding). Timing keys are stage names
(seconds, finite numbers); a client must accept keys it does not know.

Parsing is strict (:func:`request_from_json`, :func:`response_from_json`): JSON as
:func:`~vrs_node.core.prompt_json.read_json` reads it (size: :data:`MAX_REQUEST_BYTES`,
:data:`MAX_RESPONSE_BYTES`; depth; finite numbers), every field present with its type and
nothing else, the ``version`` first: another version is refused with ``protocol version X, this
side speaks Y``. Every refusal is a :class:`ProtocolError` (a ``ValueError``) saying why.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

import numpy as np

from vrs_node.core.prompt_json import read_json, short

PROTOCOL_VERSION = 1
"""The version this side speaks; a message of another version is refused."""
MAX_REQUEST_BYTES = 131_072
"""Longest request read (UTF-8 bytes): 4,096 stamps and 16 instructions fit."""
MAX_RESPONSE_BYTES = 8_388_608
"""Longest response read: 16 answers of 4096-wide SEG embeddings over 16 frames fit."""
MAX_CLIENT_ID_CHARS = 128
MAX_INSTRUCTIONS = 16
"""Most instructions in one request."""
MAX_STAMPS = 4096
"""Most stamps in one request."""
REQUEST_FIELDS = ("version", "client_id", "request_id", "instructions", "stamps_ns")
ANSWER_FIELDS = ("instruction", "anchor_ns", "dense_ns", "sparse_ns", "seg", "tak", "tak_prime",
                 "tda_weights", "timings_s")
ARRAY_FIELDS = ("dtype", "shape", "b64")


class ProtocolError(ValueError):
    """A message refused; the text says why. ``client_id`` and ``request_id``: the message's own,
    when they could be read (None otherwise), so the refusal can be answered to its sender."""

    def __init__(self, reason: str, client_id: str | None = None, request_id: int | None = None):
        super().__init__(reason)
        self.client_id = client_id
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    """A grounding request (module docstring)."""

    client_id: str
    request_id: int
    instructions: list[str]
    stamps_ns: list[int]
    version: int = PROTOCOL_VERSION

    def to_json(self) -> str:
        """The request's wire text."""
        return json.dumps({"version": self.version, "client_id": self.client_id, "request_id": self.request_id,
                           "instructions": list(self.instructions), "stamps_ns": list(self.stamps_ns)})

    @staticmethod
    def from_json(text: str) -> Request:
        """:func:`request_from_json`."""
        return request_from_json(text)


@dataclass(frozen=True, eq=False)
class Answer:
    """One instruction's reasoning (module docstring: ANSWER); arrays float32, ``seg`` (N, D),
    ``tak`` and ``tak_prime`` (D,), ``tda_weights`` (N,), N = ``len(dense_ns)``."""

    instruction: str
    anchor_ns: int
    dense_ns: list[int]
    sparse_ns: list[int]
    seg: np.ndarray
    tak: np.ndarray
    tak_prime: np.ndarray
    tda_weights: np.ndarray
    timings_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("seg", "tak", "tak_prime", "tda_weights"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), np.float32))
        n, dims = len(self.dense_ns), self.seg.shape[1:] if self.seg.ndim == 2 else None
        if (self.seg.ndim != 2 or n < 1 or self.seg.shape[0] != n or self.tak.shape != dims
                or self.tak_prime.shape != dims or self.tda_weights.shape != (n,)):
            raise ProtocolError(f"answer shapes do not match {n} dense frames: seg {self.seg.shape}, tak "
                                f"{self.tak.shape}, tak_prime {self.tak_prime.shape}, tda_weights "
                                f"{self.tda_weights.shape} (seg (N, D), tak and tak_prime (D,), tda_weights (N,))")

    def to_object(self) -> dict:
        """The ANSWER object of the wire format."""
        return {"instruction": self.instruction, "anchor_ns": self.anchor_ns, "dense_ns": list(self.dense_ns),
                "sparse_ns": list(self.sparse_ns), "seg": encode_array(self.seg), "tak": encode_array(self.tak),
                "tak_prime": encode_array(self.tak_prime), "tda_weights": encode_array(self.tda_weights),
                "timings_s": dict(self.timings_s)}


@dataclass(frozen=True)
class Failure:
    """One instruction that could not be reasoned about, and why (module docstring: FAILURE)."""

    error: str

    def to_object(self) -> dict:
        """The FAILURE object of the wire format."""
        return {"error": self.error}


@dataclass(frozen=True)
class Response:
    """A response (module docstring): ``results`` (one per instruction of the request) or, for a
    request refused as a whole, ``error`` (then ``results`` is None); exactly one of the two."""

    client_id: str
    request_id: int | None
    results: list[Answer | Failure] | None = None
    error: str | None = None
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if (self.results is None) == (self.error is None):
            raise ProtocolError("a response has either results or an error")

    def to_json(self) -> str:
        """The response's wire text."""
        head = {"version": self.version, "client_id": self.client_id, "request_id": self.request_id}
        if self.error is not None:
            return json.dumps({**head, "error": self.error})
        return json.dumps({**head, "results": [r.to_object() for r in self.results]})

    @staticmethod
    def from_json(text: str) -> Response:
        """:func:`response_from_json`."""
        return response_from_json(text)


def encode_array(array: np.ndarray) -> dict:
    """An ARRAY object: ``array`` as float32 (a copy when it is not), C order, little-endian, base64."""
    values = np.ascontiguousarray(array, dtype="<f4")
    return {"dtype": "float32", "shape": list(values.shape), "b64": base64.b64encode(values.tobytes()).decode("ascii")}


def decode_array(data, what: str, ndim: int) -> np.ndarray:
    """The float32 array of an ARRAY object of ``ndim`` dimensions (``what`` names it in a refusal);
    refused: another dtype, a bad shape, base64 that is not standard or whose bytes do not fill the shape."""
    _exact_fields(data, ARRAY_FIELDS, what)
    if data["dtype"] != "float32":
        raise ProtocolError(f"{what} dtype must be \"float32\", got {short(data['dtype'])}")
    shape = data["shape"]
    if type(shape) is not list or len(shape) != ndim or not all(type(n) is int and 0 <= n < 2**31 for n in shape):
        raise ProtocolError(f"{what} shape must be {ndim} non-negative integers, got {short(shape)}")
    if type(data["b64"]) is not str:
        raise ProtocolError(f"{what} b64 must be a base64 string")
    try:
        raw = base64.b64decode(data["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{what} b64 is not standard base64") from None
    expected = 4 * int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise ProtocolError(f"{what} holds {len(raw)} bytes; shape {shape} of float32 needs {expected}")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


def request_from_json(text: str) -> Request:
    """A :class:`Request` from its wire text; :class:`ProtocolError` for anything but a request of
    this version exactly as the module docstring writes it."""
    data = _message(text, "request", MAX_REQUEST_BYTES)
    client_id, request_id = _identity(data)
    try:
        _exact_fields(data, REQUEST_FIELDS, "request")
        instructions, stamps = data["instructions"], data["stamps_ns"]
        if type(instructions) is not list or not 1 <= len(instructions) <= MAX_INSTRUCTIONS \
                or not all(type(t) is str for t in instructions):
            raise ProtocolError(f"instructions must be a list of 1..{MAX_INSTRUCTIONS} strings, "
                                f"got {short(instructions)}")
        if type(stamps) is not list or not 1 <= len(stamps) <= MAX_STAMPS:
            raise ProtocolError(f"stamps_ns must be a list of 1..{MAX_STAMPS} stamps, got {short(stamps)}")
        return Request(client_id, request_id, list(instructions), [_stamp(s, "stamps_ns") for s in stamps])
    except ProtocolError as exc:
        raise ProtocolError(str(exc), client_id, request_id) from None


def response_from_json(text: str, for_client: str | None = None) -> Response | None:
    """A :class:`Response` from its wire text; :class:`ProtocolError` for anything but a response
    of this version exactly as the module docstring writes it (array shapes matching their data
    and each other). ``for_client``: a response with another valid ``client_id`` is None, its
    results neither checked nor decoded (a client skips the others' answers cheaply)."""
    data = _message(text, "response", MAX_RESPONSE_BYTES)
    client_id, request_id = _identity(data, request_id_may_be_null=True)
    if for_client is not None and client_id != for_client:
        return None
    try:
        if "error" in data:
            _exact_fields(data, ("version", "client_id", "request_id", "error"), "response")
            if type(data["error"]) is not str:
                raise ProtocolError(f"response error must be a string, got {short(data['error'])}")
            return Response(client_id, request_id, error=data["error"])
        _exact_fields(data, ("version", "client_id", "request_id", "results"), "response")
        if type(data["results"]) is not list or not 1 <= len(data["results"]) <= MAX_INSTRUCTIONS:
            raise ProtocolError(f"results must be a list of 1..{MAX_INSTRUCTIONS} results")
        return Response(client_id, request_id, results=[_result(r) for r in data["results"]])
    except ProtocolError as exc:
        raise ProtocolError(str(exc), client_id, request_id) from None


def _message(text: str, what: str, max_bytes: int) -> dict:
    """The JSON object of a message of this version (fields not yet checked)."""
    if not isinstance(text, str):
        raise ProtocolError(f"a {what} must be text, got {type(text).__name__}")
    try:
        data = read_json(text, what, max_bytes=max_bytes)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    if not isinstance(data, dict):
        raise ProtocolError(f"a {what} must be a JSON object, got {short(data)}")
    version = data.get("version")
    if type(version) is not int:
        raise ProtocolError(f"{what} has no integer version (this side speaks protocol version "
                            f"{PROTOCOL_VERSION}), got {short(version)}", *_identity_or_none(data))
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}",
                            *_identity_or_none(data))
    return data


def check_client_id(client_id) -> None:
    """ProtocolError unless ``client_id`` is a client id as the wire format says."""
    if _identity_or_none({"client_id": client_id})[0] is None:
        raise ProtocolError(f"client_id must be a string of 1..{MAX_CLIENT_ID_CHARS} characters, "
                            f"got {short(client_id)}")


def _identity(data: dict, request_id_may_be_null: bool = False) -> tuple[str, int | None]:
    """(client_id, request_id) of a message; refused when they are not as the wire format says."""
    client_id, request_id = _identity_or_none(data)
    if client_id is None:
        check_client_id(data.get("client_id"))  # refused, saying why
    if request_id is None and not (request_id_may_be_null and data.get("request_id", 0) is None):
        raise ProtocolError(f"request_id must be an integer in [0, 2^63), got {short(data.get('request_id'))}",
                            client_id)
    return client_id, request_id


def _identity_or_none(data: dict) -> tuple[str | None, int | None]:
    """The message's client_id and request_id where they are valid, None for each that is not."""
    client_id, request_id = data.get("client_id"), data.get("request_id")
    if type(client_id) is not str or not 1 <= len(client_id) <= MAX_CLIENT_ID_CHARS:
        client_id = None
    if type(request_id) is not int or not 0 <= request_id < 2**63:
        request_id = None
    return client_id, request_id


def _exact_fields(data, fields: tuple[str, ...], what: str) -> None:
    """Refused unless ``data`` is a JSON object with exactly ``fields``."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {short(data)}")
    missing, unknown = [f for f in fields if f not in data], sorted(data.keys() - set(fields))
    if missing or unknown:
        raise ProtocolError(f"{what} fields must be exactly {', '.join(fields)}; "
                            f"missing {missing or 'none'}, unknown {short(unknown) if unknown else 'none'}")


def _stamp(value, what: str) -> int:
    """A stamp: a JSON integer in [0, 2^63)."""
    if type(value) is not int or not 0 <= value < 2**63:
        raise ProtocolError(f"{what} must hold integers in [0, 2^63) (nanoseconds), got {short(value)}")
    return value


def _stamps(value, what: str) -> list[int]:
    if type(value) is not list:
        raise ProtocolError(f"{what} must be a list of stamps, got {short(value)}")
    return [_stamp(v, what) for v in value]


def _result(data) -> Answer | Failure:
    """One ANSWER or FAILURE object."""
    if isinstance(data, dict) and "error" in data:
        _exact_fields(data, ("error",), "failure")
        if type(data["error"]) is not str:
            raise ProtocolError(f"failure error must be a string, got {short(data['error'])}")
        return Failure(data["error"])
    _exact_fields(data, ANSWER_FIELDS, "answer")
    if type(data["instruction"]) is not str:
        raise ProtocolError(f"answer instruction must be a string, got {short(data['instruction'])}")
    timings = data["timings_s"]
    if not isinstance(timings, dict) or not all(type(v) in (int, float) for v in timings.values()):
        raise ProtocolError(f"timings_s must be an object of numbers (seconds), got {short(timings)}")
    return Answer(instruction=data["instruction"], anchor_ns=_stamp(data["anchor_ns"], "anchor_ns"),
                  dense_ns=_stamps(data["dense_ns"], "dense_ns"), sparse_ns=_stamps(data["sparse_ns"], "sparse_ns"),
                  seg=decode_array(data["seg"], "seg", 2), tak=decode_array(data["tak"], "tak", 1),
                  tak_prime=decode_array(data["tak_prime"], "tak_prime", 1),
                  tda_weights=decode_array(data["tda_weights"], "tda_weights", 1),
                  timings_s={k: float(v) for k, v in timings.items()})
