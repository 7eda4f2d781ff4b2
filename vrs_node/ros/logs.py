"""The ROS-free core's Python log records (loggers ``vrs_node.*``) on a node's ROS logger."""

from __future__ import annotations

import logging

CORE_LOGGER = "vrs_node"


class RosLogHandler(logging.Handler):
    """Forwards the Python log records of the ROS-free core to a node's ROS logger, so each appears
    once, formatted like the node's own lines, and reaches /rosout."""

    def __init__(self, ros_logger):
        super().__init__()
        self._ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            log = self._ros_logger.error
        elif record.levelno >= logging.WARNING:
            log = self._ros_logger.warning
        elif record.levelno >= logging.INFO:
            log = self._ros_logger.info
        else:
            log = self._ros_logger.debug
        log(f"{record.name}: {self.format(record)}")


def forward_core_logs(handler: RosLogHandler) -> None:
    """Send the core's records to ``handler`` only (not also through a root handler a library may
    have set up) until :func:`stop_forwarding`."""
    core_logger = logging.getLogger(CORE_LOGGER)
    core_logger.addHandler(handler)
    core_logger.propagate = False


def stop_forwarding(handler: RosLogHandler) -> None:
    """Undo :func:`forward_core_logs` (the core's records propagate again once no handler is left)."""
    core_logger = logging.getLogger(CORE_LOGGER)
    core_logger.removeHandler(handler)
    core_logger.propagate = not core_logger.handlers
