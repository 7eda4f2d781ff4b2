"""ROS-free streaming engine: frame window, SAM-2 streaming tracker, engine."""
