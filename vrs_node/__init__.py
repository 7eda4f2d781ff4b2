"""vrs_node: language-instructed video segmentation as a streaming ROS 2 node.

The ROS-free core (``vrs_node.core``, ``vrs_node.models``) is the product; ``vrs_node.ros`` is a
thin adapter over it and ``vrs_node.eval`` replays recordings through the same engine. Both use
``vrs_node.io``, the ROS-free conversions between ROS image messages and numpy.
"""

__version__ = "0.1.0"
