"""The nodes' console entry points (``setup.py``): ``vrs-node``, ``vrs-lifecycle-node``,
``vrs-reasoner``, ``vrs-lifecycle-reasoner`` and their ``ros2 run`` names.

Each checks its command line and answers ``--help`` before it imports its node's module, which
loads torch, transformers and sam2 (seconds): this module and what it imports load no torch. The
help's text is the node module's docstring, read from its source without running it
(:func:`module_doc`). ``args`` is an argv list like ``sys.argv`` (program first; None:
``sys.argv``).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from pathlib import Path

from rclpy.utilities import remove_ros_args

from vrs_node.ros.node_command import configure_and_activate, parse_command_line, plain_text, serve
from vrs_node.ros.params import parameter_help, reasoner_parameters

NODE_MODULE = "vrs_node.ros.node"
REASONER_MODULE = "vrs_node.ros.reasoner"


def node_main(args=None) -> int:
    """``vrs-node`` (``ros2 run vrs_node vrs_node``): the tracking node, serving until a stop signal."""
    parse_command_line(args, module_doc(NODE_MODULE), lifecycle=False)
    from vrs_node.ros.node import VrsNode

    return serve(VrsNode, args)


def node_lifecycle_main(args=None) -> int:
    """``vrs-lifecycle-node`` (``ros2 run vrs_node vrs_lifecycle_node``): configures and activates
    itself unless ``autostart`` is false (then a lifecycle manager or ``ros2 lifecycle set`` drives it)."""
    parse_command_line(args, module_doc(NODE_MODULE), lifecycle=True)
    from vrs_node.ros.node import VrsLifecycleNode

    return serve(VrsLifecycleNode, args, start=configure_and_activate)


def reasoner_main(args=None) -> int:
    """``vrs-reasoner`` (``ros2 run vrs_node vrs_reasoner``): the reasoner node."""
    check_reasoner_command_line(args, lifecycle=False)
    from vrs_node.ros.reasoner import ReasonerNode

    return serve(ReasonerNode, args)


def reasoner_lifecycle_main(args=None) -> int:
    """``vrs-lifecycle-reasoner``: configures and activates itself unless ``autostart`` is false."""
    check_reasoner_command_line(args, lifecycle=True)
    from vrs_node.ros.reasoner import ReasonerLifecycleNode

    return serve(ReasonerLifecycleNode, args, start=configure_and_activate)


def check_reasoner_command_line(args: list[str] | None, lifecycle: bool) -> None:
    """The reasoner's ``--help`` (its module's docstring and its parameters) and no argument outside
    ``--ros-args`` (argparse's error, exit 2)."""
    lines = parameter_help(lifecycle, reasoner_parameters())
    argv = list(sys.argv if args is None else args)
    parser = argparse.ArgumentParser(prog=Path(argv[0]).name if argv else "vrs-reasoner",
                                     description=plain_text(module_doc(REASONER_MODULE)),
                                     epilog="parameters (--ros-args -p NAME:=VALUE):\n" + "\n".join(lines),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(remove_ros_args(argv)[1:])


def module_doc(module: str) -> str:
    """The docstring of ``module`` (a dotted name) as its ``__doc__`` would be, read from its source
    file without importing it (its parent packages are imported)."""
    source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
    return ast.get_docstring(ast.parse(source), clean=False)
