"""Camera (or video / folder of frames) into vrs_node, and the overlay on screen: ``vrs-camera``,
``vrs.launch.py`` and ``vrs-view`` on the node's ``overlay``.

ros2 launch vrs_node camera_demo.launch.py source:=0 instruction:="the cup" device:=cuda
ros2 launch vrs_node camera_demo.launch.py source:=/data/clip.mp4 rate:=15.0 image:=/robot/cam view:=false

The default source is the packaged blackswan sample frames, looped at 10 Hz. The camera's
``image`` output is remapped to ``image``, the topic vrs.launch.py's node reads. The camera
publishes reliable and the node subscribes reliable (full-size raw frames between processes are
mostly lost best effort). ``view:=false`` leaves the window out (e.g. without a display; watch
``/<namespace>/overlay`` with rqt_image_view or ``vrs-view`` then).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    """``vrs_camera`` publishing on ``image``; vrs_node (namespace ``namespace``) subscribed to it;
    ``vrs-view`` showing the node's overlay."""
    share = FindPackageShare("vrs_node")
    args = [
        DeclareLaunchArgument(
            "source", description="camera device index, video file or folder of JPEG/PNG frames",
            default_value=PathJoinSubstitution([share, "sample", "blackswan", "JPEGImages"])),
        DeclareLaunchArgument("rate", default_value="10.0",
                              description="camera rate in Hz (0 = the video's/device's own)"),
        DeclareLaunchArgument("loop", default_value="true", description="start a video/folder over at its end"),
        DeclareLaunchArgument("frame_id", default_value="camera", description="header.frame_id of the images"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("namespace", default_value="vrs", description="vrs_node namespace"),
        DeclareLaunchArgument("instruction", default_value="", description="what to segment ('' = none yet)"),
        DeclareLaunchArgument("model_profile", default_value="tiny-random", description="model profile"),
        DeclareLaunchArgument("device", default_value="auto", description="torch device"),
        DeclareLaunchArgument("view", default_value="true", choices=["true", "false"],
                              description="show the node's overlay in a vrs-view window"),
    ]
    camera = Node(
        package="vrs_node", executable="vrs-camera", name="vrs_camera",
        parameters=[{
            # value_type=str: launch would turn source:=0 into an integer.
            "source": ParameterValue(LaunchConfiguration("source"), value_type=str),
            "rate": ParameterValue(LaunchConfiguration("rate"), value_type=float),
            "loop": ParameterValue(LaunchConfiguration("loop"), value_type=bool),
            "frame_id": ParameterValue(LaunchConfiguration("frame_id"), value_type=str),
            "reliable": True,
        }],
        remappings=[("image", LaunchConfiguration("image"))],
        output="screen",
    )
    vrs = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "vrs.launch.py"])),
        launch_arguments={
            "image": LaunchConfiguration("image"),
            "namespace": LaunchConfiguration("namespace"),
            "instruction": LaunchConfiguration("instruction"),
            "model_profile": LaunchConfiguration("model_profile"),
            "device": LaunchConfiguration("device"),
            "image_reliability": "reliable",
        }.items(),
    )
    # Relative "overlay" in the node's namespace: /<namespace>/overlay.
    view = Node(package="vrs_node", executable="vrs-view", namespace=LaunchConfiguration("namespace"),
                arguments=["overlay"], condition=IfCondition(LaunchConfiguration("view")), output="screen")
    return LaunchDescription([*args, camera, vrs, view])
