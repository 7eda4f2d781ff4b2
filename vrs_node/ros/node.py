"""VrsNode: the ROS 2 adapter over :class:`vrs_node.core.engine.StreamingEngine`.

Interface (all names relative, so they can be remapped):

- sub ``image`` (sensor_msgs/Image; sensor-data QoS, depth 1: latest only);
- sub ``prompt`` (std_msgs/String, JSON): ``{"box": [x0, y0, x1, y1]}`` and/or
  ``{"points": [[x, y], ...], "labels": [1, 0, ...]}`` in camera pixels, optionally
  ``"stamp_ns"`` to place the prompt on a past frame still in the window (then catch up);
- sub ``instruction`` (std_msgs/String; reliable, transient-local, so a late-joining node gets
  the last one): the language instruction to follow (an empty string stops following it);
- parameter ``instruction`` (runtime-settable): the same through ROS 2's parameter service, which
  answers success or the reason of a refusal (``ros2 param set /vrs_node instruction "..."``);
- srv ``reset`` (std_srvs/Trigger): forget the target and the instruction;
- pub ``mask`` (sensor_msgs/Image mono8 0/255, the input frame's header);
- pub ``status`` (std_msgs/String, JSON): status, reason, object score, latency, counters,
  instruction, model profile and device, per processed frame, per grounding query
  (``"event": "query"`` with its trigger, keyframe and stage timings) and on every error;
- pub ``/diagnostics`` (diagnostic_msgs/DiagnosticArray, every second): rates, drops, latencies,
  profile, device, target present (:mod:`vrs_node.ros.diagnostics`).

Bad input (an unsupported encoding, a malformed image or prompt, a model that failed to load) is
logged and reported on ``status``; the node keeps running.
"""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from vrs_node.core.engine import EngineConfig, FrameResult, QueryReport, StreamingEngine
from vrs_node.core.grounder import Grounder, GrounderConfig
from vrs_node.core.tracker import PointsPrompt, StreamingTracker
from vrs_node.models.profiles import get_profile, load_models, resolve_device
from vrs_node.ros.diagnostics import HealthMonitor
from vrs_node.ros.image import ImageConversionError, image_msg_to_rgb, mask_to_msg, ns_to_stamp, stamp_to_ns

RELIABLE_5 = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""QoS of the ``instruction`` topic: the last instruction reaches subscribers that start later."""
RUNTIME_ENGINE_PARAMETERS = ("score_threshold", "period_s", "lost_after_frames")
DIAGNOSTICS_PERIOD_S = 1.0


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


class VrsNode(Node):
    """Camera frames in, a mask per processed frame out (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__("vrs_node", **kwargs)
        self._declare_parameters()
        self.engine: StreamingEngine | None = None
        self.model_error: str | None = None
        self.profile_name = self.get_parameter("model_profile").value
        self.device = self.get_parameter("device").value
        self._status_lock = threading.Lock()
        self.mask_pub = self.create_publisher(Image, "mask", RELIABLE_5)
        self.status_pub = self.create_publisher(String, "status", RELIABLE_5)
        self._load_engine()
        self.health = HealthMonitor(self.profile_name, self.device)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_5)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self._apply_instruction(self.get_parameter("instruction").value)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Sensor-data QoS by default; overridable per deployment with ROS 2's standard parameter
        # qos_overrides.<topic>.subscription.reliability (e.g. reliable for large raw images
        # between processes, which best-effort UDP loses in fragments).
        self.create_subscription(Image, "image", self._on_image, qos_profile_sensor_data,
                                 qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self.create_subscription(String, "prompt", self._on_prompt, RELIABLE_5)
        self.create_subscription(String, "instruction", self._on_instruction, LATCHED)
        self.create_service(Trigger, "reset", self._on_reset)

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

    def _load_engine(self) -> None:
        """Build the models and engine; on failure keep running and report the error on status."""
        p = {name: self.get_parameter(name).value for name in (
            "image_size", "sam2_checkpoint", "mode", "window_frames", "max_cond_frames", "max_catchup_frames",
            "score_threshold", "period_s", "lost_after_frames", "sparse_frames", "vrshq_checkpoint", "clip_anchor")}
        try:
            profile = get_profile(self.profile_name)
            device = resolve_device(self.device)
            models = load_models(profile, device, image_size=p["image_size"] or None,
                                 sam2_checkpoint=p["sam2_checkpoint"] or None,
                                 vrshq_checkpoint=p["vrshq_checkpoint"] or None, clip_anchor=p["clip_anchor"])
            tracker = StreamingTracker(models.sam2, models.transform, max_cond_frames=p["max_cond_frames"])
            grounder = None
            if models.grounding is not None:
                g = models.grounding
                grounder = Grounder(g.mllm, g.tokenizer, g.anchor_scorer, tracker,
                                    GrounderConfig(sparse_frames=p["sparse_frames"]))
            config = EngineConfig(mode=p["mode"], window_frames=p["window_frames"],
                                  max_catchup_frames=p["max_catchup_frames"], score_threshold=p["score_threshold"],
                                  period_s=p["period_s"], lost_after_frames=p["lost_after_frames"])
            self.engine = StreamingEngine(tracker, config, on_result=self._publish_result, grounder=grounder,
                                          on_query=self._publish_query)
        except Exception as exc:  # noqa: BLE001 -- any load failure is reported, the node stays up
            self.model_error = f"model could not be loaded: {type(exc).__name__}: {exc}"
            self.get_logger().error(self.model_error)
            return
        self.device = str(device)
        weights = "RANDOM weights: masks prove plumbing only, not segmentation quality" \
            if profile.random_weights else f"checkpoint {p['vrshq_checkpoint'] or p['sam2_checkpoint']}"
        language = "follows instructions" if grounder is not None else "prompts only (no language model)"
        self.get_logger().info(
            f"model profile {profile.name!r} ({profile.description}) on {self.device}, "
            f"{models.transform.image_size} px, {weights}; mode {p['mode']}; {language}")

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
        """Follow ``text`` ('' stops following); returns the reason of a refusal, or None."""
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

    def _on_image(self, msg: Image) -> None:
        if self.engine is None:
            self._report_error(msg.header, self.model_error)
            return
        try:
            image = image_msg_to_rgb(msg)
        except ImageConversionError as exc:
            self.get_logger().warning(f"image refused: {exc}", throttle_duration_sec=5.0)
            self._report_error(msg.header, f"image refused: {exc}")
            return
        result = self.engine.push(image, stamp_to_ns(msg.header.stamp), msg.header.frame_id)
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

    def _publish_result(self, result: FrameResult) -> None:
        """Publish the mask (with the input frame's stamp and frame_id) and the status."""
        self.health.on_result(result)
        header = Header(stamp=ns_to_stamp(result.stamp_ns), frame_id=result.frame_id)
        self.mask_pub.publish(mask_to_msg(result.mask, header))
        self._publish_status({
            "stamp_ns": result.stamp_ns, "frame_id": result.frame_id, "frame_index": result.index,
            "status": result.status, "reason": result.reason, "object_score": result.object_score,
            "target_present": bool(result.mask.any()), "latency_ms": round(result.latency_s * 1e3, 2)})

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
        instruction = self.engine.instruction if self.engine is not None else None
        health = self.health.report(self.engine.stats if self.engine is not None else None,
                                    instruction.text if instruction is not None else None, self.model_error)
        status = DiagnosticStatus(level=bytes([health.level]), name=f"{self.get_name()}: segmentation",
                                  message=health.message, hardware_id=self.device,
                                  values=[KeyValue(key=k, value=v) for k, v in health.values.items()])
        self.diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                                     status=[status]))

    def _report_error(self, header, reason: str) -> None:
        status = {"status": "error", "reason": reason}
        if header is not None:
            status.update(stamp_ns=stamp_to_ns(header.stamp), frame_id=header.frame_id)
        self._publish_status(status)

    def _publish_status(self, fields: dict) -> None:
        stats = self.engine.stats if self.engine is not None else None
        fields.update(model_profile=self.profile_name, device=self.device)
        if stats is not None:
            instruction = self.engine.instruction
            fields.update(pushed=stats.pushed, processed=stats.processed, dropped=stats.dropped,
                          errors=stats.errors, queries=stats.queries, query_errors=stats.query_errors,
                          instruction=instruction.text if instruction is not None else None)
        with self._status_lock:
            self.status_pub.publish(String(data=json.dumps(fields)))

    def destroy_node(self) -> None:
        """Stop the tracking thread before the node goes away."""
        if self.engine is not None:
            self.engine.close()
        super().destroy_node()


def main(args=None) -> None:
    """Console entry point ``vrs-node`` (``ros2 run vrs_node vrs_node`` on a ROS 2 install)."""
    rclpy.init(args=args)
    node = VrsNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
