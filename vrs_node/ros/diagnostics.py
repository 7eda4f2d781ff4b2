"""What the node reports on ``/diagnostics`` (diagnostic_msgs/DiagnosticArray), ROS-message free.

:class:`HealthMonitor` collects per-frame results and query reports from any thread and, once per
reporting period, turns them into one status: a level, a message and key/value pairs:

- ``input_rate_hz`` = frames pushed during the period / its length; ``processed_rate_hz`` and
  ``dropped`` likewise (``dropped`` counts the period's drops);
- ``hot_path_latency_p50_ms`` / ``_max_ms`` over the period's results;
- ``query_latency_ms`` of the last grounding query and ``queries`` in all;
- ``model_profile``, ``device``, ``instruction``, ``target_present`` (the last result's mask).

Level: ERROR when the model failed to load; OK with the reason when the node is not processing by
design (an inactive lifecycle node); WARN when no frame arrived during the period or the last
frame's status is ``error``; OK otherwise.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from vrs_node.core.engine import STATUS_ERROR, EngineStats, FrameResult, QueryReport

OK, WARN, ERROR = 0, 1, 2


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
        self._query: QueryReport | None = None
        self._since = time.monotonic()
        self._counts = (0, 0, 0)

    def on_result(self, result: FrameResult) -> None:
        with self._lock:
            self._latencies.append(result.latency_s)
            self._last = result

    def on_query(self, report: QueryReport) -> None:
        with self._lock:
            self._query = report

    def report(self, stats: EngineStats | None, instruction: str | None, model_error: str | None,
               inactive: str | None = None) -> Health:
        """The status of the period since the previous call (see the module docstring);
        ``inactive`` is why the node is not processing by design (a lifecycle state), if it is not."""
        now = time.monotonic()
        with self._lock:
            latencies, self._latencies = self._latencies, []
            last, query = self._last, self._query
            period, self._since = max(now - self._since, 1e-9), now
            counts = (stats.pushed, stats.processed, stats.dropped) if stats is not None else (0, 0, 0)
            (pushed, processed, dropped), self._counts = np.subtract(counts, self._counts), counts
        values = {
            "model_profile": self.profile, "device": self.device, "instruction": instruction or "",
            "input_rate_hz": f"{pushed / period:.2f}", "processed_rate_hz": f"{processed / period:.2f}",
            "dropped": str(int(dropped)),
            "hot_path_latency_p50_ms": f"{np.median(latencies) * 1e3:.1f}" if latencies else "",
            "hot_path_latency_max_ms": f"{max(latencies) * 1e3:.1f}" if latencies else "",
            "query_latency_ms": f"{query.latency_s * 1e3:.1f}" if query is not None else "",
            "queries": str(stats.queries if stats is not None else 0),
            "target_present": str(bool(last is not None and last.mask.any())).lower(),
        }
        if model_error:
            return Health(ERROR, model_error, values)
        if inactive:
            return Health(OK, inactive, values)
        if not pushed:
            return Health(WARN, "no image received in the last period", values)
        if last is not None and last.status == STATUS_ERROR:
            return Health(WARN, f"last frame failed: {last.reason}", values)
        return Health(OK, last.status if last is not None else "receiving images", values)
