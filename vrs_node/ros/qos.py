"""QoS profiles shared by vrs_node's ROS 2 nodes (the node, vrs-reasoner, vrs-camera, vrs-view, vrs-demo), and the
fix the node names for an incompatible-QoS match (:func:`qos_fix`)."""

from rclpy.qos import DurabilityPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind

RELIABLE_5 = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
"""Reliable, depth 5: the node's prompt, outputs and ``/diagnostics``; the camera and viewer's
images when not best-effort. Shared: pass it with no ``qos_overriding_options`` (rclpy applies
overrides to the profile object in place)."""
PROTOCOL_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
"""QoS of the reasoner protocol's topics (``vrs_reasoner/requests``, ``vrs_reasoner/responses``):
reliable, room for a burst from several clients."""
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""QoS of the ``instruction`` topic: the last instruction reaches subscribers that start later."""


def qos_fix(topic: str, policy: QoSPolicyKind, side: str) -> str:
    """How to fix an incompatible-QoS match on ``topic`` where this node is the ``side``
    ("subscription" or "publisher") and ``policy`` is the last incompatible policy."""
    name = qos_policy_name_from_kind(policy)
    override = f"qos_overrides.{topic}.{side}"
    if policy == QoSPolicyKind.RELIABILITY and side == "subscription":
        return (f"the publisher is best effort and this subscription reliable: publish reliable "
                f"(vrs-camera --reliable) or run the node with -p {override}.reliability:=best_effort")
    if policy == QoSPolicyKind.RELIABILITY:
        return f"a subscriber asks for reliable delivery: run the node with -p {override}.reliability:=reliable"
    if policy == QoSPolicyKind.DURABILITY and side == "publisher":
        return f"a subscriber asks for transient_local durability: subscribe volatile to {topic}"
    return f"make the {name} policies of both sides match (-p {override}.<policy>:=... on this node)"
