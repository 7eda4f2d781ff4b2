"""The node's ROS interface over :class:`vrs_node.core.engine.StreamingEngine`
(:class:`VrsInterface`): parameters (:mod:`vrs_node.ros.params`), inputs, outputs, the ``reset``
service, ``status`` (:mod:`vrs_node.ros.status`) and ``/diagnostics``, in stages that the plain and
the lifecycle node (:mod:`vrs_node.ros.node`, whose docstring describes the interface) run at their
own times.
"""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.qos import qos_policy_name_from_kind
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from vrs_node.core.config import PipelineConfig
from vrs_node.core.engine import StreamingEngine
from vrs_node.core.pipeline import build_pipeline
from vrs_node.core.prompt_json import PromptRefused, prompt_from_json, short
from vrs_node.core.queries import QueryReport
from vrs_node.core.remote_reasoner import RemoteGrounder
from vrs_node.core.results import FrameResult
from vrs_node.core.target_commands import handle_instructions, handle_target_message, refusal
from vrs_node.io.image import (ImageConversionError, instance_map_to_msg, mask_to_msg, ns_to_stamp, rgb_to_msg,
                               stamp_to_ns)
from vrs_node.io.overlay import overlay_instances
from vrs_node.models.config import ModelConfig
from vrs_node.models.profiles import LoadedModels, load_configured_models, release_accelerator_memory
from vrs_node.ros import status
from vrs_node.ros.cli import STOP_WAIT_S
from vrs_node.ros.diagnostics import DIAGNOSTICS_PERIOD_S, HealthMonitor
from vrs_node.ros.image_input import decode_image, subscribe_image
from vrs_node.ros.logs import RosLogHandler, forward_core_logs, stop_forwarding
from vrs_node.ros.params import (RUNTIME_ENGINE_PARAMETERS, check_choices, declare_parameters,
                                 empty_lists_as_string_arrays, read_config, reasoner_namespace)
from vrs_node.ros.qos import LATCHED, RELIABLE_5, qos_fix
from vrs_node.ros.remote import RemoteReasonerLink


class VrsInterface:
    """The node's ROS interface over the engine, shared by :class:`~vrs_node.ros.node.VrsNode` and
    :class:`~vrs_node.ros.node.VrsLifecycleNode` (mixed into an rclpy ``Node``). Its stages:
    ``_setup`` (parameters, diagnostics), ``_open_outputs``, ``_load_models``, ``_start`` (engine,
    subscriptions, service), ``_stop``, ``_close_outputs``."""

    def _setup(self, lifecycle: bool = False) -> None:
        """Declare the parameters (:mod:`vrs_node.ros.params`), check their choices (ValueError
        naming the parameter), forward the core's logs and start the diagnostics."""
        declare_parameters(self, lifecycle)
        self.models: LoadedModels | None = None
        self.engine: StreamingEngine | None = None
        self.model_error: str | None = None
        self.profile_name = self._param("model_profile")
        self.device = self._param("device")
        self._status_lock = threading.Lock()
        self._inputs: list = []
        self._outputs: list = []
        self._log_handler = RosLogHandler(self.get_logger())
        # Checked once what destroy_node needs exists (rclpy destroys a refused node at shutdown) and
        # before anything outlives the node (the core logger's handler).
        self._link: RemoteReasonerLink | None = None
        check_choices(self._param)
        self.reasoner_namespace = reasoner_namespace(self._param("reasoner"))
        forward_core_logs(self._log_handler)
        self.health = HealthMonitor(self.profile_name, self.device)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_5)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self.add_pre_set_parameters_callback(empty_lists_as_string_arrays)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _param(self, name: str):
        return self.get_parameter(name).value

    # --- stages ------------------------------------------------------------------------------
    def _open_outputs(self, create_publisher) -> None:
        """``mask``, ``instance_mask``, ``overlay`` and ``status`` publishers made by
        ``create_publisher`` (a plain or a lifecycle publisher factory), each logging an
        incompatible-QoS match with its fix."""
        def publisher(msg_type, topic):
            handler = self._incompatible_qos_handler(self.resolve_topic_name(topic), "publisher")
            events = PublisherEventCallbacks(incompatible_qos=handler)
            pub = create_publisher(msg_type, topic, RELIABLE_5, event_callbacks=events)
            self._outputs.append(pub)
            return pub

        self.mask_pub = publisher(Image, "mask")
        self.instance_pub = publisher(Image, "instance_mask")
        self.overlay_pub = publisher(Image, "overlay")
        self.status_pub = publisher(String, "status")

    def _close_outputs(self) -> None:
        for pub in self._outputs:
            self.destroy_publisher(pub)
        self._outputs.clear()

    def _load_models(self) -> bool:
        """Load the profile's models on the device (SAM-2 only with a remote reasoner); on failure
        keep the reason in ``model_error``."""
        try:
            config = read_config(ModelConfig, self._param)
            parts = "all" if self.reasoner_namespace is None else "tracker"
            profile, device, self.models = load_configured_models(config, parts=parts)
        except Exception as exc:  # noqa: BLE001 -- any load failure is reported, the node stays up
            self.model_error = f"model could not be loaded: {type(exc).__name__}: {exc}"
            self.get_logger().error(self.model_error)
            return False
        self.model_error = None
        self.device = self.health.device = str(device)
        weights = "RANDOM weights: masks prove plumbing only, not segmentation quality" if profile.random_weights \
            else f"checkpoint {self._param('vrshq_checkpoint') or self._param('sam2_checkpoint')}"
        language = "follows instructions" if self.models.grounding is not None else "prompts only (no language model)"
        if self.reasoner_namespace is not None:
            language = f"follows instructions with the reasoner at {self.reasoner_namespace}"
        self.get_logger().info(
            f"model profile {profile.name!r} ({profile.description}) on {self.device}, "
            f"{self.models.transform.image_size} px, {self.models.precision}"
            f"{', compiled' if self.models.compiled else ''}"
            f"{', reasoner ' + self.models.reasoner_quantization if self.models.reasoner_quantization != 'none' else ''}"
            f", {weights}; mode {self._param('mode')}; {language}")
        return True

    def _start(self) -> None:
        """Build the engine over the loaded models (if any), apply the ``instruction`` and then
        the ``instructions`` parameter (when not empty: it replaces the first), open the inputs."""
        if self.models is not None:
            config = read_config(PipelineConfig, self._param)
            if self.reasoner_namespace is not None:
                self._link = RemoteReasonerLink(self, self.reasoner_namespace, self._param("reasoner_timeout_s"))
            self.engine = build_pipeline(self.models, config, on_result=self._publish_result,
                                         on_query=self._publish_query,
                                         remote_grounder=self._link.grounder if self._link is not None else None)
            self._apply_instruction(self._param("instruction"))
            if self._param("instructions"):
                self._apply_instructions(self._param("instructions"))
        self._inputs += [self._subscribe_image(),
                         self.create_subscription(String, "prompt", self._on_prompt, RELIABLE_5),
                         self.create_subscription(String, "instruction", self._on_instruction, LATCHED),
                         self.create_subscription(String, "targets", self._on_targets, LATCHED),
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
            self.engine.close(STOP_WAIT_S)
            self.engine = None
            release_accelerator_memory(self.device)
        if self._link is not None:
            self._link.close()
            self._link = None

    def destroy_node(self) -> None:
        """Stop the tracking thread and the log forwarding before the node goes away."""
        self._stop()
        stop_forwarding(self._log_handler)
        super().destroy_node()

    def _subscribe_image(self):
        """The camera input of the ``image_transport`` parameter (see the module docstring)."""
        return subscribe_image(self, self._param("image_transport"), self._on_image,
                               lambda topic: self._incompatible_qos_handler(topic, "subscription"))

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
        """Apply runtime parameters; a refused instruction (or list of them) is answered with the reason."""
        for param in params:
            if param.name in ("instruction", "instructions"):
                apply = self._apply_instruction if param.name == "instruction" else self._apply_instructions
                error = apply(param.value)
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

    def _apply_instructions(self, texts) -> str | None:
        """Follow the instructions ``texts`` at once, one target each, in place of every target
        (none: no targets; :func:`~vrs_node.core.target_commands.handle_instructions`), answered on
        ``status``; returns the reason of a refusal, or None. Without an engine as
        :meth:`_apply_instruction`."""
        if self.engine is None:
            return self.model_error
        reply = handle_instructions(self.engine, list(texts))
        self._report_targets(reply)
        return reply.get("reason")

    def _on_targets(self, msg: String) -> None:
        """A ``targets`` command (:mod:`vrs_node.core.target_commands`), answered on ``status``
        with the ids assigned or the reason it was refused (a refusal changes nothing)."""
        engine = self.engine
        reply = refusal(None, self.model_error) if engine is None else \
            handle_target_message(engine, msg.data, self._param("max_prompt_points"))
        self._report_targets(reply)

    def _report_targets(self, reply: dict) -> None:
        """Log a targets command's reply and publish it on ``status``."""
        if reply["status"] == "error":
            self.get_logger().warning(reply["reason"], throttle_duration_sec=5.0)
        else:
            self.get_logger().info(f"targets {reply['op']}: ids {reply['ids']}; now {reply['targets']}")
        self._publish_status(reply)

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
        reduce = isinstance(msg, CompressedImage) and self.overlay_pub.get_subscription_count() == 0
        try:
            image, camera_hw = decode_image(msg, self._param("max_image_pixels"),
                                            engine.tracker.transform.valid_size if reduce else None)
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

    def _report_prompt(self, state: str, reason: str, stamp_ns: int | None, notice: str | None = None) -> None:
        """One ``status`` message about a prompt (:func:`~vrs_node.ros.status.prompt_status`); a
        refusal is also logged."""
        if state == "error":
            self.get_logger().warning(reason, throttle_duration_sec=5.0)
        self._publish_status(status.prompt_status(state, reason, stamp_ns, notice))

    def _on_reset(self, request, response):
        if self.engine is None:
            response.success, response.message = False, self.model_error
        else:
            self.engine.clear_prompt()
            response.success, response.message = True, "target and instruction forgotten; waiting for a prompt"
        return response

    # --- outputs -----------------------------------------------------------------------------
    def _publish_result(self, result: FrameResult) -> None:
        """Publish the mask and the instance mask (with the input frame's stamp and frame_id), the
        overlay (each target in its colour, with its label) if anyone subscribes, and the status.
        A frame decoded at a reduced scale (received before the overlay had a subscriber:
        :meth:`_on_image`) gets no overlay; a failed frame (no instance map) an empty instance mask."""
        self.health.on_result(result)
        header = Header(stamp=ns_to_stamp(result.stamp_ns), frame_id=result.frame_id)
        instances = result.instance_map if result.instance_map is not None else np.zeros(result.mask.shape, np.uint8)
        self.mask_pub.publish(mask_to_msg(result.mask, header))
        self.instance_pub.publish(instance_map_to_msg(instances, header))
        if self.overlay_pub.get_subscription_count() > 0 and result.image.shape[:2] == result.mask.shape:
            targets = [(t.id, t.label, t.box) for t in result.targets]
            self.overlay_pub.publish(rgb_to_msg(overlay_instances(result.image, instances, targets), header))
        self._publish_status(status.frame_status(result))  # a notice in it: the engine logs it

    def _publish_query(self, report: QueryReport) -> None:
        """Status message for a finished grounding query."""
        self.health.on_query(report)
        self._publish_status(status.query_status(report))

    def _publish_diagnostics(self) -> None:
        """Close a diagnostics period: one DiagnosticStatus on ``/diagnostics`` (see HealthMonitor)."""
        engine = self.engine
        instruction = engine.instruction if engine is not None else None
        camera = next((s for s in self._inputs if getattr(s, "msg_type", None) in (Image, CompressedImage)), None)
        health = self.health.report(engine.stats if engine is not None else None,
                                    instruction.text if instruction is not None else None, self.model_error,
                                    self._inactive_reason(),
                                    image_publishers=camera.get_publisher_count() if camera is not None else None,
                                    query_running_s=engine.query_elapsed_s if engine is not None else None,
                                    targets=len(engine.target_labels()) if engine is not None else 0,
                                    tracking_calls=len(engine.target_tracker.batches) if engine is not None else 0,
                                    reasoner=self._reasoner_status() if self.reasoner_namespace is not None else None)
        self.diagnostics_pub.publish(status.diagnostic_array(health, f"{self.get_name()}: segmentation", self.device,
                                                             self.get_clock().now().to_msg()))

    def _reasoner_status(self) -> dict:
        """Where the reasoner runs and, for a remote one, its link's counters (:func:`status.reasoner_status`)."""
        engine = self.engine
        remote = engine.grounder if engine is not None and isinstance(engine.grounder, RemoteGrounder) else None
        return status.reasoner_status(self.reasoner_namespace, remote.stats if remote is not None else None)

    def _inactive_reason(self) -> str | None:
        """Why the node does not process images by design (None: it should be processing)."""
        return None

    def _report_error(self, header, reason: str) -> None:
        """An ``error`` status; ``header``: the refused image's (None for anything else)."""
        stamp = (stamp_to_ns(header.stamp), header.frame_id) if header is not None else ()
        self._publish_status(status.error_status(reason, *stamp))

    def _publish_status(self, fields: dict) -> None:
        """Publish ``fields`` after :func:`~vrs_node.ros.status.context` on ``status`` (while it is
        open); a field of the event's own (a query's ``instruction``) wins over the context's."""
        engine = self.engine
        instruction = engine.instruction if engine is not None else None
        message = {**status.context(self.profile_name, self.device,
                                    self.models.precision if self.models is not None else None,
                                    engine.stats if engine is not None else None,
                                    instruction.text if instruction is not None else None,
                                    self._reasoner_status()), **fields}
        with self._status_lock:
            if self._outputs:
                self.status_pub.publish(String(data=json.dumps(message)))
