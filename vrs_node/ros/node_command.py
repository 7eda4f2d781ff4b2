"""The command line of ``vrs-node`` and ``vrs-lifecycle-node``: ``--help`` and the argument check
before ROS starts (:func:`parse_command_line`), serving a node until a stop signal (:func:`serve`;
also ``vrs-reasoner``'s) and a lifecycle node's start (:func:`configure_and_activate`)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.utilities import remove_ros_args

from vrs_node.ros.cli import ros_command
from vrs_node.ros.params import parameter_help

ROS_ARGUMENTS_HELP = """\
ROS arguments go after --ros-args: -p NAME:=VALUE sets a parameter, --params-file FILE.yaml sets
many (config/vrs_node.yaml, installed in share/vrs_node/config/), -r FROM:=TO remaps a topic (also
__ns:=/NAMESPACE, __node:=NAME). For example:

  {prog} --ros-args -p model_profile:=tiny-random -p mode:=sync -r image:=/camera/image_raw
  {prog} --ros-args --params-file config/vrs_node.yaml -r __ns:=/vrs -p instruction:="the black swan"
  ros2 run vrs_node {executable} --ros-args -p device:=cuda     (on a ROS 2 install)
"""
"""The end of a node's ``--help`` (:func:`help_parser`)."""


def help_parser(prog: str, about: str, lifecycle: bool) -> argparse.ArgumentParser:
    """The command-line parser of a node: its help is ``about`` (the node module's docstring: what the
    node does, its topics, services and lifecycle; Sphinx markup dropped), every parameter with its
    default and description (:func:`~vrs_node.ros.params.parameter_help`), and how to pass ROS
    arguments; ``lifecycle``: of the lifecycle node."""
    parameters = ["parameters (README \"Topics, services, parameters\"; all of them, commented, in "
                  "config/vrs_node.yaml):", *parameter_help(lifecycle)]
    ros = ROS_ARGUMENTS_HELP.format(prog=prog, executable="vrs_lifecycle_node" if lifecycle else "vrs_node")
    if lifecycle:
        ros += f"  {prog} --ros-args -p autostart:=false     (left unconfigured for a lifecycle manager)\n"
    return argparse.ArgumentParser(
        prog=prog, usage="%(prog)s [-h] [--ros-args [-p NAME:=VALUE] [-r FROM:=TO] [--params-file FILE] ...]",
        description=plain_text(about), epilog="\n".join(parameters) + "\n\n" + ros,
        formatter_class=argparse.RawDescriptionHelpFormatter)


def plain_text(doc: str) -> str:
    """``doc`` (a module docstring) as ``--help`` prints it: Sphinx roles (``:func:`~x.y```) reduced
    to their target, double backquotes dropped."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", doc).replace("``", "")


def parse_command_line(args: list[str] | None, about: str, lifecycle: bool) -> None:
    """Check a node's command line (``args`` like ``sys.argv``, program first; None: ``sys.argv``)
    before ROS starts: ``-h``/``--help`` prints the help (:func:`help_parser` with ``about``) and
    exits 0; an argument outside ``--ros-args ...``, which ROS would silently ignore, is an error
    (exit 2)."""
    argv = list(sys.argv if args is None else args)
    prog = Path(argv[0]).name if argv else ("vrs-lifecycle-node" if lifecycle else "vrs-node")
    parser = help_parser(prog, about, lifecycle)
    _, unknown = parser.parse_known_args(remove_ros_args(argv)[1:])
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (ROS arguments go after --ros-args, "
                     f"e.g. {prog} --ros-args -p mode:=sync)")


def serve(node_class, args: list[str] | None, start=None) -> int:
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


def configure_and_activate(node) -> None:
    """Make a lifecycle ``node``'s ``configure`` transition and, once that succeeded, its
    ``activate`` one, unless its ``autostart`` parameter is false (then a lifecycle manager or
    ``ros2 lifecycle set`` drives it): the ``start`` of :func:`serve` for the lifecycle commands."""
    if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
        node.trigger_activate()
