"""In-process ROS 2 test of ``vrs-reasoner``: frames on ``image``, requests on ``~/requests``, answers
on ``~/responses`` equal to a local ``reason_many``; a foreign version refused; each client keeps
only its own answers; waiting requests batched up to ``max_batch``; the counters on ``/diagnostics``
in every lifecycle state."""

from __future__ import annotations

import json
import threading

import pytest
import rclpy
from conftest import ros_session
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from ros_harness import frame_msg, spin_until
from sensor_msgs.msg import Image
from std_msgs.msg import String
from test_reasoner_service import assert_equal, local_reasoning

from vrs_node.core.reasoner_protocol import PROTOCOL_VERSION, Answer, Request, Response
from vrs_node.io.image import stamp_to_ns
from vrs_node.models.profiles import get_profile, load_models
from vrs_node.ros.qos import PROTOCOL_QOS
from vrs_node.ros.reasoner import ReasonerNode, reasoner_health


class ReasonerHarness:
    """A ReasonerNode beside a peer publishing frames and requests and collecting every response."""

    def __init__(self, **params):
        params = {"image_size": 128, **params}
        self.node = ReasonerNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.peer = rclpy.create_node("vrs_reasoner_test_peer")
        self.image_pub = self.peer.create_publisher(Image, "image", qos_profile_sensor_data)
        self.request_pub = self.peer.create_publisher(String, "/vrs_reasoner/requests", PROTOCOL_QOS)
        self.responses: list[str] = []
        self.peer.create_subscription(String, "/vrs_reasoner/responses", lambda m: self.responses.append(m.data),
                                      PROTOCOL_QOS)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.executor.add_node(self.peer)
        self.spin_until(lambda: self.image_pub.get_subscription_count() > 0
                        and self.request_pub.get_subscription_count() > 0
                        and self.node.responses.get_subscription_count() > 0)

    def spin_until(self, condition, timeout_s=60.0):
        spin_until(self.executor, condition, timeout_s)

    def send_frames(self, frames) -> list[int]:
        """Publish the frames one by one, each once the reasoner holds the one before; their stamps."""
        sent = []
        for i, image in enumerate(frames):
            msg = frame_msg(image, i)
            sent.append(stamp_to_ns(msg.header.stamp))
            self.image_pub.publish(msg)
            self.spin_until(lambda: len(self.node.service.window) == i + 1)
        return sent

    def ask(self, request: Request | str) -> None:
        self.request_pub.publish(String(data=request if isinstance(request, str) else request.to_json()))

    def answers_of(self, client_id: str) -> dict[int, Response]:
        """What a client keeps: the responses with its client id, by request id."""
        mine = [Response.from_json(t) for t in self.responses if json.loads(t)["client_id"] == client_id]
        return {r.request_id: r for r in mine}

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.peer.destroy_node()


@pytest.fixture
def reasoner():
    yield from ros_session(ReasonerHarness)


@pytest.fixture(scope="module")
def frames():
    from conftest import davis_sequence

    return [f[::4, ::4].copy() for f in davis_sequence("blackswan", 4)[0]]


def test_answers_equal_local_reasoning_and_each_client_keeps_its_own(reasoner, frames):
    h = reasoner()
    stamps = h.send_frames(frames)
    h.ask(Request("robot-a", 1, ["the black swan"], stamps))
    h.ask(Request("robot-b", 1, ["the water", "the bank"], stamps[1:]))
    foreign = json.loads(Request("robot-a", 2, ["the swan"], stamps).to_json())
    h.ask(json.dumps({**foreign, "version": PROTOCOL_VERSION + 1}))
    h.spin_until(lambda: len(h.responses) == 3)
    a, b = h.answers_of("robot-a"), h.answers_of("robot-b")
    assert sorted(a) == [1, 2] and sorted(b) == [1]
    assert f"protocol version {PROTOCOL_VERSION + 1}, this side speaks {PROTOCOL_VERSION}" in a[2].error
    (answer,) = a[1].results
    assert isinstance(answer, Answer) and answer.instruction == "the black swan"
    models = load_models(get_profile("tiny-random"), image_size=128)
    assert_equal(answer, local_reasoning(models, frames, ["the black swan"], stamps)[0], stamps)
    assert [r.instruction for r in b[1].results] == ["the water", "the bank"]
    assert all(set(r.dense_ns) <= set(stamps[1:]) for r in b[1].results)


def test_waiting_requests_are_batched_up_to_max_batch(reasoner, frames):
    h = reasoner(max_batch=2)
    stamps = h.send_frames(frames[:2])
    service, calls, release = h.node.service, [], threading.Event()
    original = service.grounder.reason_many

    def reason_many(window, instructions, **options):
        calls.append(len(instructions))
        release.wait(60)
        return original(window, instructions, **options)

    service.grounder.reason_many = reason_many
    h.ask(Request("robot-a", 0, ["the swan"], stamps))
    h.spin_until(lambda: calls == [1])
    for i in range(1, 4):
        h.ask(Request(f"robot-{'ab'[i % 2]}", i, ["the swan"], stamps))
    h.spin_until(lambda: len(service._pending) == 3)
    release.set()
    h.spin_until(lambda: len(h.responses) == 4)
    assert calls == [1, 2, 1]
    assert sorted(h.answers_of("robot-a")) == [0, 2] and sorted(h.answers_of("robot-b")) == [1, 3]
    h.ask(Request("robot-a", 9, ["the swan"], [1, 2]))
    h.spin_until(lambda: len(h.responses) == 5)
    assert "none of the 2 stamps given" in h.answers_of("robot-a")[9].results[0].error


def test_the_launch_file_starts_the_reasoner_with_its_arguments(ros_nodes, tmp_path):
    from conftest import REPO
    from launch_shim import evaluate, launch_shim

    with launch_shim():
        result = evaluate(REPO / "launch" / "reasoner.launch.py", {"image": "/robot/cam", "namespace": "gpu",
                                                                    "max_batch": "3", "batch_wait_s": "0.05",
                                                                    "device": "cpu"},
                          tmp_dir=tmp_path)
    cmd = result.node("vrs_reasoner")
    assert cmd.executable == "vrs_reasoner"
    node = ReasonerNode(cli_args=cmd.ros_args, parameter_overrides=[Parameter("image_size", value=128)])
    ros_nodes.append(node)
    assert node.get_fully_qualified_name() == "/gpu/vrs_reasoner"
    assert node.service.max_batch == 3 and node.service.window.capacity == 16 and node.service.batch_wait_s == 0.05
    assert node.get_parameter("device").value == "cpu"
    assert [s.node_name for s in node.get_subscriptions_info_by_topic("/robot/cam")] == ["vrs_reasoner"]
    assert node.resolve_topic_name("~/requests") == "/gpu/vrs_reasoner/requests"
    assert node.get_publishers_info_by_topic("/gpu/vrs_reasoner/responses")


def test_the_lifecycle_reasoner_answers_only_while_active(ros_nodes, frames):
    from vrs_node.ros.reasoner import ReasonerLifecycleNode

    node = ReasonerLifecycleNode(parameter_overrides=[Parameter("image_size", value=128)])
    ros_nodes.append(node)
    assert node.get_subscriptions_info_by_topic("/vrs_reasoner/requests") == []
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    for i, image in enumerate(frames[:2]):
        node.service.add_frame(image, i, "cam")
    sent, done = [], threading.Event()
    node.service._publish = lambda text: sent.append(text) or done.set()
    node.service.submit(Request("c", 1, ["the swan"], [0, 1]).to_json())
    assert done.wait(60)
    assert isinstance(Response.from_json(sent[0]).results[0], Answer)
    assert len(node.get_subscriptions_info_by_topic("/vrs_reasoner/requests")) == 1
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.service is None and node.get_subscriptions_info_by_topic("/vrs_reasoner/requests") == []
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert len(node.service.window) == 0
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS


def diagnostics_of(reports, node_name="vrs_reasoner"):
    """The reasoner's statuses among ``/diagnostics`` messages, as (level, message, values)."""
    return [(s.level, s.message, {kv.key: kv.value for kv in s.values})
            for r in reports for s in r.status if s.name == f"{node_name}: reasoner"]


def test_diagnostics_carry_the_counters_and_warn_for_a_period_with_failures(reasoner, frames):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    h = reasoner()
    reports = []
    h.peer.create_subscription(DiagnosticArray, "/diagnostics", reports.append, PROTOCOL_QOS)
    h.spin_until(lambda: diagnostics_of(reports))
    level, message, values = diagnostics_of(reports)[-1]
    assert level == DiagnosticStatus.OK and message == "answering requests (0 frames held)"
    assert values["requests"] == "0" and values["window_frames"] == "0/16"
    assert reports[-1].status[0].hardware_id == h.node.get_parameter("device").value
    stamps = h.send_frames(frames[:2])
    h.ask(Request("robot-a", 1, ["the swan"], stamps))
    h.ask(Request("robot-a", 2, ["the swan"], [1, 2]))  # no frame held: a failure
    h.spin_until(lambda: len(h.responses) == 2)
    h.spin_until(lambda: any(v["failures"] == "1" for _, _, v in diagnostics_of(reports)))
    level, message, values = next(d for d in diagnostics_of(reports) if d[2]["failures"] == "1")
    assert level == DiagnosticStatus.WARN and message.startswith("1 instruction(s) failed in the last period")
    assert "none of the 2 stamps given" in message and "none of the 2 stamps given" in values["last_error"]
    assert (values["requests"], values["answered"], values["refused"]) == ("2", "2", "0")
    assert (values["instructions_answered"], values["window_frames"], values["pending"]) == ("1", "2/16", "0")
    assert values["batches"] in ("1", "2") and values["largest_batch"] in ("1", "2")
    count = len(diagnostics_of(reports))
    h.spin_until(lambda: len(diagnostics_of(reports)) > count)
    assert diagnostics_of(reports)[-1][:2] == (DiagnosticStatus.OK, "answering requests (2 frames held)")


def test_the_lifecycle_reasoner_reports_diagnostics_in_every_state(ros_nodes):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from vrs_node.ros.reasoner import ReasonerLifecycleNode

    node = ReasonerLifecycleNode(parameter_overrides=[Parameter("image_size", value=128)])
    peer = rclpy.create_node("vrs_reasoner_test_peer")
    ros_nodes += [node, peer]
    reports = []
    peer.create_subscription(DiagnosticArray, "/diagnostics", reports.append, PROTOCOL_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(peer)

    def next_status():
        count = len(diagnostics_of(reports))
        spin_until(executor, lambda: len(diagnostics_of(reports)) > count, 60)
        return diagnostics_of(reports)[-1]

    try:
        assert next_status()[:2] == (DiagnosticStatus.OK, "unconfigured: the models are not loaded, no request "
                                                          "is answered")
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert next_status()[:2] == (DiagnosticStatus.OK, "inactive: the models are loaded, no request is "
                                                          "answered until activated")
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert next_status()[:2] == (DiagnosticStatus.OK, "answering requests (0 frames held)")
    finally:
        executor.shutdown()


def test_reasoner_health_levels():
    from vrs_node.core.reasoner_service import MAX_PENDING, ReasonerStats
    from vrs_node.ros.diagnostics import ERROR, OK, WARN

    quiet = ReasonerStats(requests=3, answered=2, refused=1, failures=1, last_error="request refused: busy")
    assert reasoner_health(quiet, quiet, 4, 16).level == OK
    assert reasoner_health(quiet, quiet, 4, 16, model_error="the models did not load").level == ERROR
    assert reasoner_health(quiet, ReasonerStats(), 0, 16, inactive="inactive").message == "inactive"
    refused = reasoner_health(quiet, ReasonerStats(requests=2, answered=2, failures=1), 4, 16)
    assert refused.level == WARN and refused.message == ("1 request(s) refused in the last period (the last "
                                                         "error: request refused: busy)")
    busy = ReasonerStats(requests=MAX_PENDING // 2, pending=MAX_PENDING // 2)
    assert reasoner_health(busy, busy, 4, 16).level == WARN and f"{MAX_PENDING // 2} requests waiting" in \
        reasoner_health(busy, busy, 4, 16).message
    assert reasoner_health(ReasonerStats(pending=MAX_PENDING // 2 - 1), ReasonerStats(), 4, 16).level == OK
    assert reasoner_health(quiet, quiet, 4, 16).values == {
        "window_frames": "4/16", "requests": "3", "answered": "2", "refused": "1", "instructions_answered": "0",
        "failures": "1", "batches": "0", "largest_batch": "0", "mean_batch": "0.00", "pending": "0",
        "last_error": "request refused: busy"}
