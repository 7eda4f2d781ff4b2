"""ament_python build of vrs_node (works with colcon on a ROS 2 install and with pip)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "vrs_node"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench", "bench.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/sample/blackswan/JPEGImages", glob("sample/blackswan/JPEGImages/*.jpg")),
        ("share/" + package_name + "/sample/blackswan/Annotations", glob("sample/blackswan/Annotations/*.png")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vrs_node maintainers",
    maintainer_email="vrs_node@example.com",
    description="Language-instructed streaming video segmentation as a ROS 2 node.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "vrs-node = vrs_node.ros.entry_points:node_main",
            "vrs_node = vrs_node.ros.entry_points:node_main",
            "vrs-lifecycle-node = vrs_node.ros.entry_points:node_lifecycle_main",
            "vrs_lifecycle_node = vrs_node.ros.entry_points:node_lifecycle_main",
            "vrs-demo = vrs_node.ros.demo:main",
            "vrs-bag = vrs_node.eval.bag:main",
            "vrs-replay = vrs_node.eval.replay:main",
            "vrs-parity = vrs_node.eval.parity:main",
            "vrs-camera = vrs_node.ros.camera:main",
            "vrs-view = vrs_node.ros.viewer:main",
            "vrs-reasoner = vrs_node.ros.entry_points:reasoner_main",
            "vrs_reasoner = vrs_node.ros.entry_points:reasoner_main",
            "vrs-lifecycle-reasoner = vrs_node.ros.entry_points:reasoner_lifecycle_main",
            "vrs_lifecycle_reasoner = vrs_node.ros.entry_points:reasoner_lifecycle_main",
        ],
    },
)
