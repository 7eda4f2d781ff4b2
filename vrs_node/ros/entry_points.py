"""The nodes' console entry points (``setup.py``): ``vrs-node``, ``vrs-lifecycle-node``,
``vrs-reasoner``, ``vrs-lifecycle-reasoner`` and their ``ros2 run`` names.

Each checks its command line and answers ``--help`` before it imports its node's module, which
loads torch, transformers and sam2 (seconds): this module and what it imports load no torch. The
help's text is the node module's docstring, read from its source without running it
(:mod:`vrs_node.ros.node_command`). ``args`` is an argv list like ``sys.argv`` (program first; None:
``sys.argv``).
"""

from __future__ import annotations

from vrs_node.ros.node_command import REASONER_NODE, TRACKING_NODE, configure_and_activate, parse_command_line, serve


def node_main(args=None) -> int:
    """``vrs-node`` (``ros2 run vrs_node vrs_node``): the tracking node, serving until a stop signal."""
    parse_command_line(args, TRACKING_NODE, lifecycle=False)
    from vrs_node.ros.node import VrsNode

    return serve(VrsNode, args)


def node_lifecycle_main(args=None) -> int:
    """``vrs-lifecycle-node`` (``ros2 run vrs_node vrs_lifecycle_node``): configures and activates
    itself unless ``autostart`` is false (then a lifecycle manager or ``ros2 lifecycle set`` drives it)."""
    parse_command_line(args, TRACKING_NODE, lifecycle=True)
    from vrs_node.ros.node import VrsLifecycleNode

    return serve(VrsLifecycleNode, args, start=configure_and_activate)


def reasoner_main(args=None) -> int:
    """``vrs-reasoner`` (``ros2 run vrs_node vrs_reasoner``): the reasoner node."""
    parse_command_line(args, REASONER_NODE, lifecycle=False)
    from vrs_node.ros.reasoner import ReasonerNode

    return serve(ReasonerNode, args)


def reasoner_lifecycle_main(args=None) -> int:
    """``vrs-lifecycle-reasoner``: configures and activates itself unless ``autostart`` is false."""
    parse_command_line(args, REASONER_NODE, lifecycle=True)
    from vrs_node.ros.reasoner import ReasonerLifecycleNode

    return serve(ReasonerLifecycleNode, args, start=configure_and_activate)
