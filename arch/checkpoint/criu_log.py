"""CRIU's logs, quoted in error messages: the first errors (the cause) and the last lines."""

from __future__ import annotations

import os

LOG_TAIL_LINES = 12
LOG_READ_BYTES = 256 * 1024


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    """A CRIU log's first error lines (the cause) and its last lines, for error messages."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, log_file.tell() - LOG_READ_BYTES))
            text = log_file.read().decode("utf-8", "replace")
    except OSError:
        return f"({path} unreadable)"
    all_lines = text.splitlines()
    errors = [line for line in all_lines if "Error (" in line][:3]
    tail = [line for line in all_lines[-lines:] if line not in errors]
    return "\n".join([*errors, "...", *tail] if errors else tail)
