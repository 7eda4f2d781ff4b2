"""Launch vrs_node with the packaged parameter file and remappable image topic.

ros2 launch vrs_node vrs.launch.py image:=/camera/image_raw model_profile:=tiny-random \
    instruction:="the cup it should pick up"
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    """The node in namespace ``namespace``, its ``image`` input remapped to ``image``."""
    args = [
        DeclareLaunchArgument("namespace", default_value="vrs", description="node namespace"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="input image topic"),
        DeclareLaunchArgument("model_profile", default_value="tiny-random", description="model profile"),
        DeclareLaunchArgument("device", default_value="auto", description="torch device"),
        DeclareLaunchArgument("instruction", default_value="", description="what to segment ('' = none yet)"),
        DeclareLaunchArgument("vrshq_checkpoint", default_value="",
                              description="released VRS-HQ directory (model_profile vrshq-7b)"),
        DeclareLaunchArgument(
            "params_file", description="parameter YAML",
            default_value=PathJoinSubstitution([FindPackageShare("vrs_node"), "config", "vrs_node.yaml"])),
    ]
    node = Node(
        package="vrs_node", executable="vrs_node", name="vrs_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"),
                    {"model_profile": LaunchConfiguration("model_profile"),
                     "device": LaunchConfiguration("device"),
                     "instruction": LaunchConfiguration("instruction"),
                     "vrshq_checkpoint": LaunchConfiguration("vrshq_checkpoint")}],
        remappings=[("image", LaunchConfiguration("image"))],
        additional_env={"OMP_WAIT_POLICY": "PASSIVE"},
        output="screen",
    )
    return LaunchDescription([*args, node])
