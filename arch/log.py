"""ARCH's log: a file and a level from the host configuration, never runc's stdout/stderr.

containerd parses what runc prints, so arch-runc logs only to its own file. When that file
cannot be opened, records go nowhere rather than onto runc's streams.

archctl's services (run by systemd) also log to stderr when it is connected to the journal
(systemd sets JOURNAL_STREAM to its device:inode): one line per record with the sd-daemon
priority prefix (`<3>` error ... `<7>` debug) and no timestamp, which journald adds itself.
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER_NAME = "arch"
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
_SYSLOG_PRIORITIES = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def setup_logging(log_file: str, level: str, journal: bool = False) -> logging.Logger:
    """Attach the log file (created 0600 in a 0700 directory) to the `arch` logger once;
    with `journal` (long-running archctl services only), also stderr when journald reads it."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(_file_handler(log_file))
        if journal and stderr_is_journal():
            journal_handler = logging.StreamHandler(sys.stderr)
            journal_handler.setFormatter(_JournalFormatter(JOURNAL_FORMAT))
            logger.addHandler(journal_handler)
    return logger


def stderr_is_journal() -> bool:
    """Whether stderr is the journal stream systemd connected (JOURNAL_STREAM=dev:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for floor, p in _SYSLOG_PRIORITIES if record.levelno >= floor), 7)
        # One journal entry per line: continuation lines keep the record's priority.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def _file_handler(log_file: str) -> logging.Handler:
    try:
        os.makedirs(os.path.dirname(log_file), mode=0o700, exist_ok=True)
        descriptor = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return logging.NullHandler()
    handler = logging.StreamHandler(os.fdopen(descriptor, "a", encoding="utf-8"))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler
