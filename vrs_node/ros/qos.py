"""QoS profiles shared by vrs_node's ROS 2 nodes (the node, vrs-camera, vrs-view, vrs-demo)."""

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

RELIABLE_5 = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
"""Reliable, depth 5: the node's prompt, outputs and ``/diagnostics``; the camera and viewer's
images when not best-effort. Shared: pass it with no ``qos_overriding_options`` (rclpy applies
overrides to the profile object in place)."""
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""QoS of the ``instruction`` topic: the last instruction reaches subscribers that start later."""
