"""Ending a command whose worker thread is still inside a model call.

A grounding query cannot be interrupted inside torch: :meth:`StreamingEngine.close` waits for it at
most its ``timeout_s`` (:func:`join_workers`), then leaves the thread running (a daemon thread).
Python's exit does not wait for daemon threads, and when such a thread comes back from torch's C++
code after the interpreter began finalising, it is ended with ``pthread_exit``, whose unwinding
through C++ frames aborts the whole process ("terminate called without an active exception": exit
status 134, a core dump; ``ros2 launch`` reports the node died). So the console commands end
through :func:`safe_exit_code`: with no worker thread of ours left, it returns their exit code as
it is; with one still running, it ends the process at once with that code (``os._exit``, after
flushing logging and stdio), skipping the finalisation; by then the command has destroyed its nodes
and closed its files, so nothing is lost but the query in progress.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

WORKER_PREFIX = "vrs-"
"""The names of this package's worker threads start with this (``vrs-tracking``,
``vrs-grounding``, ``vrs-grounding-periodic``, ``vrs-reasoner``, the commands' spin threads)."""

log = logging.getLogger(__name__)


def join_workers(threads: Sequence[threading.Thread], timeout_s: float) -> bool:
    """Join ``threads`` within ``timeout_s`` in all; True when every one ended, else False with a
    warning naming those still running (inside a model call: they end on their own)."""
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    running = [thread.name for thread in threads if thread.is_alive()]
    if running:
        log.warning("%s still running %.0f s after the stop (inside a model call)", ", ".join(running), timeout_s)
    return not running


def running_workers() -> list[str]:
    """The names of this package's worker threads still alive (:data:`WORKER_PREFIX`)."""
    return [t.name for t in threading.enumerate() if t.is_alive() and t.name.startswith(WORKER_PREFIX)]


def safe_exit_code(code: int) -> int:
    """``code``, for the command to return, when none of this package's worker threads is still
    running; otherwise the process ends here with ``code`` (module docstring), and this does not
    return."""
    busy = running_workers()
    if not busy:
        return code
    log.warning("exiting without waiting for %s: still inside a model call", ", ".join(busy))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
