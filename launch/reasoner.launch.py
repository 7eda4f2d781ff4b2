"""Launch vrs-reasoner, the reasoner as its own node (README "Reasoner on another machine").

ros2 launch vrs_node reasoner.launch.py image:=/camera/image_raw model_profile:=vrshq-7b \
    vrshq_checkpoint:=/models/VRS-HQ device:=cuda max_batch:=4
ros2 launch vrs_node reasoner.launch.py image_transport:=compressed   # <image>/compressed, for another host

Requests go to ``/<namespace>/vrs_reasoner/requests``, responses come on ``.../responses``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    """The reasoner node in namespace ``namespace``, its ``image`` input remapped to ``image``."""
    args = [
        DeclareLaunchArgument("namespace", default_value="vrs", description="node namespace"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="input image topic"),
        DeclareLaunchArgument("image_transport", default_value="raw", choices=["raw", "compressed"],
                              description="raw: Image on image; compressed: CompressedImage on <image>/compressed"),
        DeclareLaunchArgument("model_profile", default_value="tiny-random", description="model profile"),
        DeclareLaunchArgument("device", default_value="auto", description="torch device"),
        DeclareLaunchArgument("vrshq_checkpoint", default_value="",
                              description="released VRS-HQ directory (model_profile vrshq-7b)"),
        DeclareLaunchArgument("window_frames", default_value="16", description="camera frames held"),
        DeclareLaunchArgument("max_batch", default_value="4", description="most instructions per batched prefill"),
        DeclareLaunchArgument("batch_wait_s", default_value="0.0",
                              description="how long a batch that is not full waits for more requests"),
    ]
    parameters = [{"model_profile": LaunchConfiguration("model_profile"), "device": LaunchConfiguration("device"),
                   "image_transport": LaunchConfiguration("image_transport"),
                   "vrshq_checkpoint": LaunchConfiguration("vrshq_checkpoint"),
                   "window_frames": ParameterValue(LaunchConfiguration("window_frames"), value_type=int),
                   "max_batch": ParameterValue(LaunchConfiguration("max_batch"), value_type=int),
                   "batch_wait_s": ParameterValue(LaunchConfiguration("batch_wait_s"), value_type=float)}]
    node = Node(package="vrs_node", executable="vrs_reasoner", name="vrs_reasoner",
                namespace=LaunchConfiguration("namespace"), parameters=parameters,
                remappings=[("image", LaunchConfiguration("image"))],
                additional_env={"OMP_WAIT_POLICY": "PASSIVE"}, output="screen")
    return LaunchDescription([*args, node])
