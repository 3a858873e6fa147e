"""ARCH's log: a file and a level from the host configuration, never runc's stdout/stderr.

containerd parses what runc prints, so arch-runc logs only to its own file. When that file
cannot be opened, records go nowhere rather than onto runc's streams.
"""

from __future__ import annotations

import logging
import os

LOGGER_NAME = "arch"
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def setup_logging(log_file: str, level: str) -> logging.Logger:
    """Attach the log file (created 0600 in a 0700 directory) to the `arch` logger once."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(_file_handler(log_file))
    return logger


def _file_handler(log_file: str) -> logging.Handler:
    try:
        os.makedirs(os.path.dirname(log_file), mode=0o700, exist_ok=True)
        descriptor = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return logging.NullHandler()
    handler = logging.StreamHandler(os.fdopen(descriptor, "a", encoding="utf-8"))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler
