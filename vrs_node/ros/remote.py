"""The tracker's link to a ``vrs-reasoner`` elsewhere (``vrs-node`` with ``reasoner:=remote:<namespace>``).

(:func:`~vrs_node.ros.params.reasoner_namespace` reads the ``reasoner`` parameter.)
:class:`RemoteReasonerLink` carries the protocol's messages for a
:class:`~vrs_node.core.remote_reasoner.RemoteGrounder`: requests on
``<namespace>/vrs_reasoner/requests``, responses from ``<namespace>/vrs_reasoner/responses``
(absolute names; both :data:`~vrs_node.ros.qos.PROTOCOL_QOS`). It has its own small node
(``<tracker node name>_reasoner_client``, in the tracker's namespace, without the process's
global ROS arguments, so a ``__node:=`` rename of the tracker does not rename it too) spun by its
own thread: a response is taken while a query waits on the grounding thread, whatever the
tracker node's executor is doing (in sync mode the query waits inside the image callback).
"""

from __future__ import annotations

import os
import secrets

import rclpy
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String

from vrs_node.core.reasoner_protocol import MAX_CLIENT_ID_CHARS
from vrs_node.core.remote_reasoner import RemoteGrounder
from vrs_node.core.tracker import StreamingTracker
from vrs_node.ros.cli import SpinThread
from vrs_node.ros.qos import PROTOCOL_QOS

REASONER_NODE_NAME = "vrs_reasoner"
"""The reasoner's node name, under which its protocol topics live (``~/requests``, ``~/responses``)."""


def protocol_topics(namespace: str) -> tuple[str, str]:
    """The (requests, responses) topics of the reasoner in ``namespace`` (absolute)."""
    base = f"{namespace.rstrip('/')}/{REASONER_NODE_NAME}"
    return f"{base}/requests", f"{base}/responses"


class RemoteReasonerLink:
    """The ROS transport of a :class:`RemoteGrounder` (module docstring). ``host``: the tracker's
    node (its name, namespace and context); ``namespace``: the reasoner's (:func:`reasoner_namespace`);
    ``timeout_s``: the ``reasoner_timeout_s`` parameter. :meth:`grounder` makes the grounder over
    the engine's tracker; :meth:`close` ends the link (call it after the engine is closed)."""

    def __init__(self, host, namespace: str, timeout_s: float):
        self.requests_topic, self.responses_topic = protocol_topics(namespace)
        self.timeout_s = timeout_s
        unique = f"#{os.getpid()}-{secrets.token_hex(4)}"  # a restarted tracker never takes an old answer
        self.client_id = f"{host.get_fully_qualified_name()}{unique}"[-MAX_CLIENT_ID_CHARS:]
        self.node = rclpy.create_node(f"{host.get_name()}_reasoner_client", namespace=host.get_namespace(),
                                      context=host.context, use_global_arguments=False,
                                      start_parameter_services=False)
        self._requests = self.node.create_publisher(String, self.requests_topic, PROTOCOL_QOS)
        self._grounder: RemoteGrounder | None = None
        self.node.create_subscription(String, self.responses_topic, self._on_response, PROTOCOL_QOS)
        executor = SingleThreadedExecutor(context=host.context)
        executor.add_node(self.node)
        self._spinner = SpinThread(executor, "vrs-reasoner-link", on_error=lambda exc: self.node.get_logger().error(
            f"reasoner response handling failed: {exc!r}", throttle_duration_sec=5.0))

    def grounder(self, tracker: StreamingTracker) -> RemoteGrounder:
        """The engine's grounder: queries go to the reasoner, TKS runs on ``tracker``."""
        self._grounder = RemoteGrounder(tracker, self.client_id, self._send, self.timeout_s, reachable=self.reachable)
        return self._grounder

    def reachable(self) -> bool:
        """True while a subscriber (a reasoner) listens on the request topic."""
        return self._requests.get_subscription_count() > 0

    def close(self) -> None:
        """Stop the spin thread and destroy the link's node."""
        self._spinner.stop()
        self.node.destroy_node()

    def _send(self, text: str) -> None:
        self._requests.publish(String(data=text))

    def _on_response(self, msg: String) -> None:
        grounder = self._grounder
        if grounder is not None:
            grounder.on_response(msg.data)
