"""What the node says on ``status`` (JSON objects) and ``/diagnostics``, built from the engine's
results; the node only publishes them.

Every ``status`` message is one of :func:`frame_status`, :func:`query_status`,
:func:`prompt_status`, :func:`error_status` or the reply to a ``targets`` command or to the
``instructions`` parameter (``"event": "targets"``, :mod:`vrs_node.core.target_commands`), with
:func:`context` (model, device, precision, the reasoner's place and link, the engine's counters
and instruction) added to it.
"""

from __future__ import annotations

import dataclasses

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from vrs_node.core.queries import QueryReport
from vrs_node.core.remote_reasoner import RemoteStats
from vrs_node.core.results import EngineStats, FrameResult
from vrs_node.ros.diagnostics import Health


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 2)


def frame_status(result: FrameResult) -> dict:
    """A processed frame: its stamp, frame_id and index, ``status``, ``reason``, ``object_score``,
    ``target_present`` (the union mask is not empty), ``latency_ms``, ``targets`` (one
    :meth:`~vrs_node.core.target_specs.TargetReport.to_dict` per target, ids ascending) and, when
    the stream jumped or changed size, ``notice``."""
    fields = {"stamp_ns": result.stamp_ns, "frame_id": result.frame_id, "frame_index": result.index,
              "status": result.status, "reason": result.reason, "object_score": result.object_score,
              "target_present": bool(result.mask.any()), "latency_ms": _ms(result.latency_s),
              "targets": [t.to_dict() for t in result.targets]}
    if result.notice:
        fields["notice"] = result.notice
    return fields


def query_status(report: QueryReport) -> dict:
    """A finished grounding query (``"event": "query"``): the target's id, trigger, instruction,
    applied, latency and either ``status`` ``grounded`` with the keyframe and stage timings (and,
    when not applied, a ``reason``: the answer of a superseded instruction is discarded), or
    ``error`` with the reason."""
    fields = {"event": "query", "target_id": report.target_id, "trigger": report.trigger,
              "instruction": report.instruction.text, "applied": report.applied, "latency_ms": _ms(report.latency_s)}
    if report.error is not None:
        fields.update(status="error", reason=f"grounding failed: {report.error}; tracking goes on, "
                                             "the query is retried at the next trigger")
    else:
        g = report.grounding
        fields.update(status="grounded", keyframe_stamp_ns=g.keyframe_stamp_ns, keyframe_object_score=g.object_score,
                      timings_ms={k: _ms(v) for k, v in g.timings_s.items()})
        if not report.applied:
            fields["reason"] = ("answer discarded: the target's instruction changed, or the target was removed, "
                                "while the query ran")
    return fields


def prompt_status(status: str, reason: str, stamp_ns: int | None, notice: str | None = None) -> dict:
    """A prompt (``"event": "prompt"``): ``status`` ``error`` (refused) or ``accepted`` (accepted with
    a ``notice``), ``reason`` and the prompt's own ``stamp_ns`` (None: it has none or is unreadable)."""
    fields = {"event": "prompt", "status": status, "reason": reason, "stamp_ns": stamp_ns}
    if notice is not None:
        fields["notice"] = notice
    return fields


def error_status(reason: str, stamp_ns: int | None = None, frame_id: str | None = None) -> dict:
    """A refused message or a fault: ``status`` ``error``, ``reason`` and, for an image, its stamp
    and frame_id."""
    fields = {"status": "error", "reason": reason}
    if stamp_ns is not None:
        fields.update(stamp_ns=stamp_ns, frame_id=frame_id)
    return fields


def context(profile: str, device: str, precision: str | None, stats: EngineStats | None,
            instruction: str | None, reasoner: dict | None = None) -> dict:
    """The fields every ``status`` message carries: ``model_profile``, ``device``, ``precision``
    (None before the models load), ``reasoner`` (:func:`reasoner_status`, when given) and, while an
    engine runs (``stats`` not None), its counters and ``instruction`` (None when none is followed)."""
    fields = {"model_profile": profile, "device": device, "precision": precision}
    if reasoner is not None:
        fields["reasoner"] = reasoner
    if stats is not None:
        fields.update(pushed=stats.pushed, processed=stats.processed, dropped=stats.dropped, errors=stats.errors,
                      queries=stats.queries, query_errors=stats.query_errors, superseded=stats.superseded,
                      catchup_frames=stats.catchup_frames, prepared_catchup_frames=stats.prepared_catchup_frames,
                      time_jumps=stats.time_jumps, resolution_changes=stats.resolution_changes,
                      instruction=instruction)
    return fields


def reasoner_status(namespace: str | None, stats: RemoteStats | None) -> dict:
    """Where the reasoner runs: ``{"mode": "local"}`` (``namespace`` None), or ``{"mode": "remote",
    "namespace": ..., "connected": ...}`` with the remote link's counters (``stats``:
    :class:`~vrs_node.core.remote_reasoner.RemoteStats`, None before the engine runs)."""
    if namespace is None:
        return {"mode": "local"}
    fields = {"mode": "remote", "namespace": namespace, "connected": bool(stats is not None and stats.connected)}
    if stats is not None:
        fields.update(dataclasses.asdict(stats))
    return fields


def diagnostic_array(health: Health, name: str, hardware_id: str, stamp) -> DiagnosticArray:
    """``/diagnostics``'s message of one period: one DiagnosticStatus ``name`` with ``health``'s level,
    message and values (:mod:`vrs_node.ros.diagnostics`), stamped ``stamp`` (builtin_interfaces/Time)."""
    status = DiagnosticStatus(level=bytes([health.level]), name=name, message=health.message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=v) for k, v in health.values.items()])
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
