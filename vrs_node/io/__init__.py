"""ROS-free conversions between ROS message layouts and numpy, used by eval/ and ros/."""
