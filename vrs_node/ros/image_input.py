"""The camera input shared by ``vrs-node`` (:mod:`vrs_node.ros.interface`) and ``vrs-reasoner``
(:mod:`vrs_node.ros.reasoner`): the subscription of the ``image_transport`` parameter
(:func:`subscribe_image`) and the decode of its messages (:func:`decode_image`). What a node does
with a frame, or with one that does not decode, is its own."""

from __future__ import annotations

import copy

import numpy as np
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image

from vrs_node.io.image import compressed_msg_to_rgb, image_msg_to_rgb


def subscribe_image(node, transport: str, callback, incompatible_qos=None):
    """``node``'s camera subscription for ``transport`` (the ``image_transport`` parameter), calling
    ``callback`` with each message: ``raw``, sensor_msgs/Image on ``image``; ``compressed``,
    sensor_msgs/CompressedImage on ``<image>/compressed`` (``<image>`` the resolved, remapped
    ``image`` topic, as image_transport names it). Sensor-data QoS, overridable with the
    ``qos_overrides.<topic>.subscription.*`` parameters. ``incompatible_qos``: None, or a function of
    the resolved topic name giving the handler of an incompatible-QoS match."""
    if transport == "compressed":
        msg_type, topic = CompressedImage, node.resolve_topic_name("image") + "/compressed"
    else:
        msg_type, topic = Image, "image"
    events = None if incompatible_qos is None else \
        SubscriptionEventCallbacks(incompatible_qos=incompatible_qos(node.resolve_topic_name(topic)))
    # A copy: rclpy applies qos_overrides to the profile object it is given, in place, which
    # would make every later user of the shared qos_profile_sensor_data in this process reliable.
    return node.create_subscription(msg_type, topic, callback, copy.copy(qos_profile_sensor_data),
                                    qos_overriding_options=QoSOverridingOptions.with_default_policies(),
                                    event_callbacks=events)


def decode_image(msg, max_pixels: int, min_size=None) -> tuple[np.ndarray, tuple[int, int] | None]:
    """A camera message as ``(rgb, camera_hw)``: a CompressedImage by
    :func:`~vrs_node.io.image.compressed_msg_to_rgb` (``min_size`` as there, None: full size;
    ``camera_hw`` the camera frame's size from its header), an Image by
    :func:`~vrs_node.io.image.image_msg_to_rgb` (``camera_hw`` None: the image's own size).
    :class:`~vrs_node.io.image.ImageConversionError` for one that does not convert, or that has
    more than ``max_pixels`` pixels."""
    if isinstance(msg, CompressedImage):
        return compressed_msg_to_rgb(msg, max_pixels, min_size)
    return image_msg_to_rgb(msg, max_pixels), None
