"""What the ROS console commands (``vrs-node``, ``vrs-lifecycle-node``, ``vrs-camera``, ``vrs-view``,
``vrs-demo``) share: a clean stop, exit code 0, on SIGINT and SIGTERM; and :class:`SpinThread`, an
executor spun on a thread of its own that stops cleanly.

rclpy's own signal handlers shut the ROS context down the moment a signal arrives, whatever the
process is doing: a frame being tracked on another thread then fails to publish, and what ends the
spin depends on how the signal came (``KeyboardInterrupt``, or ``ExternalShutdownException`` for
SIGTERM and for a SIGINT that the parent ignored, as a shell does for background jobs), so a
command could exit 1 with a traceback. Inside :func:`ros_command` rclpy installs no handlers; the
first SIGINT or SIGTERM is a :class:`StopSignal`, later ones are ignored, and the ROS context stays
up until the command has stopped its threads and destroyed its nodes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.1
"""Longest wait of :meth:`StopSignal.spin` between two looks at the stop signal."""
STOP_WAIT_S = 3.0
"""Longest wait of a stopping node for the frame, query or reasoning batch in progress: below the
5 s ``ros2 launch`` leaves between SIGINT and SIGTERM (``sigterm_timeout``; SIGKILL follows 5 s
later), so a node stopped during a long query still exits on its own
(:mod:`vrs_node.core.process_exit`)."""


class StopSignal:
    """The first SIGINT or SIGTERM of a :func:`ros_command` block; ``name`` is ``"SIGINT"`` or
    ``"SIGTERM"`` once it came (None before), and later signals are ignored.

    By default it raises ``KeyboardInterrupt("stopped by SIGINT")`` in the main thread at once (to
    cut short, say, a model load). Inside :meth:`deferred` it only sets ``name``, and the loop there
    ends on it: an exception raised while rclpy converts a message (a callback loop does that all
    the time) can come out of rclpy as another error."""

    def __init__(self):
        self.name: str | None = None
        self._deferred = False

    def _handle(self, signum: int, frame) -> None:
        if self.name is None:
            self.name = signal.Signals(signum).name
            if not self._deferred:
                raise KeyboardInterrupt(f"stopped by {self.name}")

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block in which the signal only sets ``name``; the block's loop must look at it (a
        Python signal handler runs only between bytecodes, so a ROS wait there needs a timeout)."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    def spin(self, node) -> None:
        """Run ``node``'s callbacks in this thread until the signal comes; the callback in progress
        is finished first. Waits at most :data:`POLL_S` at a time (``rclpy.spin`` waits forever)."""
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            with self.deferred():
                while self.name is None:
                    executor.spin_once(timeout_sec=POLL_S)
        finally:
            executor.shutdown()


class SpinThread:
    """``executor`` spun on a daemon thread (``name``) until :meth:`stop`, which ends the loop
    between two callbacks (so shutting the executor down never races a ``spin_once``), joins the
    thread and then shuts the executor down. The loop also ends when the executor's ROS context
    is shut down (an error of ``spin_once`` while stopping or shut down ends it quietly). A
    callback's exception ends the loop unless ``on_error`` is given: then it is called with the
    exception and the loop goes on."""

    def __init__(self, executor, name: str, on_error=None):
        self.executor = executor
        self._on_error = on_error
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self.thread.join(timeout_s)
        self.executor.shutdown()

    def _spin(self) -> None:
        context = self.executor.context
        while not self._stop.is_set() and rclpy.ok(context=context):
            try:
                self.executor.spin_once(timeout_sec=POLL_S)
            except Exception as exc:  # noqa: BLE001 -- on_error decides; shutdown ends the loop
                if self._stop.is_set() or not rclpy.ok(context=context):
                    return
                if self._on_error is None:
                    raise
                self._on_error(exc)


@contextlib.contextmanager
def ros_command(args: list[str] | None = None) -> Iterator[StopSignal]:
    """``rclpy.init(args=args)`` for the ``with`` block, without rclpy's signal handlers; yields the
    block's :class:`StopSignal`. The caller catches its ``KeyboardInterrupt`` (or ends its
    :meth:`~StopSignal.deferred` loop), destroys its nodes (the context is still up) and exits 0.
    Leaving the block shuts rclpy down (a signal meanwhile is ignored) and restores the signal
    handlers found on entry. Call it from the main thread (``signal.signal`` requires it)."""
    stop = StopSignal()
    previous = {number: signal.signal(number, stop._handle) for number in STOP_SIGNALS}
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        yield stop
    finally:
        stop._deferred = True
        rclpy.try_shutdown()
        for number, handler in previous.items():
            signal.signal(number, handler)
