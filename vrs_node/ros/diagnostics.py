"""What the node reports on ``/diagnostics`` (diagnostic_msgs/DiagnosticArray), ROS-message free.

:class:`HealthMonitor` collects per-frame results and query reports from any thread and, once per
reporting period, turns them into one status: a level, a message and key/value pairs:

- ``input_rate_hz`` = frames pushed during the period / its length; ``processed_rate_hz`` and
  ``dropped`` likewise (``dropped`` counts the period's drops);
- ``image_publishers``: publishers matched on the camera topic now ("" when not subscribed);
- ``hot_path_latency_p50_ms`` / ``_max_ms`` over the period's results;
- ``frame_errors``: frames of the period that failed; ``last_frame_error``: stamp and reason of the
  latest failed frame since the start ("" when none);
- ``query_latency_ms`` of the last grounding query, ``queries`` and ``query_errors`` in all,
  ``superseded`` (answers discarded: their target's instruction changed, or it was removed, while
  the query ran), ``catchup_frames`` (frames tracked by catch-ups) and ``prepared_catchup_frames``
  (those of them tracked on the grounding thread, off the hot path), in all,
  ``last_query_error`` (the error of the last query of the current instruction, "" when it
  succeeded) and ``query_running_s`` (how long the query in progress has run, "" when none runs);
- ``time_to_first_target_s``: from the monitor's creation (the node's start) to its first result
  with status ``tracking`` ("" before it);
- ``model_profile``, ``device``, ``instruction``, ``target_present`` (the last result's mask);
- ``targets``: the number of targets followed now (instructions and prompts); ``tracking_calls``:
  the batched SAM-2 tracking calls of the last frame that tracked targets from memory (one per up
  to ``target_batch`` targets whose memories have the same size: more calls than
  ``ceil(targets / target_batch)`` means targets whose memories do not align yet);
- ``reasoner``: ``local`` or ``remote:<namespace>``; with a remote one also ``reasoner_connected``,
  ``reasoner_requests``, ``reasoner_timeouts``, ``reasoner_refused`` (responses refused),
  ``reasoner_late``, ``reasoner_failures`` (instructions it failed), ``reasoner_last_fault``.

Level and message, the first that applies: ERROR when the model failed to load; OK with the reason
when the node is not processing by design (an inactive lifecycle node); WARN when no frame arrived
during the period (with the number of camera publishers), when frames failed during the period
(their number and the last reason), when a remote reasoner failed its last request (no reasoner
listening, a timeout, a refused response: tracking goes on, it is retried with backoff), or when the
last grounding query failed (its error: tracking goes on, the query is retried at the next
trigger); OK with the last frame's status otherwise.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from vrs_node.core.queries import QueryReport
from vrs_node.core.results import STATUS_ERROR, STATUS_TRACKING, EngineStats, FrameResult

OK, WARN, ERROR = 0, 1, 2
DIAGNOSTICS_PERIOD_S = 1.0
"""Seconds between two ``/diagnostics`` messages of a node (``vrs-node``, ``vrs-reasoner``): the
reporting period its status speaks of."""


@dataclass(frozen=True)
class Health:
    """One diagnostics status: ``level`` (OK/WARN/ERROR), ``message`` and string ``values``."""

    level: int
    message: str
    values: dict[str, str]


class HealthMonitor:
    """Thread-safe collector of results and query reports; :meth:`report` closes a period."""

    def __init__(self, profile: str, device: str):
        self.profile, self.device = profile, device
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._last: FrameResult | None = None
        self._last_error: str | None = None
        self._query: QueryReport | None = None
        self._started = self._since = time.monotonic()
        self._first_target_s: float | None = None
        self._counts = (0, 0, 0, 0)

    def on_result(self, result: FrameResult) -> None:
        with self._lock:
            self._latencies.append(result.latency_s)
            self._last = result
            if result.status == STATUS_ERROR:
                self._last_error = f"stamp {result.stamp_ns}: {result.reason}"
            if result.status == STATUS_TRACKING and self._first_target_s is None:
                self._first_target_s = time.monotonic() - self._started

    def on_query(self, report: QueryReport) -> None:
        with self._lock:
            self._query = report

    def report(self, stats: EngineStats | None, instruction: str | None, model_error: str | None,
               inactive: str | None = None, image_publishers: int | None = None,
               query_running_s: float | None = None, targets: int = 0, tracking_calls: int = 0,
               reasoner: dict | None = None) -> Health:
        """The status of the period since the previous call (see the module docstring);
        ``inactive`` is why the node is not processing by design (a lifecycle state), if it is not;
        ``image_publishers`` the publishers on the camera topic (None: not subscribed);
        ``query_running_s`` how long the grounding query in progress has run (None: none runs);
        ``targets`` the number of targets followed, ``tracking_calls`` the last frame's batched
        tracking calls; ``reasoner``: the ``status`` message's
        (:func:`~vrs_node.ros.status.reasoner_status`), None for a local reasoner."""
        now = time.monotonic()
        with self._lock:
            latencies, self._latencies = self._latencies, []
            last, last_error, query, first_target = self._last, self._last_error, self._query, self._first_target_s
            period, self._since = max(now - self._since, 1e-9), now
            counts = (stats.pushed, stats.processed, stats.dropped, stats.errors) if stats is not None \
                else (0, 0, 0, 0)
            # A new engine (lifecycle re-activation) counts from 0 again: its counts are the period's.
            restarted = any(now_count < before for now_count, before in zip(counts, self._counts))
            delta = counts if restarted else np.subtract(counts, self._counts)
            (pushed, processed, dropped, errors), self._counts = delta, counts
        # A failed query counts until the next query of the same instruction (a new one starts afresh).
        query_error = query.error if query is not None and query.instruction.text == instruction else None
        values = {
            "model_profile": self.profile, "device": self.device, "instruction": instruction or "",
            "input_rate_hz": f"{pushed / period:.2f}", "processed_rate_hz": f"{processed / period:.2f}",
            "dropped": str(int(dropped)),
            "image_publishers": str(image_publishers) if image_publishers is not None else "",
            "hot_path_latency_p50_ms": f"{np.median(latencies) * 1e3:.1f}" if latencies else "",
            "hot_path_latency_max_ms": f"{max(latencies) * 1e3:.1f}" if latencies else "",
            "frame_errors": str(int(errors)),
            "last_frame_error": last_error or "",
            "query_latency_ms": f"{query.latency_s * 1e3:.1f}" if query is not None else "",
            **{key: str(getattr(stats, key) if stats is not None else 0)
               for key in ("queries", "query_errors", "superseded", "catchup_frames", "prepared_catchup_frames")},
            "last_query_error": query_error or "",
            "query_running_s": f"{query_running_s:.1f}" if query_running_s is not None else "",
            "time_to_first_target_s": f"{first_target:.2f}" if first_target is not None else "",
            "target_present": str(bool(last is not None and last.mask.any())).lower(),
            "targets": str(targets), "tracking_calls": str(tracking_calls),
            **_reasoner_values(reasoner),
        }
        if model_error:
            return Health(ERROR, model_error, values)
        if inactive:
            return Health(OK, inactive, values)
        if not pushed:
            publishers = f" ({image_publishers} publishers on the camera topic)" if image_publishers is not None else ""
            return Health(WARN, f"no image received in the last period{publishers}", values)
        if errors:  # (in live mode the failed frame's result may still be on its way: no reason yet)
            reason = f"; the last: {last_error}" if last_error is not None else ""
            return Health(WARN, f"{int(errors)} frame(s) failed in the last period{reason}", values)
        if reasoner and reasoner.get("consecutive_failures"):
            return Health(WARN, f"reasoner {reasoner['namespace']}: {reasoner.get('last_fault')}; tracking goes on, "
                          "requests are retried with backoff", values)
        if query_error is not None:
            return Health(WARN, f"grounding query ({query.trigger}) failed: {query_error}; tracking goes on, "
                          "the query is retried at the next trigger", values)
        return Health(OK, last.status if last is not None else "receiving images", values)


def _reasoner_values(reasoner: dict | None) -> dict[str, str]:
    """The ``reasoner*`` values (module docstring) of a remote reasoner's status, or of a local one (None)."""
    if not reasoner:
        return {"reasoner": "local"}
    values = {"reasoner": f"remote:{reasoner['namespace']}", "reasoner_connected": str(reasoner["connected"]).lower()}
    for key in ("requests", "timeouts", "refused", "late", "failures"):
        values[f"reasoner_{key}"] = str(reasoner.get(key, 0))
    values["reasoner_last_fault"] = reasoner.get("last_fault") or ""
    return values
