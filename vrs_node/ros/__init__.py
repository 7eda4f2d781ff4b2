"""Thin ROS 2 adapters over the core engine (everything rclpy lives here)."""
