"""Launch vrs_node with the packaged parameter file and remappable image topic.

ros2 launch vrs_node vrs.launch.py image:=/camera/image_raw model_profile:=tiny-random \
    instruction:="the cup it should pick up"
ros2 launch vrs_node vrs.launch.py lifecycle:=true autostart:=false   # a lifecycle manager drives it
ros2 launch vrs_node vrs.launch.py reasoner:=remote:/gpu   # the reasoner runs elsewhere (reasoner.launch.py)
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    """The node (plain, or the lifecycle variant with ``lifecycle:=true``) in namespace
    ``namespace``, its ``image`` input remapped to ``image``."""
    args = [
        DeclareLaunchArgument("namespace", default_value="vrs", description="node namespace"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="input image topic"),
        DeclareLaunchArgument("image_reliability", default_value="best_effort", choices=["best_effort", "reliable"],
                              description="QoS reliability of the image subscription (an absolute image topic); "
                                          "reliable for raw frames from another process"),
        DeclareLaunchArgument("image_transport", default_value="raw", choices=["raw", "compressed"],
                              description="raw: Image on image; compressed: CompressedImage on <image>/compressed"),
        DeclareLaunchArgument("lifecycle", default_value="false", choices=["true", "false"],
                              description="run the lifecycle node (vrs_lifecycle_node) instead of the plain one"),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="lifecycle node: configure and activate itself"),
        DeclareLaunchArgument("model_profile", default_value="tiny-random", description="model profile"),
        DeclareLaunchArgument("device", default_value="auto", description="torch device"),
        DeclareLaunchArgument("instruction", default_value="", description="what to segment ('' = none yet)"),
        DeclareLaunchArgument("vrshq_checkpoint", default_value="",
                              description="released VRS-HQ directory (model_profile vrshq-7b)"),
        DeclareLaunchArgument("reasoner", default_value="local",
                              description="local, or remote:<namespace> of a vrs-reasoner (reasoner.launch.py)"),
        DeclareLaunchArgument(
            "params_file", description="parameter YAML",
            default_value=PathJoinSubstitution([FindPackageShare("vrs_node"), "config", "vrs_node.yaml"])),
    ]
    # ROS 2's standard QoS override parameters are named after the resolved topic: one for each
    # transport (the one the node does not use is ignored).
    reliability = [arg for suffix in ("", "/compressed") for arg in (
        "-p", ["qos_overrides.", LaunchConfiguration("image"), suffix, ".subscription.reliability:=",
               LaunchConfiguration("image_reliability")])]
    common = dict(
        package="vrs_node", name="vrs_node", namespace=LaunchConfiguration("namespace"),
        ros_arguments=reliability,
        remappings=[("image", LaunchConfiguration("image"))],
        additional_env={"OMP_WAIT_POLICY": "PASSIVE"},
        output="screen",
    )
    parameters = [LaunchConfiguration("params_file"),
                  {"model_profile": LaunchConfiguration("model_profile"),
                   "device": LaunchConfiguration("device"),
                   "image_transport": LaunchConfiguration("image_transport"),
                   "instruction": LaunchConfiguration("instruction"),
                   "vrshq_checkpoint": LaunchConfiguration("vrshq_checkpoint"),
                   "reasoner": LaunchConfiguration("reasoner")}]
    plain = Node(executable="vrs_node", parameters=parameters,
                 condition=UnlessCondition(LaunchConfiguration("lifecycle")), **common)
    managed = Node(executable="vrs_lifecycle_node",
                   parameters=[*parameters, {"autostart": LaunchConfiguration("autostart")}],
                   condition=IfCondition(LaunchConfiguration("lifecycle")), **common)
    return LaunchDescription([*args, plain, managed])
