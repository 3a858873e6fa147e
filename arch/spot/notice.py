"""The notice marker: `<state_dir>/.spot-notice` exists while a Spot interruption notice is active.

spot-watch writes it (JSON: the notice, when it was seen, and later the outcome of the
checkpoint run) before it checkpoints anything, and removes it when the notice goes away. While
it exists, arch-runc turns the stop (`kill`) of an ARCH container into a checkpoint, so that a
stop by Docker or the ECS agent racing spot-watch still ends in an image. The native front only
stat()s it: keep MARKER_NAME in sync with launcher.c. The leading dot keeps it apart from the
namespace directories beside it (containerd namespaces begin with a letter or digit).

state_dir is on tmpfs (/run): a marker never outlives the boot it was written in.

Imported by arch-runc's kill path: module-level imports stay cheap (json where it is used).
"""

from __future__ import annotations

import os
import time
from typing import Any

MARKER_NAME = ".spot-notice"
DIR_MODE = 0o700
FILE_MODE = 0o600


def marker_path(state_dir: str) -> str:
    return os.path.join(state_dir, MARKER_NAME)


def notice_active(state_dir: str) -> bool:
    return os.path.lexists(marker_path(state_dir))


def write_marker(state_dir: str, document: dict[str, Any]) -> None:
    """Create or replace the marker atomically (temp file + rename)."""
    import json

    os.makedirs(state_dir, mode=DIR_MODE, exist_ok=True)
    path = marker_path(state_dir)
    temp = f"{path}.tmp-{os.getpid()}"
    data = json.dumps(document, sort_keys=True).encode("utf-8")
    fd = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.rename(temp, path)
    except BaseException:
        if os.path.lexists(temp):
            os.unlink(temp)
        raise


def read_marker(state_dir: str) -> dict[str, Any] | None:
    """The marker's document; None without a marker, {} when it cannot be read as one."""
    from arch.bounded_json import loads

    try:
        with open(marker_path(state_dir), "rb") as handle:
            document = loads(handle.read(1 << 20))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def notice_seen_at(state_dir: str) -> float | None:
    """When spot-watch saw the active notice (epoch seconds, the marker's `seen_at`); None
    without a marker. A marker without a readable time counts as seen long ago (0.0): every
    stop signal then belongs to the notice, which keeps images rather than removing them."""
    import calendar

    document = read_marker(state_dir)
    if document is None:
        return None
    seen_at = document.get("seen_at")
    try:
        return float(calendar.timegm(time.strptime(str(seen_at), "%Y-%m-%dT%H:%M:%SZ")))
    except (ValueError, OverflowError):
        return 0.0


def remove_marker(state_dir: str) -> bool:
    try:
        os.unlink(marker_path(state_dir))
    except FileNotFoundError:
        return False
    return True
