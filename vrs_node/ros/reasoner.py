"""``vrs-reasoner`` (``ros2 run vrs_node vrs_reasoner``): the reasoner (CLIP anchor, MLLM, TDA) as its
own ROS 2 node, answering grounding requests from trackers elsewhere (``vrs-node`` with
``reasoner:=remote:<namespace>``: :mod:`vrs_node.ros.remote`). It loads no SAM-2.

Interface (relative names, remappable; the node's name is ``vrs_reasoner``):

- sub ``image`` (sensor_msgs/Image), or with ``image_transport:=compressed`` ``<image>/compressed``
  (sensor_msgs/CompressedImage, decoded at full size); sensor-data QoS, overridable with
  ``qos_overrides.<topic>.subscription.*``. The last ``window_frames`` frames are held, keyed by
  stamp, with their reasoner inputs (CLIP anchor embedding, MLLM frame tokens) computed once each;
- sub ``~/requests`` (std_msgs/String, JSON, reliable): grounding requests;
- pub ``~/responses`` (std_msgs/String, JSON, reliable): one response per request, carrying the
  request's client id and request id; every client sees every response and keeps its own;
- pub ``/diagnostics`` (diagnostic_msgs/DiagnosticArray, every second, in every lifecycle state):
  one status ``<node name>: reasoner`` (:func:`reasoner_health`) with the service's counters.

The wire format is :mod:`vrs_node.core.reasoner_protocol`'s (README "Reasoner on another machine");
batching, refusals and the worker thread are :mod:`vrs_node.core.reasoner_service`'s. Requests
are answered on that worker thread, so the callbacks never wait on a model. A bad image is
logged and dropped. A model that fails to load stops the node at start (exit code 1).

Lifecycle (:class:`ReasonerLifecycleNode`, ``vrs-lifecycle-reasoner``, ``ros2 run vrs_node
vrs_lifecycle_reasoner``): ``configure`` loads the models, ``activate`` subscribes with an empty
window, ``deactivate`` unsubscribes and drops the frames and waiting requests, ``cleanup`` releases
the models; its command (:mod:`vrs_node.ros.entry_points`) configures and activates it unless
``autostart`` is false.

Parameters: the model settings of ``vrs-node`` (``model_profile``, ``device``, ``precision``, ...),
``window_frames``, ``max_batch``, ``batch_wait_s``, ``sparse_frames``, ``image_transport``,
``max_image_pixels``.
"""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from std_msgs.msg import String

from vrs_node.core.config import ReasonerConfig
from vrs_node.core.reasoner_service import MAX_PENDING, ReasonerService, ReasonerStats, build_reasoner_grounder
from vrs_node.io.image import stamp_to_ns
from vrs_node.models.config import ModelConfig
from vrs_node.models.profiles import load_configured_models
from vrs_node.ros.cli import STOP_WAIT_S
from vrs_node.ros.diagnostics import DIAGNOSTICS_PERIOD_S, ERROR, OK, WARN, Health
from vrs_node.ros.image_input import decode_image, subscribe_image
from vrs_node.ros.params import IMAGE_TRANSPORTS, declare_parameters, read_config, reasoner_parameters
from vrs_node.ros.qos import PROTOCOL_QOS, RELIABLE_5
from vrs_node.ros.status import diagnostic_array

__all__ = ["ReasonerNode", "ReasonerLifecycleNode", "reasoner_health"]


def reasoner_health(stats: ReasonerStats, previous: ReasonerStats, held: int, capacity: int,
                    inactive: str | None = None, model_error: str | None = None) -> Health:
    """The reasoner's ``/diagnostics`` status for the period since ``previous`` (the counters at
    the period's start, of the same service; zeros for a new one): the counters, ``window_frames``
    (``held``/``capacity``) and, the first that applies: ERROR with ``model_error`` (the models
    did not load); OK with ``inactive`` (not answering by design: a lifecycle state); WARN when
    requests were refused or instructions failed in the period (their number and the last error)
    or when at least half of :data:`MAX_PENDING` requests are waiting; OK otherwise."""
    values = {"window_frames": f"{held}/{capacity}", "requests": str(stats.requests),
              "answered": str(stats.answered), "refused": str(stats.refused),
              "instructions_answered": str(stats.instructions_answered), "failures": str(stats.failures),
              "batches": str(stats.batches), "largest_batch": str(stats.largest_batch),
              "mean_batch": f"{stats.mean_batch:.2f}", "pending": str(stats.pending), "last_error": stats.last_error}
    if model_error:
        return Health(ERROR, model_error, values)
    if inactive:
        return Health(OK, inactive, values)
    refused, failed = stats.refused - previous.refused, stats.failures - previous.failures
    problems = [f"{n} {what} in the last period" for n, what in ((refused, "request(s) refused"),
                                                                  (failed, "instruction(s) failed")) if n]
    if problems:
        problems[-1] += f" (the last error: {stats.last_error})"
    if stats.pending >= MAX_PENDING / 2:
        problems.append(f"{stats.pending} requests waiting (with {MAX_PENDING} waiting, new ones are refused)")
    if problems:
        return Health(WARN, "; ".join(problems), values)
    return Health(OK, f"answering requests ({held} frames held)", values)


class ReasonerInterface:
    """The reasoner's ROS interface in stages (parameters, model load, start, stop) for
    :class:`ReasonerNode` and :class:`ReasonerLifecycleNode` (module docstring)."""

    def _declare(self, lifecycle: bool = False) -> None:
        """Declare the parameters (:func:`reasoner_parameters`, then ``autostart`` for the
        ``lifecycle`` node) and start the diagnostics; ValueError for an ``image_transport`` off
        its choices."""
        declare_parameters(self, lifecycle, reasoner_parameters())
        if self._param("image_transport") not in IMAGE_TRANSPORTS:
            raise ValueError(f"parameter image_transport must be one of {', '.join(IMAGE_TRANSPORTS)}; "
                             f"got {self._param('image_transport')!r}")
        self.service, self._inputs = None, []
        self.grounder, self.model_error = None, None
        self._period_start: tuple[ReasonerService | None, ReasonerStats] = (None, ReasonerStats())
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_5)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)

    def _publish_diagnostics(self) -> None:
        """Close a diagnostics period: one status on ``/diagnostics`` (:func:`reasoner_health`)."""
        service = self.service
        stats = service.stats if service is not None else ReasonerStats()
        before, previous = self._period_start
        self._period_start = (service, stats)
        health = reasoner_health(stats, previous if before is service else ReasonerStats(),
                                 len(service.window) if service is not None else 0,
                                 self._param("window_frames"), self._inactive_reason(), self.model_error)
        self.diagnostics_pub.publish(diagnostic_array(health, f"{self.get_name()}: reasoner", self._param("device"),
                                                      self.get_clock().now().to_msg()))

    def _inactive_reason(self) -> str | None:
        """Why the node does not answer requests by design (None: it should be answering)."""
        return None

    def _param(self, name: str):
        return self.get_parameter(name).value

    def _load(self) -> None:
        """Load the reasoner's models only (no SAM-2: ``parts="reasoner"``) and build the grounder;
        ValueError saying why they did not load."""
        self.config = read_config(ReasonerConfig, self._param)
        try:
            profile, device, models = load_configured_models(read_config(ModelConfig, self._param), parts="reasoner")
            self.grounder = build_reasoner_grounder(models, self.config.sparse_frames)
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"the models did not load: {exc}") from exc
        self.get_logger().info(f"reasoner models: {profile.name} on {device}, {models.precision}")

    def _start(self) -> None:
        """A fresh service (an empty window) fed by the camera and ``~/requests``, its worker running."""
        self.service = ReasonerService(self.grounder, self.config.window_frames, self.config.max_batch,
                                       lambda text: self.responses.publish(String(data=text)),
                                       log=self.get_logger().warning, batch_wait_s=self.config.batch_wait_s)
        self._max_pixels = self._param("max_image_pixels")
        self._inputs = [
            self.create_subscription(String, "~/requests", lambda msg: self.service.submit(msg.data), PROTOCOL_QOS),
            subscribe_image(self, self._param("image_transport"), self._on_image)]
        self.service.start()
        self.get_logger().info(f"reasoner ready: requests on {self.resolve_topic_name('~/requests')}")

    def _stop(self) -> None:
        """Unsubscribe and end the service (its frames and waiting requests dropped)."""
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs = []
        if self.service is not None:
            self.service.stop(STOP_WAIT_S)
            self.service = None

    def _on_image(self, msg) -> None:
        """Hold one camera frame; a bad one is logged and dropped."""
        try:
            image, camera_hw = decode_image(msg, self._max_pixels)
            self.service.add_frame(image, stamp_to_ns(msg.header.stamp), msg.header.frame_id, camera_hw)
        except ValueError as exc:
            self.get_logger().warning(f"image dropped: {exc}")

    def destroy_node(self) -> None:
        self._stop()
        super().destroy_node()


class ReasonerNode(ReasonerInterface, Node):
    """The reasoner server (module docstring); the models load in the constructor (a failure raises
    ValueError, which the command reports as ``cannot start``, exit code 1)."""

    def __init__(self, **kwargs):
        Node.__init__(self, "vrs_reasoner", **kwargs)
        self._declare()
        self._load()
        self.responses = self.create_publisher(String, "~/responses", PROTOCOL_QOS)
        self._start()


class ReasonerLifecycleNode(ReasonerInterface, LifecycleNode):
    """The same server as a managed node: ``configure`` loads the models (a failure is logged and
    the transition fails), ``activate`` starts a fresh service and subscribes, ``deactivate``
    unsubscribes and drops the service (frames, waiting requests; the weights stay loaded),
    ``cleanup`` releases the models."""

    def __init__(self, **kwargs):
        LifecycleNode.__init__(self, "vrs_reasoner", **kwargs)
        self._declare(lifecycle=True)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._load()
        except ValueError as exc:
            self.model_error = str(exc)
            self.get_logger().error(self.model_error)
            return TransitionCallbackReturn.FAILURE
        self.model_error = None
        self.responses = self.create_lifecycle_publisher(String, "~/responses", PROTOCOL_QOS)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._start()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.grounder = None
        self.destroy_lifecycle_publisher(self.responses)
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        return TransitionCallbackReturn.SUCCESS

    def _inactive_reason(self) -> str | None:
        """Not active (no service): "unconfigured" (models not loaded) or "inactive" (loaded)."""
        if self.service is not None:
            return None
        if self.grounder is None:
            return "unconfigured: the models are not loaded, no request is answered"
        return "inactive: the models are loaded, no request is answered until activated"
