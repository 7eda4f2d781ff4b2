"""The command line of the nodes (``vrs-node``, ``vrs-reasoner`` and their lifecycle variants):
``--help`` and the argument check before ROS starts (:func:`parse_command_line`, what each node's
help says: :class:`NodeHelp`), serving a node until a stop signal (:func:`serve`) and a lifecycle
node's start (:func:`configure_and_activate`)."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.utilities import remove_ros_args

from vrs_node.core.process_exit import safe_exit_code
from vrs_node.ros.cli import ros_command
from vrs_node.ros.params import parameter_help, reasoner_parameters

ROS_ARGUMENTS_HELP = """\
ROS arguments go after --ros-args: -p NAME:=VALUE sets a parameter, --params-file FILE.yaml sets
many, -r FROM:=TO remaps a topic (also __ns:=/NAMESPACE, __node:=NAME). For example:

"""
"""The start of a node's ROS-argument help (:func:`help_parser`); its examples follow."""


@dataclass(frozen=True)
class NodeHelp:
    """What a node command's ``--help`` says (:func:`help_parser`): ``module`` is the node's module,
    whose docstring (:func:`module_doc`) says what the node does, its topics, services and lifecycle;
    ``executable`` and ``lifecycle_executable`` are its ``ros2 run`` names; ``parameters`` gives
    its parameters' help lines for the lifecycle node or not (:func:`~vrs_node.ros.params.parameter_help`);
    ``documented`` says where else they are; ``examples`` are command lines formatted with ``prog``
    and ``executable``; ``hint`` is the parameter setting shown when an argument is outside
    ``--ros-args``."""

    module: str
    executable: str
    lifecycle_executable: str
    parameters: Callable[[bool], list[str]]
    documented: str
    examples: str
    hint: str

    def ros2_executable(self, lifecycle: bool) -> str:
        """The ``ros2 run`` name of the node or of its lifecycle variant."""
        return self.lifecycle_executable if lifecycle else self.executable


TRACKING_NODE = NodeHelp(
    "vrs_node.ros.node", "vrs_node", "vrs_lifecycle_node", parameter_help,
    'README "Topics, services, parameters"; all of them, commented, in config/vrs_node.yaml, '
    "installed in share/vrs_node/config/",
    """\
  {prog} --ros-args -p model_profile:=tiny-random -p mode:=sync -r image:=/camera/image_raw
  {prog} --ros-args --params-file config/vrs_node.yaml -r __ns:=/vrs -p instruction:="the black swan"
  ros2 run vrs_node {executable} --ros-args -p device:=cuda     (on a ROS 2 install)
""", "mode:=sync")
"""``vrs-node`` and ``vrs-lifecycle-node``."""

REASONER_NODE = NodeHelp(
    "vrs_node.ros.reasoner", "vrs_reasoner", "vrs_lifecycle_reasoner",
    lambda lifecycle: parameter_help(lifecycle, reasoner_parameters()),
    'README "Reasoner on another machine"',
    """\
  {prog} --ros-args -r __ns:=/gpu -r image:=/camera/image_raw -p image_transport:=compressed
  {prog} --ros-args -p model_profile:=vrshq-7b -p vrshq_checkpoint:=/models/VRS-HQ -p device:=cuda
  ros2 run vrs_node {executable} --ros-args -r __ns:=/gpu     (on a ROS 2 install)
""", "max_batch:=2")
"""``vrs-reasoner`` and ``vrs-lifecycle-reasoner``."""


def help_parser(prog: str, node: NodeHelp, lifecycle: bool) -> argparse.ArgumentParser:
    """The command-line parser of ``node`` (its lifecycle variant if ``lifecycle``): its help is the
    node module's docstring (Sphinx markup dropped), every parameter with its default and
    description, and how to pass ROS arguments, with examples."""
    parameters = [f"parameters ({node.documented}):", *node.parameters(lifecycle)]
    ros = ROS_ARGUMENTS_HELP + node.examples.format(prog=prog, executable=node.ros2_executable(lifecycle))
    if lifecycle:
        ros += f"  {prog} --ros-args -p autostart:=false     (left unconfigured for a lifecycle manager)\n"
    return argparse.ArgumentParser(
        prog=prog, usage="%(prog)s [-h] [--ros-args [-p NAME:=VALUE] [-r FROM:=TO] [--params-file FILE] ...]",
        description=plain_text(module_doc(node.module)), epilog="\n".join(parameters) + "\n\n" + ros,
        formatter_class=argparse.RawDescriptionHelpFormatter)


def plain_text(doc: str) -> str:
    """``doc`` (a module docstring) as ``--help`` prints it: Sphinx roles (``:func:`~x.y```) reduced
    to their target, double backquotes dropped."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", doc).replace("``", "")


def module_doc(module: str) -> str:
    """The docstring of ``module`` (a dotted name) as its ``__doc__`` would be, read from its source
    file without importing it (its parent packages are imported): a node's module loads torch."""
    source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
    return ast.get_docstring(ast.parse(source), clean=False)


def parse_command_line(args: list[str] | None, node: NodeHelp, lifecycle: bool) -> None:
    """Check ``node``'s command line (``args`` like ``sys.argv``, program first; None: ``sys.argv``)
    before ROS starts: ``-h``/``--help`` prints the help (:func:`help_parser`) and
    exits 0; an argument outside ``--ros-args ...``, which ROS would silently ignore, is an error
    (exit 2)."""
    argv = list(sys.argv if args is None else args)
    prog = Path(argv[0]).name if argv else node.ros2_executable(lifecycle).replace("_", "-")
    parser = help_parser(prog, node, lifecycle)
    _, unknown = parser.parse_known_args(remove_ros_args(argv)[1:])
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (ROS arguments go after --ros-args, "
                     f"e.g. {prog} --ros-args -p {node.hint})")


def serve(node_class, args: list[str] | None, start=None) -> int:
    """Run a ``node_class()`` node (then ``start(node)`` if given) until SIGINT or SIGTERM
    (:mod:`vrs_node.ros.cli`), which end it with exit code 0 at any point, idle or busy (while it
    spins, after the callback in progress); the node is destroyed (its engine threads stopped)
    before ROS shuts down, and a query still inside a model call then is not waited for
    (:func:`~vrs_node.core.process_exit.safe_exit_code`). A parameter the node refuses at start
    is one error line, exit code 1."""
    code = 0
    try:
        with ros_command(args) as stop:
            try:
                node = node_class()
            except (ValueError, ParameterException) as exc:
                rclpy.logging.get_logger("vrs_node").error(f"cannot start: {exc}")
                code = 1
            else:
                try:
                    if start is not None:
                        start(node)
                    stop.spin(node)
                finally:
                    node.destroy_node()
    except KeyboardInterrupt:  # the stop signal before the node spun (loading models, say)
        pass
    return safe_exit_code(code)


def configure_and_activate(node) -> None:
    """Make a lifecycle ``node``'s ``configure`` transition and, once that succeeded, its
    ``activate`` one, unless its ``autostart`` parameter is false (then a lifecycle manager or
    ``ros2 lifecycle set`` drives it): the ``start`` of :func:`serve` for the lifecycle commands."""
    if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
        node.trigger_activate()
