"""The console commands as a user runs them (the venv's installed scripts, each in its own process).

``--help``: every command of setup.py prints its help and exits 0 without starting ROS: the scripts
run under a guard that makes ``rclpy.init`` end the process with a message, so a command that
starts ROS before answering fails (a control case shows the guard catches one that does). An
argument outside ``--ros-args`` and a parameter the node refuses at start are one error line each.

Stop signals: ``vrs-node`` and ``vrs-lifecycle-node`` get SIGINT or SIGTERM idle (spinning, models
loaded) or busy (frames flooding in, reliable and deep, with an instruction re-grounded every 0.1 s
of camera time: in ``live`` mode the tracking and query threads are working, in ``sync`` mode the
main thread is inside a frame callback); ``vrs-camera`` + ``vrs-view`` get one while streaming and
recording, ``vrs-demo`` while publishing. Each must exit 0 with no traceback and no error logged.
A node stopped while its query thread is still inside torch exits 0 at once (a control shows that
Python's own exit aborts then).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import yaml
from conftest import REPO
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from vrs_node.io.image import ns_to_stamp, rgb_to_msg
from vrs_node.ros.qos import LATCHED

BIN = Path(sys.executable).parent  # the venv the tests run in, with its console scripts
COMMANDS = re.findall(r'"([\w-]+) = vrs_node\.', (REPO / "setup.py").read_text())
NO_ROS = """\
import runpy, sys, rclpy.context
def refuse(*args, **kwargs):
    sys.exit("rclpy.init was called")
rclpy.context.Context.init = refuse
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
"""Runs the console script ``argv[1]`` with arguments ``argv[2:]``; starting ROS ends it (exit 1)."""
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
SAMPLE = REPO / "sample" / "blackswan" / "JPEGImages"
_ids = itertools.count()


def env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def without_ros(*commands):
    """{command line: CompletedProcess} of each command line (a tuple) run under the NO_ROS guard,
    all at once."""
    processes = {cmd: subprocess.Popen([sys.executable, "-c", NO_ROS, str(BIN / cmd[0]), *cmd[1:]], cwd=REPO,
                                       env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for cmd in commands}
    done = {}
    for cmd, process in processes.items():
        stdout, stderr = process.communicate(timeout=180)
        done[cmd] = subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)
    return done


@pytest.fixture(scope="module")
def answers():
    """Every command's ``--help``, a ROS argument given without ``--ros-args``, and the guard's
    control (a command line that starts ROS), run once for the module."""
    return without_ros(*[(name, "--help") for name in COMMANDS], ("vrs-node", "-p", "mode:=sync"),
                       ("vrs-reasoner", "-p", "max_batch:=2"),
                       ("vrs-camera", "--ros-args", "-p", "source:=/no/such/source"))


def test_every_command_prints_its_help_without_starting_ros(answers):
    assert len(COMMANDS) == 14 and {"vrs-node", "vrs_node", "vrs-lifecycle-node", "vrs_lifecycle_node"} <= set(COMMANDS)
    for name in COMMANDS:
        result = answers[(name, "--help")]
        assert (result.returncode, result.stderr) == (0, ""), (name, result.stderr)
        assert result.stdout.startswith(f"usage: {name} "), (name, result.stdout[:200])
    control = answers[("vrs-camera", "--ros-args", "-p", "source:=/no/such/source")]
    assert control.returncode == 1 and control.stderr.strip().endswith("rclpy.init was called")


def test_an_argument_outside_ros_args_is_refused_with_a_hint(answers):
    # rcl takes the bare "mode:=sync" for a (deprecated) remap rule; "-p" is left over
    stray = answers[("vrs-node", "-p", "mode:=sync")]
    assert stray.returncode == 2 and "rclpy.init" not in stray.stderr
    assert "vrs-node: error: unrecognized arguments: -p (ROS arguments go after --ros-args, " \
           "e.g. vrs-node --ros-args -p mode:=sync)" in stray.stderr
    stray = answers[("vrs-reasoner", "-p", "max_batch:=2")]
    assert stray.returncode == 2 and "rclpy.init" not in stray.stderr
    assert "vrs-reasoner: error: unrecognized arguments: -p max_batch:=2 (ROS arguments go after --ros-args, " \
           "e.g. vrs-reasoner --ros-args -p max_batch:=2)" in stray.stderr


def test_the_node_help_says_what_it_does_its_topics_parameters_and_ros_arguments(answers):
    text = answers[("vrs-node", "--help")].stdout
    for topic in ("sub image", "sub prompt", "sub instruction", "pub mask", "pub overlay", "pub status",
                  "pub /diagnostics", "srv reset"):
        assert f"- {topic} (" in text, topic
    parameters = yaml.safe_load((REPO / "config" / "vrs_node.yaml").read_text())["/**"]["ros__parameters"]
    for name, default in parameters.items():  # every packaged parameter, with the packaged default
        assert f"\n  {name} (default {default!r}" in text, name
    assert "\n  score_threshold (default 0.0, runtime-settable)\n" in text
    assert "config/vrs_node.yaml" in text and 'README "Topics, services, parameters"' in text
    assert "-p NAME:=VALUE sets a parameter" in text and "-r FROM:=TO remaps a topic" in text
    assert "\n  vrs-node --ros-args -p model_profile:=tiny-random -p mode:=sync -r image:=/camera/image_raw\n" in text
    assert "ros2 run vrs_node vrs_node --ros-args" in text and "``" not in text and ":class:" not in text
    lifecycle = answers[("vrs_lifecycle_node", "--help")].stdout
    assert lifecycle.startswith("usage: vrs_lifecycle_node [-h] [--ros-args")
    assert "vrs_lifecycle_node --ros-args -p autostart:=false" in lifecycle
    assert "ros2 run vrs_node vrs_lifecycle_node --ros-args" in lifecycle
    assert "Lifecycle (VrsLifecycleNode)" in lifecycle


def test_the_reasoner_help_says_what_it_does_its_own_parameters_and_ros_arguments(answers):
    text = answers[("vrs-reasoner", "--help")].stdout
    assert "- sub ~/requests (" in text and "- pub ~/responses (" in text and "It loads no SAM-2." in text
    for name in ("model_profile", "device", "window_frames", "max_batch", "image_transport"):
        assert f"\n  {name} (default " in text, name
    for name in ("mode", "score_threshold", "reasoner_timeout_s"):  # the tracking node's, not the reasoner's
        assert f"\n  {name} (default " not in text, name
    assert 'parameters (README "Reasoner on another machine"):' in text and "-r FROM:=TO remaps a topic" in text
    example = "vrs-reasoner --ros-args -r __ns:=/gpu -r image:=/camera/image_raw -p image_transport:=compressed"
    assert f"\n  {example}\n" in text
    assert "ros2 run vrs_node vrs_reasoner --ros-args" in text and "``" not in text
    lifecycle = answers[("vrs-lifecycle-reasoner", "--help")].stdout
    assert "\n  autostart (default True" in lifecycle and "\n  autostart (default " not in text
    assert "ros2 run vrs_node vrs_lifecycle_reasoner --ros-args" in lifecycle
    assert "vrs-lifecycle-reasoner --ros-args -p autostart:=false" in lifecycle


HEAVY_MODULES_AFTER = """\
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as stop:
    print(stop.code, sorted(m for m in ("torch", "transformers", "sam2") if m in sys.modules))
"""
"""Runs the console script ``argv[1]`` with arguments ``argv[2:]`` and prints its exit code and
which of torch, transformers and sam2 it imported."""


def test_the_nodes_answer_help_without_loading_torch():
    """A node's ``--help`` imports none of the model libraries (its node module, which loads them
    in seconds, is imported only to run the node): the four node commands, each in its own process."""
    commands = ["vrs-node", "vrs-lifecycle-node", "vrs-reasoner", "vrs-lifecycle-reasoner"]
    processes = [subprocess.Popen([sys.executable, "-c", HEAVY_MODULES_AFTER, str(BIN / name), "--help"], cwd=REPO,
                                  env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in commands]
    for name, process in zip(commands, processes):
        stdout, stderr = process.communicate(timeout=120)
        assert stderr == "" and stdout.startswith(f"usage: {name} "), (name, stderr)
        assert stdout.rstrip().endswith("\n0 []"), (name, stdout[-300:])


def test_a_parameter_the_node_refuses_at_start_is_one_error_line_and_exit_code_1():
    done = subprocess.run([str(BIN / "vrs-node"), "--ros-args", "-p", "mode:=bogus"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == "", done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "[ERROR]" in lines[0], done.stderr
    assert lines[0].endswith("[vrs_node]: cannot start: parameter mode must be one of sync, live; got 'bogus'")


# --- stop signals --------------------------------------------------------------------------------


class Spawned:
    """A console script of the venv in its own process, its output (stdout + stderr) in a log file."""

    def __init__(self, log: Path, name: str, *args: str):
        self.log = log
        with open(log, "w") as handle:
            self.process = subprocess.Popen([str(BIN / name), *args], cwd=REPO, env=env(), stdout=handle,
                                            stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, signum: int, timeout_s: float = 30.0) -> str:
        """Send ``signum``; wait for the exit; assert exit code 0, no traceback, no error logged.
        Returns the output."""
        self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout_s)
        output = self.output()
        assert code == 0, output[-3000:]
        assert "Traceback" not in output and "[ERROR]" not in output, output[-3000:]
        return output

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def spawn(tmp_path):
    """``spawn(name, *args)`` starts a console script (killed after the test if still running)."""
    started = []
    yield lambda name, *args: started.append(Spawned(tmp_path / f"{name}_{len(started)}.log", name, *args)) \
        or started[-1]
    for process in started:
        process.kill()


def spin_until(executor, condition, process: Spawned, what: str, timeout_s: float = 90.0, between=None):
    """Spin ``executor`` (calling ``between()`` each round) until ``condition()``; fails if the
    process exits first or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.process.poll() is None, f"exited ({process.process.returncode}) before {what}:\n" \
                                               f"{process.output()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{process.output()[-3000:]}"
        if between is not None:
            between()
        executor.spin_once(timeout_sec=0.02)


NODE_CASES = [("vrs-node", sig, state) for state in ("idle", "busy-live", "busy-sync")
              for sig in (signal.SIGINT, signal.SIGTERM)] + [
    ("vrs-lifecycle-node", signal.SIGINT, "idle"), ("vrs-lifecycle-node", signal.SIGTERM, "busy-sync"),
    ("vrs-lifecycle-node", signal.SIGTERM, "idle"), ("vrs-lifecycle-node", signal.SIGINT, "busy-live")]


@pytest.mark.parametrize("command, signum, state", NODE_CASES,
                         ids=[f"{c}-{s.name}-{state}" for c, s, state in NODE_CASES])
def test_a_node_exits_0_on_sigint_and_sigterm_idle_or_busy(ros_nodes, spawn, command, signum, state):
    name = f"stop_test_{os.getpid()}_{next(_ids)}"
    mode = "sync" if state == "busy-sync" else "live"
    node = spawn(command, "--ros-args", "-r", f"__node:={name}", "-r", f"__ns:=/{name}", "-p", "image_size:=64",
                 "-p", f"mode:={mode}", "-p", "period_s:=0.1",
                 "-p", f"qos_overrides./{name}/image.subscription.reliability:=reliable",
                 "-p", f"qos_overrides./{name}/image.subscription.depth:={RELIABLE.depth}")
    peer = rclpy.create_node(f"{name}_peer")
    ros_nodes.append(peer)
    diagnostics, frames, queries = [], [], []
    peer.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: diagnostics.extend(s for s in m.status if s.name.startswith(f"{name}:")),
                             RELIABLE)

    def on_status(msg):
        status = json.loads(msg.data)
        (queries if status.get("event") == "query" else frames).append(status)

    peer.create_subscription(String, f"/{name}/status", on_status, RELIABLE)
    image_pub = peer.create_publisher(Image, f"/{name}/image", RELIABLE)
    instruction_pub = peer.create_publisher(String, f"/{name}/instruction", LATCHED)
    executor = SingleThreadedExecutor()
    executor.add_node(peer)
    try:
        # diagnostics come from a timer: the node is spinning, its models loaded
        spin_until(executor, lambda: diagnostics, node, "the node's diagnostics")
        if state != "idle":
            instruction_pub.publish(String(data="the black swan"))
            image = np.full((48, 64, 3), 120, np.uint8)
            stamps = itertools.count(1_700_000_000_000_000_000, 33_333_333)

            def publish():
                image_pub.publish(rgb_to_msg(image, Header(stamp=ns_to_stamp(next(stamps)))))

            spin_until(executor, lambda: len(frames) >= 3 and queries, node, "frames and a query", between=publish)
            assert {s["status"] for s in frames} <= {"tracking", "target_absent", "no_prompt", "grounding"}, frames
            for _ in range(20):  # a backlog: the node is working when the signal comes
                publish()
    finally:
        executor.shutdown()
    node.stop(signum)


BUSY_AT_EXIT = """\
import os, signal, sys, threading
import rclpy.node, torch
from vrs_node.ros import node_command

def query():  # a grounding query inside torch, for longer than any close() waits
    a = torch.randn(256, 256)
    while True:
        a = (a @ a).tanh()

class BusyNode(rclpy.node.Node):
    def __init__(self):
        super().__init__(sys.argv[2])
        threading.Thread(target=query, name="vrs-grounding", daemon=True).start()
        self.create_timer(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM))

if sys.argv[1] == "control":
    node_command.safe_exit_code = lambda code: code
sys.exit(node_command.serve(BusyNode, ["busy"]))
"""
"""A node command (``serve``) stopped while its query thread is inside torch; ``control``: without
:func:`safe_exit_code`, the exit as Python would make it."""


def test_a_node_stopped_while_its_query_is_inside_a_model_call_exits_0_at_once():
    """The node is destroyed, its query thread still inside torch: the command exits 0, saying it
    did not wait for the query; without safe_exit_code Python's exit aborts the process (SIGABRT,
    "terminate called without an active exception")."""
    runs = {case: subprocess.run([sys.executable, "-c", BUSY_AT_EXIT, case, f"busy_{os.getpid()}_{next(_ids)}"],
                                 env=env(), capture_output=True, text=True, timeout=120)
            for case in ("safe", "control")}
    assert runs["safe"].returncode == 0, runs["safe"].stderr[-2000:]
    assert "exiting without waiting for vrs-grounding: still inside a model call" in runs["safe"].stderr
    assert "Traceback" not in runs["safe"].stderr
    assert runs["control"].returncode == -signal.SIGABRT, (runs["control"].returncode, runs["control"].stderr[-2000:])


def frames_written(output: str) -> int:
    """The count of vrs-view's tqdm bar ("recorded.mp4: 3frame [00:01, 2.83frame/s]"): the number
    before "frame [", never the rate ("1.53frame/s" holds "3frame": a run stopped at 2 frames)."""
    return max(map(int, re.findall(r"(\d+)frame \[", output)), default=0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_camera_and_viewer_exit_0_while_streaming_and_the_video_is_finalised(spawn, tmp_path, signum):
    topic = f"/stop_test_{os.getpid()}_{next(_ids)}/image"
    video = tmp_path / "recorded.mp4"
    camera = spawn("vrs-camera", str(SAMPLE), "--loop", "--rate", "10", "--reliable",
                   "--ros-args", "-r", f"image:={topic}")
    viewer = spawn("vrs-view", topic, "--no-window", "--out", str(video))
    deadline = time.monotonic() + 60
    while frames_written(viewer.output()) < 3:
        assert time.monotonic() < deadline and viewer.process.poll() is None, viewer.output()[-3000:]
        time.sleep(0.1)
    recorded = viewer.stop(signum)
    camera.stop(signum)
    written = int(re.search(r"vrs-view: \d+ frames received, 0 skipped, (\d+) written to ", recorded).group(1))
    capture, read_back = cv2.VideoCapture(str(video)), 0
    while capture.read()[0]:
        read_back += 1
    assert read_back == written >= 3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_demo_exits_0_while_publishing(spawn, tmp_path, signum):
    demo = spawn("vrs-demo", "--out", str(tmp_path / "out"), "--rate", "2", "--image-size", "64")
    deadline = time.monotonic() + 90
    while not re.search(r"publishing \(live\): +\d+%.* [1-9]\d*/30 ", demo.output()):  # a frame is out
        assert time.monotonic() < deadline and demo.process.poll() is None, demo.output()[-3000:]
        time.sleep(0.1)
    output = demo.stop(signum)
    stopped = re.search(rf"vrs-demo: stopped by {signum.name} after publishing (\d+) of 30 frames; (\d+) masks in "
                        rf"{re.escape(str((tmp_path / 'out' / 'masks').resolve()))}", output)
    assert stopped, output[-3000:]
    assert 1 <= int(stopped.group(1)) < 30
    assert int(stopped.group(2)) == len(list((tmp_path / "out" / "masks").glob("*.png")))
    assert not (tmp_path / "out" / "summary.json").exists()
