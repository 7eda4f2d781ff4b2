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
  the instruction topic and parameter set exactly one target (any others are dropped);
- sub ``targets`` (std_msgs/String, JSON; reliable, transient-local): several targets at once
  (:mod:`vrs_node.core.target_commands`): ``{"op": "add", "instruction": "the cup"}`` or with a
  prompt (``"box"``, ``"points"`` + ``"labels"``, optional ``"stamp_ns"``), optional ``"id"``
  (1..255); ``{"op": "remove", "id": 3}`` (the others are untouched); ``{"op": "clear"}``;
  ``{"op": "set", "targets": [...]}`` (the whole list); each answered on ``status``
  (``"event": "targets"``) with the ids assigned or the reason of the refusal, which changes nothing;
- parameter ``instructions`` (string array, runtime-settable): one instruction target each, in
  place of every target (``[]``: none); a refusal fails the parameter set with the reason;
  ``max_targets`` (read-only) bounds the targets followed at once;
- parameter ``reasoner`` (read-only): ``local`` (the MLLM runs in this node) or
  ``remote:<namespace>``: a ``vrs-reasoner`` in that namespace answers the grounding queries over
  the reasoner protocol (pub ``<namespace>/vrs_reasoner/requests``, sub ``.../responses``;
  :mod:`vrs_node.ros.remote`), this node loads SAM-2 only and runs TKS on its own features; a
  request waits ``reasoner_timeout_s``; a reasoner that is down, slow or answering badly is
  reported on ``status`` (``reasoner``) and ``/diagnostics`` while tracking goes on
  (:mod:`vrs_node.core.remote_reasoner`);
- srv ``reset`` (std_srvs/Trigger): forget every target and instruction;
- pub ``mask`` (sensor_msgs/Image mono8 0/255, the union of the targets, the input frame's header);
- pub ``instance_mask`` (sensor_msgs/Image mono8, pixel = target id, 0 = background; where
  targets overlap, the one with the higher object score; the input frame's header);
- pub ``overlay`` (sensor_msgs/Image rgb8, the input frame with each target blended in its own
  colour and labelled, its header): computed only while someone subscribes;
- pub ``status`` (std_msgs/String, JSON): status, reason, object score, latency, counters,
  instruction, model profile, device, precision and reasoner, per processed frame (with the ``targets``
  list: id, label, present, object score, box, area, last grounding stamp, status and reason of
  each, and ``notice`` when the stream jumped back in time or changed resolution), per grounding
  query (``"event": "query"`` with its trigger, keyframe and stage timings), per targets command
  and on every error;
- pub ``/diagnostics`` (diagnostic_msgs/DiagnosticArray, every second): rates, drops, latencies,
  failed frames and queries, the query in progress, camera publishers, time to the first target,
  profile, device, target present, number of targets, the remote reasoner's link
  (:mod:`vrs_node.ros.diagnostics`).

Lifecycle (:class:`VrsLifecycleNode`): ``configure`` loads the models (a failure is logged and the
transition fails); ``activate`` builds the engine and subscribes; ``deactivate`` unsubscribes, drops
the engine (frames, features, tracker memory, query caches), moves the weights to host memory and
empties the accelerator's cache; ``cleanup`` releases the models and publishers. Its command
(:mod:`vrs_node.ros.entry_points`) makes the configure and activate transitions itself unless
``autostart`` is false.

Bad input (an unsupported encoding, a malformed image or prompt, an image above
``max_image_pixels``, a prompt with more than ``max_prompt_points`` points, off the image or
stamped for no frame in the window, a model that failed to load) is logged and reported on
``status`` (a prompt's at once, as ``"event": "prompt"`` with the prompt's stamp); it changes
nothing and the node keeps running. README "Bad input and odd streams" lists every refusal.
"""

from __future__ import annotations

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node

from vrs_node.models.profiles import release_accelerator_memory
from vrs_node.ros.interface import VrsInterface

__all__ = ["VrsNode", "VrsLifecycleNode"]


class VrsNode(VrsInterface, Node):
    """Camera frames in, a mask per processed frame out (see the module docstring); the models are
    loaded in the constructor, and a load failure is reported on every frame's status."""

    def __init__(self, **kwargs):
        Node.__init__(self, "vrs_node", **kwargs)
        self._setup()
        self._open_outputs(self.create_publisher)
        self._load_models()
        self._start()


class VrsLifecycleNode(VrsInterface, LifecycleNode):
    """The same node as a managed (lifecycle) node; see the module docstring for the transitions."""

    def __init__(self, **kwargs):
        LifecycleNode.__init__(self, "vrs_node", **kwargs)
        self._setup(lifecycle=True)

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
