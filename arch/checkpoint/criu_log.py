"""CRIU's logs, quoted in error messages: the errors that explain a failure and the last lines."""

from __future__ import annotations

import os
import re
import stat

LOG_TAIL_LINES = 12
LOG_READ_BYTES = 256 * 1024
CAUSE_LINES = 3
ERROR_MARK = "Error ("
# CRIU's closing summaries of a failure, which name no cause (criu/cr-dump.c, cr-restore.c).
_SUMMARIES = ("Dumping FAILED", "Restoring FAILED", "Dump files (pid:")
# Errors CRIU logs and then carries on from: never the cause of a failure.
_CARRIED_ON = ("rlimit: Can't setup RLIMIT_NOFILE",)
_TIMESTAMP = re.compile(r"^\(\s*\d+\.\d+\)\s*")
# A container's CRIU configuration names CRIU's log and config files: never a FIFO or a device.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


def open_regular_file(path: str, follow_symlinks: bool = True) -> int:
    """A descriptor of the regular file `path`, opened without blocking (OSError for a FIFO,
    a device, a directory or, without follow_symlinks, a symlink): files a container's CRIU
    configuration names are read without letting it make ARCH wait or read forever."""
    fd = os.open(path, _OPEN_FLAGS if follow_symlinks else _OPEN_FLAGS | os.O_NOFOLLOW)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return fd


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    """A CRIU log's errors that explain the failure (causes first) and its last lines."""
    try:
        with open(open_regular_file(path), "rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, log_file.tell() - LOG_READ_BYTES))
            text = log_file.read().decode("utf-8", "replace")
    except OSError:
        return f"({path} unreadable)"
    all_lines = text.splitlines()
    errors = cause_lines(all_lines)
    tail = [line for line in all_lines[-lines:] if line not in errors]
    return "\n".join([*errors, "...", *tail] if errors else tail)


def cause_lines(lines: list[str]) -> list[str]:
    """CRIU's error lines, those that can explain a failure first (not a closing summary, not
    an error CRIU carries on from), at most CAUSE_LINES."""
    errors = [line for line in lines if ERROR_MARK in line]
    causes = [line for line in errors if not _summary_or_carried_on(line)]
    others = [line for line in errors if line not in causes]
    return [*causes, *others][:CAUSE_LINES]


def without_timestamp(line: str) -> str:
    """A log line without CRIU's "(00.102484) " time prefix."""
    return _TIMESTAMP.sub("", line.strip())


def _summary_or_carried_on(line: str) -> bool:
    return any(marker in line for marker in (*_SUMMARIES, *_CARRIED_ON))
