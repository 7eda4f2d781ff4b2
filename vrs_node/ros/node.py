"""The ROS 2 adapter over :class:`vrs_node.core.engine.StreamingEngine`: a plain node
(:class:`VrsNode`, ``vrs-node``) and a lifecycle node (:class:`VrsLifecycleNode`,
``vrs-lifecycle-node``) with the same interface.

Interface (all names relative, so they can be remapped):

- sub ``image`` (sensor_msgs/Image), or with ``image_transport:=compressed`` ``<image>/compressed``
  (sensor_msgs/CompressedImage, JPEG/PNG; ``<image>`` is the resolved, remapped ``image`` topic, as
  image_transport names it); sensor-data QoS by default, overridable with ROS 2's
  ``qos_overrides.<topic>.subscription.*`` parameters; an incompatible-QoS match is logged and
  reported on ``status`` with the fix;
- sub ``prompt`` (std_msgs/String, JSON): ``{"box": [x0, y0, x1, y1]}`` and/or
  ``{"points": [[x, y], ...], "labels": [1, 0, ...]}`` in camera pixels, optionally
  ``"stamp_ns"`` to place the prompt on a past frame still in the window (then catch up);
- sub ``instruction`` (std_msgs/String; reliable, transient-local, so a late-joining node gets
  the last one): the language instruction to follow (an empty string stops following it);
- parameter ``instruction`` (runtime-settable): the same through ROS 2's parameter service, which
  answers success or the reason of a refusal (``ros2 param set /vrs_node instruction "..."``);
- srv ``reset`` (std_srvs/Trigger): forget the target and the instruction;
- pub ``mask`` (sensor_msgs/Image mono8 0/255, the input frame's header);
- pub ``overlay`` (sensor_msgs/Image rgb8, the input frame with the mask blended in, its header):
  computed only while someone subscribes;
- pub ``status`` (std_msgs/String, JSON): status, reason, object score, latency, counters,
  instruction, model profile and device, per processed frame (with ``notice`` when the stream
  jumped back in time or changed resolution), per grounding query (``"event": "query"`` with its
  trigger, keyframe and stage timings) and on every error;
- pub ``/diagnostics`` (diagnostic_msgs/DiagnosticArray, every second): rates, drops, latencies,
  profile, device, target present (:mod:`vrs_node.ros.diagnostics`).

Lifecycle (:class:`VrsLifecycleNode`): ``configure`` loads the models (a failure is logged and the
transition fails); ``activate`` builds the engine and subscribes; ``deactivate`` unsubscribes, drops
the engine (frames, features, tracker memory, query caches), moves the weights to host memory and
empties the accelerator's cache; ``cleanup`` releases the models and publishers. Its ``main`` makes
the configure and activate transitions itself unless ``autostart`` is false.

Bad input (an unsupported encoding, a malformed image or prompt, a model that failed to load) is
logged and reported on ``status``; the node keeps running.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import threading

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind,
                       qos_profile_sensor_data)
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from vrs_node.core.engine import MODES, EngineConfig, FrameResult, QueryReport, StreamingEngine
from vrs_node.core.grounder import Grounder, GrounderConfig
from vrs_node.core.tracker import PointsPrompt, StreamingTracker
from vrs_node.models.profiles import (LoadedModels, get_profile, load_models, release_accelerator_memory,
                                      resolve_device)
from vrs_node.ros.diagnostics import HealthMonitor
from vrs_node.ros.image import (ImageConversionError, compressed_msg_to_rgb, image_msg_to_rgb, mask_to_msg,
                                ns_to_stamp, overlay_mask, rgb_to_msg, stamp_to_ns)

RELIABLE_5 = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""QoS of the ``instruction`` topic: the last instruction reaches subscribers that start later."""
RUNTIME_ENGINE_PARAMETERS = ("score_threshold", "period_s", "lost_after_frames")
DIAGNOSTICS_PERIOD_S = 1.0
IMAGE_TRANSPORTS = ("raw", "compressed")


def prompt_from_json(text: str) -> tuple[PointsPrompt, int | None]:
    """Parse a ``prompt`` message: (PointsPrompt, stamp_ns or None). ValueError says what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"prompt is not JSON: {exc}") from None
    if not isinstance(data, dict) or not ({"box", "points"} & data.keys()):
        raise ValueError('prompt must be a JSON object with "box" and/or "points" (+ "labels")')
    unknown = data.keys() - {"box", "points", "labels", "stamp_ns"}
    if unknown:
        raise ValueError(f"unknown prompt fields: {sorted(unknown)}")
    try:
        box = None
        if "box" in data:
            box = tuple(float(v) for v in data["box"])
            if not np.isfinite(box).all():
                raise ValueError("prompt coordinates must be finite numbers")
            if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
                raise ValueError(f"box must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {data['box']}")
        points = labels = None
        if "points" in data or "labels" in data:
            if "points" not in data or "labels" not in data:
                raise ValueError('"points" and "labels" must be given together')
            points = np.asarray(data.get("points"), dtype=np.float32)
            labels = np.asarray(data.get("labels"), dtype=np.int32)
            if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
                raise ValueError(f"labels must be a list of 0 (negative) / 1 (positive), got {data.get('labels')}")
        stamp = data.get("stamp_ns")
        if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, int)):
            raise ValueError(f"stamp_ns must be an integer, got {stamp!r}")
        if points is not None and not np.isfinite(points).all():
            raise ValueError("prompt coordinates must be finite numbers")
        return PointsPrompt(points=points, labels=labels, box=box), stamp
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid prompt: {exc}") from None


def qos_fix(topic: str, policy: QoSPolicyKind, side: str) -> str:
    """How to fix an incompatible-QoS match on ``topic`` where this node is the ``side``
    ("subscription" or "publisher") and ``policy`` is the last incompatible policy."""
    name = qos_policy_name_from_kind(policy)
    override = f"qos_overrides.{topic}.{side}"
    if policy == QoSPolicyKind.RELIABILITY and side == "subscription":
        return (f"the publisher is best effort and this subscription reliable: publish reliable "
                f"(vrs-camera --reliable) or run the node with -p {override}.reliability:=best_effort")
    if policy == QoSPolicyKind.RELIABILITY:
        return f"a subscriber asks for reliable delivery: run the node with -p {override}.reliability:=reliable"
    if policy == QoSPolicyKind.DURABILITY and side == "publisher":
        return f"a subscriber asks for transient_local durability: subscribe volatile to {topic}"
    return f"make the {name} policies of both sides match (-p {override}.<policy>:=... on this node)"


class RosLogHandler(logging.Handler):
    """Forwards the Python log records of the ROS-free core (loggers ``vrs_node.*``) to a node's
    ROS logger, so each appears once, formatted like the node's own lines, and reaches /rosout."""

    def __init__(self, ros_logger):
        super().__init__()
        self._ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            log = self._ros_logger.error
        elif record.levelno >= logging.WARNING:
            log = self._ros_logger.warning
        elif record.levelno >= logging.INFO:
            log = self._ros_logger.info
        else:
            log = self._ros_logger.debug
        log(f"{record.name}: {self.format(record)}")


class _VrsInterface:
    """The node's ROS interface over the engine, shared by :class:`VrsNode` and
    :class:`VrsLifecycleNode` (mixed into an rclpy ``Node``). Its stages: ``_setup`` (parameters,
    diagnostics), ``_open_outputs``, ``_load_models``, ``_start`` (engine, subscriptions,
    service), ``_stop``, ``_close_outputs``."""

    def _setup(self) -> None:
        self._declare_parameters()
        for name, allowed in (("mode", MODES), ("image_transport", IMAGE_TRANSPORTS)):
            if self._param(name) not in allowed:
                raise ValueError(f"parameter {name} must be one of {', '.join(allowed)}; got {self._param(name)!r}")
        self.models: LoadedModels | None = None
        self.engine: StreamingEngine | None = None
        self.model_error: str | None = None
        self.profile_name = self.get_parameter("model_profile").value
        self.device = self.get_parameter("device").value
        self._status_lock = threading.Lock()
        self._inputs: list = []
        self._outputs: list = []
        self._log_handler = RosLogHandler(self.get_logger())
        core_logger = logging.getLogger("vrs_node")
        core_logger.addHandler(self._log_handler)
        core_logger.propagate = False  # not also through a root handler a library may have set up
        self.health = HealthMonitor(self.profile_name, self.device)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_5)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _declare_parameters(self) -> None:
        def desc(text, read_only=True, **ranges):
            return ParameterDescriptor(description=text, read_only=read_only, **ranges)

        self.declare_parameter("model_profile", "tiny-random", desc(
            "model profile (vrs_node.models.profiles): tiny-random, hiera-t-512-random, sam2.1-hiera-t, ..."))
        self.declare_parameter("device", "auto", desc("torch device: auto, cpu, cuda, cuda:1, ..."))
        self.declare_parameter("image_size", 0, desc(
            "SAM-2 input resolution in pixels (multiple of 32); 0 = the profile's",
            integer_range=[IntegerRange(from_value=0, to_value=2048, step=32)]))
        self.declare_parameter("sam2_checkpoint", "", desc("SAM-2 checkpoint file for checkpoint profiles"))
        self.declare_parameter("image_transport", "raw", desc(
            "raw: sensor_msgs/Image on image; compressed: sensor_msgs/CompressedImage on <image>/compressed"))
        self.declare_parameter("mode", "live", desc(
            "live: newest frame wins on a tracking thread; sync: every received frame is processed"))
        self.declare_parameter("window_frames", 16, desc(
            "frames (and their features) kept for catch-up", integer_range=[IntegerRange(from_value=1, to_value=1000)]))
        self.declare_parameter("max_cond_frames", 4, desc(
            "conditioning frames kept in SAM-2 memory", integer_range=[IntegerRange(from_value=1, to_value=64)]))
        self.declare_parameter("max_catchup_frames", 16, desc(
            "most buffered frames tracked when catching up (strided beyond)",
            integer_range=[IntegerRange(from_value=1, to_value=1000)]))
        self.declare_parameter("score_threshold", 0.0, desc(
            "object-score logit at or below which the target counts as absent", read_only=False,
            floating_point_range=[FloatingPointRange(from_value=-50.0, to_value=50.0)]))
        self.declare_parameter("instruction", "", desc(
            "language instruction to follow ('' = none); also settable on the instruction topic",
            read_only=False))
        self.declare_parameter("period_s", 10.0, desc(
            "re-ground the instruction every period_s seconds of camera time (0 = never)", read_only=False,
            floating_point_range=[FloatingPointRange(from_value=0.0, to_value=3600.0)]))
        self.declare_parameter("lost_after_frames", 15, desc(
            "re-ground after this many processed frames without the target (0 = never)", read_only=False,
            integer_range=[IntegerRange(from_value=0, to_value=10000)]))
        self.declare_parameter("sparse_frames", 0, desc(
            "pooled context frames over the window given to the MLLM besides the dense lattice (0 = VRS-HQ)",
            integer_range=[IntegerRange(from_value=0, to_value=64)]))
        self.declare_parameter("vrshq_checkpoint", "", desc(
            "directory of the released VRS-HQ weights (profile vrshq-7b)"))
        self.declare_parameter("clip_anchor", "openai", desc(
            "open_clip weights of the CLIP ViT-L-14-336 anchor scorer (profile vrshq-7b): a tag or a file"))

    def _param(self, name: str):
        return self.get_parameter(name).value

    # --- stages ------------------------------------------------------------------------------
    def _open_outputs(self, create_publisher) -> None:
        """``mask``, ``overlay`` and ``status`` publishers made by ``create_publisher`` (a plain or
        a lifecycle publisher factory), each logging an incompatible-QoS match with its fix."""
        def publisher(msg_type, topic):
            handler = self._incompatible_qos_handler(self.resolve_topic_name(topic), "publisher")
            events = PublisherEventCallbacks(incompatible_qos=handler)
            pub = create_publisher(msg_type, topic, RELIABLE_5, event_callbacks=events)
            self._outputs.append(pub)
            return pub

        self.mask_pub = publisher(Image, "mask")
        self.overlay_pub = publisher(Image, "overlay")
        self.status_pub = publisher(String, "status")

    def _close_outputs(self) -> None:
        for pub in self._outputs:
            self.destroy_publisher(pub)
        self._outputs.clear()

    def _load_models(self) -> bool:
        """Load the profile's models on the device; on failure keep the reason in ``model_error``."""
        try:
            profile = get_profile(self.profile_name)
            device = resolve_device(self.device)
            self.models = load_models(profile, device, image_size=self._param("image_size") or None,
                                      sam2_checkpoint=self._param("sam2_checkpoint") or None,
                                      vrshq_checkpoint=self._param("vrshq_checkpoint") or None,
                                      clip_anchor=self._param("clip_anchor"))
        except Exception as exc:  # noqa: BLE001 -- any load failure is reported, the node stays up
            self.model_error = f"model could not be loaded: {type(exc).__name__}: {exc}"
            self.get_logger().error(self.model_error)
            return False
        self.model_error = None
        self.device = self.health.device = str(device)
        weights = "RANDOM weights: masks prove plumbing only, not segmentation quality" if profile.random_weights \
            else f"checkpoint {self._param('vrshq_checkpoint') or self._param('sam2_checkpoint')}"
        language = "follows instructions" if self.models.grounding is not None else "prompts only (no language model)"
        self.get_logger().info(
            f"model profile {profile.name!r} ({profile.description}) on {self.device}, "
            f"{self.models.transform.image_size} px, {weights}; mode {self._param('mode')}; {language}")
        return True

    def _start(self) -> None:
        """Build the engine over the loaded models (if any) and open the inputs."""
        if self.models is not None:
            tracker = StreamingTracker(self.models.sam2, self.models.transform,
                                       max_cond_frames=self._param("max_cond_frames"), **self.models.tracker_options)
            grounder = None
            if self.models.grounding is not None:
                g = self.models.grounding
                grounder = Grounder(g.mllm, g.tokenizer, g.anchor_scorer, tracker,
                                    GrounderConfig(sparse_frames=self._param("sparse_frames")))
            config = EngineConfig(mode=self._param("mode"), window_frames=self._param("window_frames"),
                                  max_catchup_frames=self._param("max_catchup_frames"),
                                  **{name: self._param(name) for name in RUNTIME_ENGINE_PARAMETERS})
            self.engine = StreamingEngine(tracker, config, on_result=self._publish_result, grounder=grounder,
                                          on_query=self._publish_query)
            self._apply_instruction(self._param("instruction"))
        self._inputs += [self._subscribe_image(),
                         self.create_subscription(String, "prompt", self._on_prompt, RELIABLE_5),
                         self.create_subscription(String, "instruction", self._on_instruction, LATCHED),
                         self.create_service(Trigger, "reset", self._on_reset)]

    def _stop(self) -> None:
        """Close the inputs, stop the engine and drop its state (frames, features, memory)."""
        for entity in self._inputs:
            if isinstance(entity, rclpy.service.Service):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        self._inputs.clear()
        if self.engine is not None:
            self.engine.close()
            self.engine = None
            release_accelerator_memory(self.device)

    def destroy_node(self) -> None:
        """Stop the tracking thread and the log forwarding before the node goes away."""
        self._stop()
        core_logger = logging.getLogger("vrs_node")
        core_logger.removeHandler(self._log_handler)
        core_logger.propagate = not core_logger.handlers
        super().destroy_node()

    def _subscribe_image(self):
        """The camera input of the ``image_transport`` parameter (see the module docstring)."""
        transport = self._param("image_transport")
        if transport == "compressed":
            msg_type, topic = CompressedImage, self.resolve_topic_name("image") + "/compressed"
        else:
            msg_type, topic = Image, "image"
        events = SubscriptionEventCallbacks(
            incompatible_qos=self._incompatible_qos_handler(self.resolve_topic_name(topic), "subscription"))
        # A copy: rclpy applies qos_overrides to the profile object it is given, in place, which
        # would make every later user of the shared qos_profile_sensor_data in this process reliable.
        return self.create_subscription(msg_type, topic, self._on_image, copy.copy(qos_profile_sensor_data),
                                        qos_overriding_options=QoSOverridingOptions.with_default_policies(),
                                        event_callbacks=events)

    def _incompatible_qos_handler(self, topic: str, side: str):
        def handle(event) -> None:
            reason = (f"incompatible QoS on {topic} ({qos_policy_name_from_kind(event.last_policy_kind)}): "
                      f"nothing flows between this {side} and that peer; fix: "
                      f"{qos_fix(topic, event.last_policy_kind, side)}")
            self.get_logger().error(reason)
            self._report_error(None, reason)
        return handle

    # --- callbacks ---------------------------------------------------------------------------
    def _on_set_parameters(self, params) -> SetParametersResult:
        """Apply runtime parameters; a refused instruction is answered with the reason."""
        for param in params:
            if param.name == "instruction":
                error = self._apply_instruction(param.value)
                if error:
                    return SetParametersResult(successful=False, reason=error)
            elif param.name in RUNTIME_ENGINE_PARAMETERS and self.engine is not None:
                try:
                    self.engine.config = dataclasses.replace(self.engine.config, **{param.name: param.value})
                except ValueError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_instruction(self, text: str) -> str | None:
        """Follow ``text`` ('' stops following); returns the reason of a refusal, or None. Without
        an engine (an inactive lifecycle node) the parameter is kept and applied at activation."""
        if not text:
            if self.engine is not None and self.engine.instruction is not None:
                self.engine.clear_prompt()
                self.get_logger().info("instruction cleared")
            return None
        if self.engine is None:
            return self.model_error
        try:
            instruction = self.engine.set_instruction(text)
        except (ValueError, RuntimeError) as exc:
            self.get_logger().warning(f"instruction refused: {exc}")
            self._report_error(None, f"instruction refused: {exc}")
            return str(exc)
        note = " (reserved token text in it was neutralised)" if instruction.neutralised else ""
        self.get_logger().info(f"following instruction {instruction.text!r}{note}")
        return None

    def _on_instruction(self, msg: String) -> None:
        self._apply_instruction(msg.data)

    def _on_image(self, msg) -> None:
        engine = self.engine
        if engine is None:
            self._report_error(msg.header, self.model_error)
            return
        try:
            image = compressed_msg_to_rgb(msg) if isinstance(msg, CompressedImage) else image_msg_to_rgb(msg)
        except ImageConversionError as exc:
            self.get_logger().warning(f"image refused: {exc}", throttle_duration_sec=5.0)
            self._report_error(msg.header, f"image refused: {exc}")
            return
        result = engine.push(image, stamp_to_ns(msg.header.stamp), msg.header.frame_id)
        if result is not None:
            self._publish_result(result)

    def _on_prompt(self, msg: String) -> None:
        try:
            prompt, stamp_ns = prompt_from_json(msg.data)
        except ValueError as exc:
            self.get_logger().warning(str(exc))
            self._report_error(None, str(exc))
            return
        if self.engine is None:
            self._report_error(None, self.model_error)
            return
        self.engine.set_prompt(prompt, stamp_ns=stamp_ns)
        self.get_logger().info(f"prompt accepted: {msg.data}")

    def _on_reset(self, request, response):
        if self.engine is None:
            response.success, response.message = False, self.model_error
        else:
            self.engine.clear_prompt()
            response.success, response.message = True, "target and instruction forgotten; waiting for a prompt"
        return response

    # --- outputs -----------------------------------------------------------------------------
    def _publish_result(self, result: FrameResult) -> None:
        """Publish the mask (with the input frame's stamp and frame_id), the overlay if anyone
        subscribes, and the status."""
        self.health.on_result(result)
        header = Header(stamp=ns_to_stamp(result.stamp_ns), frame_id=result.frame_id)
        self.mask_pub.publish(mask_to_msg(result.mask, header))
        if self.overlay_pub.get_subscription_count() > 0:
            self.overlay_pub.publish(rgb_to_msg(overlay_mask(result.image, result.mask), header))
        fields = {"stamp_ns": result.stamp_ns, "frame_id": result.frame_id, "frame_index": result.index,
                  "status": result.status, "reason": result.reason, "object_score": result.object_score,
                  "target_present": bool(result.mask.any()), "latency_ms": round(result.latency_s * 1e3, 2)}
        if result.notice:  # the engine logs it
            fields["notice"] = result.notice
        self._publish_status(fields)

    def _publish_query(self, report: QueryReport) -> None:
        """Status message for a finished grounding query."""
        self.health.on_query(report)
        fields = {"event": "query", "trigger": report.trigger, "instruction": report.instruction.text,
                  "applied": report.applied, "latency_ms": round(report.latency_s * 1e3, 2)}
        if report.error is not None:
            fields.update(status="error", reason=f"grounding failed: {report.error}")
        else:
            g = report.grounding
            fields.update(status="grounded", keyframe_stamp_ns=g.keyframe_stamp_ns,
                          keyframe_object_score=g.object_score,
                          timings_ms={k: round(v * 1e3, 2) for k, v in g.timings_s.items()})
        self._publish_status(fields)

    def _publish_diagnostics(self) -> None:
        engine = self.engine
        instruction = engine.instruction if engine is not None else None
        health = self.health.report(engine.stats if engine is not None else None,
                                    instruction.text if instruction is not None else None, self.model_error,
                                    self._inactive_reason())
        status = DiagnosticStatus(level=bytes([health.level]), name=f"{self.get_name()}: segmentation",
                                  message=health.message, hardware_id=self.device,
                                  values=[KeyValue(key=k, value=v) for k, v in health.values.items()])
        self.diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                                     status=[status]))

    def _inactive_reason(self) -> str | None:
        """Why the node does not process images by design (None: it should be processing)."""
        return None

    def _report_error(self, header, reason: str) -> None:
        status = {"status": "error", "reason": reason}
        if header is not None:
            status.update(stamp_ns=stamp_to_ns(header.stamp), frame_id=header.frame_id)
        self._publish_status(status)

    def _publish_status(self, fields: dict) -> None:
        engine = self.engine
        fields.update(model_profile=self.profile_name, device=self.device)
        if engine is not None:
            stats, instruction = engine.stats, engine.instruction
            fields.update(pushed=stats.pushed, processed=stats.processed, dropped=stats.dropped,
                          errors=stats.errors, queries=stats.queries, query_errors=stats.query_errors,
                          time_jumps=stats.time_jumps, resolution_changes=stats.resolution_changes,
                          instruction=instruction.text if instruction is not None else None)
        with self._status_lock:
            if self._outputs:
                self.status_pub.publish(String(data=json.dumps(fields)))


class VrsNode(_VrsInterface, Node):
    """Camera frames in, a mask per processed frame out (see the module docstring); the models are
    loaded in the constructor, and a load failure is reported on every frame's status."""

    def __init__(self, **kwargs):
        Node.__init__(self, "vrs_node", **kwargs)
        self._setup()
        self._open_outputs(self.create_publisher)
        self._load_models()
        self._start()


class VrsLifecycleNode(_VrsInterface, LifecycleNode):
    """The same node as a managed (lifecycle) node; see the module docstring for the transitions."""

    def __init__(self, **kwargs):
        LifecycleNode.__init__(self, "vrs_node", **kwargs)
        self.declare_parameter("autostart", True, ParameterDescriptor(
            description="vrs-lifecycle-node's main configures and activates the node itself", read_only=True))
        self._setup()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._open_outputs(self.create_lifecycle_publisher)
        if not self._load_models():
            self._close_outputs()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.models.to(self.device)
        self._start()
        self.get_logger().info("active: processing images")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self.models.to("cpu")
        release_accelerator_memory(self.device)
        self.get_logger().info("inactive: engine state dropped, weights in host memory")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.models = None
        release_accelerator_memory(self.device)
        self._close_outputs()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self.models = None
        self._close_outputs()
        return TransitionCallbackReturn.SUCCESS

    def _inactive_reason(self) -> str | None:
        state = self._state_machine.current_state[1]  # (id, label); rclpy has no public getter
        return None if state == "active" else f"lifecycle state {state}: not processing images"


def _spin(node) -> None:
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def main(args=None) -> None:
    """Console entry point ``vrs-node`` (``ros2 run vrs_node vrs_node`` on a ROS 2 install)."""
    rclpy.init(args=args)
    _spin(VrsNode())


def lifecycle_main(args=None) -> None:
    """Console entry point ``vrs-lifecycle-node`` (``ros2 run vrs_node vrs_lifecycle_node``):
    configures and activates itself unless ``autostart`` is false (then a lifecycle manager or
    ``ros2 lifecycle set`` drives it)."""
    rclpy.init(args=args)
    node = VrsLifecycleNode()
    if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
        node.trigger_activate()
    _spin(node)
