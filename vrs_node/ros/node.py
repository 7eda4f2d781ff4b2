"""The ROS 2 adapter over :class:`vrs_node.core.engine.StreamingEngine`: a plain node
(:class:`VrsNode`, ``vrs-node``) and a lifecycle node (:class:`VrsLifecycleNode`,
``vrs-lifecycle-node``) with the same interface.

Interface (all names relative, so they can be remapped):

- sub ``image`` (sensor_msgs/Image), or with ``image_transport:=compressed`` ``<image>/compressed``
  (sensor_msgs/CompressedImage, JPEG/PNG; ``<image>`` is the resolved, remapped ``image`` topic, as
  image_transport names it; a JPEG is decoded at the smallest scale covering the model input
  while ``overlay`` has no subscriber, at full size otherwise, and masks always have the camera's
  size); sensor-data QoS by default, overridable with ROS 2's
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
  instruction, model profile, device and precision, per processed frame (with ``notice`` when the stream
  jumped back in time or changed resolution), per grounding query (``"event": "query"`` with its
  trigger, keyframe and stage timings) and on every error;
- pub ``/diagnostics`` (diagnostic_msgs/DiagnosticArray, every second): rates, drops, latencies,
  failed frames and queries, the query in progress, camera publishers, time to the first target,
  profile, device, target present (:mod:`vrs_node.ros.diagnostics`).

Lifecycle (:class:`VrsLifecycleNode`): ``configure`` loads the models (a failure is logged and the
transition fails); ``activate`` builds the engine and subscribes; ``deactivate`` unsubscribes, drops
the engine (frames, features, tracker memory, query caches), moves the weights to host memory and
empties the accelerator's cache; ``cleanup`` releases the models and publishers. Its ``main`` makes
the configure and activate transitions itself unless ``autostart`` is false.

Bad input (an unsupported encoding, a malformed image or prompt, an image above
``max_image_pixels``, a prompt with more than ``max_prompt_points`` points, off the image or
stamped for no frame in the window, a model that failed to load) is logged and reported on
``status`` (a prompt's at once, as ``"event": "prompt"`` with the prompt's stamp); it changes
nothing and the node keeps running. README "Bad input and odd streams" lists every refusal.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import re
import sys
import textwrap
import threading
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import QoSPolicyKind, qos_policy_name_from_kind, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from vrs_node.core.config import ENGINE_MODES, PipelineConfig
from vrs_node.core.engine import FrameResult, QueryReport, StreamingEngine
from vrs_node.core.pipeline import build_pipeline
from vrs_node.core.prompt_json import DEFAULT_MAX_PROMPT_POINTS, PromptRefused, prompt_from_json, short
from vrs_node.models.config import ModelConfig, settings
from vrs_node.io.image import (DEFAULT_MAX_IMAGE_PIXELS, ImageConversionError, compressed_msg_to_rgb,
                               image_msg_to_rgb, mask_to_msg, ns_to_stamp, overlay_mask, rgb_to_msg, stamp_to_ns)
from vrs_node.models.profiles import LoadedModels, load_configured_models, release_accelerator_memory
from vrs_node.ros.cli import ros_command
from vrs_node.ros.diagnostics import HealthMonitor
from vrs_node.ros.qos import LATCHED, RELIABLE_5

RUNTIME_ENGINE_PARAMETERS = tuple(s.name for s in settings(PipelineConfig) if s.runtime)
DIAGNOSTICS_PERIOD_S = 1.0
IMAGE_TRANSPORTS = ("raw", "compressed")


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
        self.models: LoadedModels | None = None
        self.engine: StreamingEngine | None = None
        self.model_error: str | None = None
        self.profile_name = self.get_parameter("model_profile").value
        self.device = self.get_parameter("device").value
        self._status_lock = threading.Lock()
        self._inputs: list = []
        self._outputs: list = []
        self._log_handler = RosLogHandler(self.get_logger())
        # Checked once what destroy_node needs exists (rclpy destroys a refused node at shutdown) and
        # before anything outlives the node (the core logger's handler).
        for name, allowed in (("mode", ENGINE_MODES), ("image_transport", IMAGE_TRANSPORTS)):
            if self._param(name) not in allowed:
                raise ValueError(f"parameter {name} must be one of {', '.join(allowed)}; got {self._param(name)!r}")
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
        self.declare_parameter("precision", "auto", desc(
            "fp32 | bf16 | auto (bf16 on CUDA, fp32 elsewhere): bf16 = SAM-2 under autocast, MLLM bf16 weights"))
        self.declare_parameter("compile", False, desc(
            "torch.compile SAM-2's parts as sam2's vos_optimized does (for CUDA; the first frames compile)"))
        self.declare_parameter("reasoner_quantization", "none", desc(
            "none | int8 | nf4: the MLLM's LLaMA quantized with bitsandbytes (for GPUs short of memory)"))
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
        self.declare_parameter("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS, desc(
            "images with more pixels (width x height) are refused; compressed ones before decoding",
            integer_range=[IntegerRange(from_value=1, to_value=1_000_000_000)]))
        self.declare_parameter("max_prompt_points", DEFAULT_MAX_PROMPT_POINTS, desc(
            "prompts with more points are refused",
            integer_range=[IntegerRange(from_value=1, to_value=1000)]))
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
            config = ModelConfig(**{s.name: self._param(s.name) for s in settings(ModelConfig)})
            profile, device, self.models = load_configured_models(config)
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
            f"{self.models.transform.image_size} px, {self.models.precision}"
            f"{', compiled' if self.models.compiled else ''}"
            f"{', reasoner ' + self.models.reasoner_quantization if self.models.reasoner_quantization != 'none' else ''}"
            f", {weights}; mode {self._param('mode')}; {language}")
        return True

    def _start(self) -> None:
        """Build the engine over the loaded models (if any) and open the inputs."""
        if self.models is not None:
            config = PipelineConfig(**{s.name: self._param(s.name) for s in settings(PipelineConfig)})
            self.engine = build_pipeline(self.models, config, on_result=self._publish_result,
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
        """Convert and push a camera frame; a refused one (``vrs_node.io.image``, images above
        ``max_image_pixels`` included) gets an error status with its stamp and reason.

        A JPEG is decoded at the smallest reduced scale that still covers SAM-2's input
        (:func:`~vrs_node.io.image.compressed_msg_to_rgb` with the transform's ``valid_size``)
        and pushed with the camera size from its header, so masks stay at camera size; while the
        ``overlay`` topic has subscribers it is decoded at full size (the overlay blends the mask
        into the full image)."""
        engine = self.engine
        if engine is None:
            self._report_error(msg.header, self.model_error)
            return
        max_pixels = self._param("max_image_pixels")
        try:
            if isinstance(msg, CompressedImage):
                reduce = self.overlay_pub.get_subscription_count() == 0
                image, camera_hw = compressed_msg_to_rgb(
                    msg, max_pixels, engine.tracker.transform.valid_size if reduce else None)
            else:
                image, camera_hw = image_msg_to_rgb(msg, max_pixels), None
        except ImageConversionError as exc:
            self.get_logger().warning(f"image refused: {exc}", throttle_duration_sec=5.0)
            self._report_error(msg.header, f"image refused: {exc}")
            return
        result = engine.push(image, stamp_to_ns(msg.header.stamp), msg.header.frame_id, camera_hw)
        if result is not None:
            self._publish_result(result)

    def _on_prompt(self, msg: String) -> None:
        """Parse (:func:`~vrs_node.core.prompt_json.prompt_from_json`) and set a prompt (the engine
        checks its stamp and its place in the image at once). A refused prompt changes nothing;
        its reason goes on ``status`` at once. A box clipped to the image is said so there too."""
        try:
            prompt, stamp_ns = prompt_from_json(msg.data, self._param("max_prompt_points"))
        except PromptRefused as exc:
            self._report_prompt("error", f"prompt refused: {exc}", exc.stamp_ns)
            return
        engine = self.engine
        if engine is None:
            self._report_error(None, self.model_error)
            return
        try:
            notice = engine.set_prompt(prompt, stamp_ns=stamp_ns)
        except ValueError as exc:
            self._report_prompt("error", f"prompt refused: {exc}", stamp_ns)
            return
        if notice:
            self._report_prompt("accepted", "prompt accepted (clipped)", stamp_ns, notice=notice)
        self.get_logger().info(f"prompt accepted: {short(msg.data)}" + (f"; {notice}" if notice else ""))

    def _report_prompt(self, status: str, reason: str, stamp_ns: int | None, **fields) -> None:
        """One ``status`` message about a prompt: ``"event": "prompt"``, ``status`` (``error``:
        refused, ``accepted``: accepted with a ``notice``), ``reason`` and the prompt's own
        ``stamp_ns`` (None when it has none or it could not be read); a refusal is also logged."""
        if status == "error":
            self.get_logger().warning(reason, throttle_duration_sec=5.0)
        self._publish_status({"event": "prompt", "status": status, "reason": reason, "stamp_ns": stamp_ns, **fields})

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
        subscribes, and the status. A frame decoded at a reduced scale (received before the
        overlay had a subscriber: :meth:`_on_image`) gets no overlay."""
        self.health.on_result(result)
        header = Header(stamp=ns_to_stamp(result.stamp_ns), frame_id=result.frame_id)
        self.mask_pub.publish(mask_to_msg(result.mask, header))
        if self.overlay_pub.get_subscription_count() > 0 and result.image.shape[:2] == result.mask.shape:
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
            fields.update(status="error", reason=f"grounding failed: {report.error}; tracking goes on, "
                                                 "the query is retried at the next trigger")
        else:
            g = report.grounding
            fields.update(status="grounded", keyframe_stamp_ns=g.keyframe_stamp_ns,
                          keyframe_object_score=g.object_score,
                          timings_ms={k: round(v * 1e3, 2) for k, v in g.timings_s.items()})
        self._publish_status(fields)

    def _publish_diagnostics(self) -> None:
        """Close a diagnostics period: one DiagnosticStatus on ``/diagnostics`` (see HealthMonitor)."""
        engine = self.engine
        instruction = engine.instruction if engine is not None else None
        camera = next((s for s in self._inputs if getattr(s, "msg_type", None) in (Image, CompressedImage)), None)
        health = self.health.report(engine.stats if engine is not None else None,
                                    instruction.text if instruction is not None else None, self.model_error,
                                    self._inactive_reason(),
                                    image_publishers=camera.get_publisher_count() if camera is not None else None,
                                    query_running_s=engine.query_elapsed_s if engine is not None else None)
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
        fields.update(model_profile=self.profile_name, device=self.device,
                      precision=self.models.precision if self.models is not None else None)
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


ROS_ARGUMENTS_HELP = """\
ROS arguments go after --ros-args: -p NAME:=VALUE sets a parameter, --params-file FILE.yaml sets
many (config/vrs_node.yaml, installed in share/vrs_node/config/), -r FROM:=TO remaps a topic (also
__ns:=/NAMESPACE, __node:=NAME). For example:

  {prog} --ros-args -p model_profile:=tiny-random -p mode:=sync -r image:=/camera/image_raw
  {prog} --ros-args --params-file config/vrs_node.yaml -r __ns:=/vrs -p instruction:="the black swan"
  ros2 run vrs_node {executable} --ros-args -p device:=cuda     (on a ROS 2 install)
"""
"""The end of a node's ``--help`` (:func:`_help_parser`)."""


class _ParameterTable:
    """Stands in for a node in :meth:`_VrsInterface._declare_parameters` to list the parameters
    (name, default, descriptor), in declaration order, without starting ROS."""

    def __init__(self):
        self.rows: list[tuple[str, object, ParameterDescriptor]] = []

    def declare_parameter(self, name: str, value, descriptor: ParameterDescriptor) -> None:
        self.rows.append((name, value, descriptor))


def _help_parser(prog: str, lifecycle: bool) -> argparse.ArgumentParser:
    """The command-line parser of a node: its help is the module docstring (what the node does, its
    topics, services and lifecycle), every parameter with its default and description, and how to
    pass ROS arguments."""
    table = _ParameterTable()
    _VrsInterface._declare_parameters(table)
    parameters = ["parameters (README \"Topics, services, parameters\"; all of them, commented, in "
                  "config/vrs_node.yaml):"]
    for name, value, descriptor in table.rows:
        settable = "" if descriptor.read_only else ", runtime-settable"
        parameters.append(f"  {name} (default {value!r}{settable})")
        parameters += textwrap.wrap(descriptor.description, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    ros = ROS_ARGUMENTS_HELP.format(prog=prog, executable="vrs_lifecycle_node" if lifecycle else "vrs_node")
    if lifecycle:
        ros += f"  {prog} --ros-args -p autostart:=false     (left unconfigured for a lifecycle manager)\n"
    description = re.sub(r":\w+:`~?([^`]+)`", r"\1", __doc__).replace("``", "")
    return argparse.ArgumentParser(
        prog=prog, usage="%(prog)s [-h] [--ros-args [-p NAME:=VALUE] [-r FROM:=TO] [--params-file FILE] ...]",
        description=description, epilog="\n".join(parameters) + "\n\n" + ros,
        formatter_class=argparse.RawDescriptionHelpFormatter)


def _parse_command_line(args: list[str] | None, lifecycle: bool) -> None:
    """Check a node's command line (``args`` like ``sys.argv``, program first; None: ``sys.argv``)
    before ROS starts: ``-h``/``--help`` prints the help and exits 0; an argument outside
    ``--ros-args ...``, which ROS would silently ignore, is an error (exit 2)."""
    argv = list(sys.argv if args is None else args)
    prog = Path(argv[0]).name if argv else ("vrs-lifecycle-node" if lifecycle else "vrs-node")
    parser = _help_parser(prog, lifecycle)
    _, unknown = parser.parse_known_args(remove_ros_args(argv)[1:])
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (ROS arguments go after --ros-args, "
                     f"e.g. {prog} --ros-args -p mode:=sync)")


def _serve(node_class, args: list[str] | None, start=None) -> int:
    """Run a ``node_class()`` node (then ``start(node)`` if given) until SIGINT or SIGTERM
    (:mod:`vrs_node.ros.cli`), which end it with exit code 0 at any point, idle or busy (while it
    spins, after the callback in progress); the node is destroyed (its engine threads stopped)
    before ROS shuts down. A parameter the node refuses at start is one error line, exit code 1."""
    try:
        with ros_command(args) as stop:
            try:
                node = node_class()
            except (ValueError, ParameterException) as exc:
                rclpy.logging.get_logger("vrs_node").error(f"cannot start: {exc}")
                return 1
            try:
                if start is not None:
                    start(node)
                stop.spin(node)
            finally:
                node.destroy_node()
    except KeyboardInterrupt:  # the stop signal before the node spun (loading models, say)
        pass
    return 0


def main(args=None) -> int:
    """Console entry point ``vrs-node`` (``ros2 run vrs_node vrs_node`` on a ROS 2 install); ``args``
    is an argv list like ``sys.argv`` (program first). ``--help`` answers without starting ROS."""
    _parse_command_line(args, lifecycle=False)
    return _serve(VrsNode, args)


def _autostart(node: VrsLifecycleNode) -> None:
    """The ``configure`` and ``activate`` transitions, unless ``autostart`` is false."""
    if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
        node.trigger_activate()


def lifecycle_main(args=None) -> int:
    """Console entry point ``vrs-lifecycle-node`` (``ros2 run vrs_node vrs_lifecycle_node``):
    configures and activates itself unless ``autostart`` is false (then a lifecycle manager or
    ``ros2 lifecycle set`` drives it). ``args`` and ``--help`` as for :func:`main`."""
    _parse_command_line(args, lifecycle=True)
    return _serve(VrsLifecycleNode, args, start=_autostart)
