"""Reader markers: a restore says, next to the image, that it is reading it.

`archctl gc` must never remove an image that a restore is reading, on this host or on another
one sharing the storage. A restore therefore creates an empty file
`<parent>/.reading~<image>~<host>~<pid>~<random>` before it validates the image and removes it
when it is done. gc treats a marker as live when it was made on this host by a process that
still runs, or, from another host, when it is younger than READ_TTL_SECONDS (a restore takes
seconds to a few minutes). gc moves the image aside first and then looks for markers, so a
restore that starts meanwhile finds no image rather than one being deleted, and gc puts the
image back when it finds a reader.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterator

READER_PREFIX = ".reading~"
SEPARATOR = "~"
READ_TTL_SECONDS = 1800.0


class Reader(NamedTuple):
    name: str
    host: str
    pid: int
    age: float


@contextlib.contextmanager
def reading(image_dir: str) -> Iterator[None]:
    """Mark `image_dir` as being read while the block runs (best effort: no marker when the
    parent directory is absent or not writable; the image then has no image to read either)."""
    from arch.checkpoint.pool import host_label

    parent, name = os.path.split(os.path.normpath(image_dir))
    marker = os.path.join(
        parent,
        SEPARATOR.join((READER_PREFIX[:-1], name, host_label(), str(os.getpid()),
                        os.urandom(6).hex())),
    )  # fmt: skip
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        os.close(fd)
    except OSError:
        marker = ""
    try:
        yield
    finally:
        if marker:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)


def readers_of(image_dir: str, now: float | None = None) -> list[Reader]:
    """The live readers of `image_dir` (see the module's rule)."""
    from arch.checkpoint.pool import host_label

    now = time.time() if now is None else now
    here = host_label()
    parent, name = os.path.split(os.path.normpath(image_dir))
    live = []
    for reader in _markers(parent, name, now):
        if reader.host == here:
            if _pid_alive(reader.pid):
                live.append(reader)
        elif reader.age < READ_TTL_SECONDS:
            live.append(reader)
    return live


def stale_markers(parent: str, now: float | None = None) -> list[str]:
    """Paths of markers in `parent` that no longer protect anything."""
    from arch.checkpoint.pool import host_label

    now = time.time() if now is None else now
    here = host_label()
    return [
        os.path.join(parent, reader.name)
        for reader in _markers(parent, None, now)
        if (reader.host == here and not _pid_alive(reader.pid))
        or (reader.host != here and reader.age >= READ_TTL_SECONDS)
    ]


def _markers(parent: str, image_name: str | None, now: float) -> list[Reader]:
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    found = []
    for name in names:
        if not name.startswith(READER_PREFIX):
            continue
        parts = name[len(READER_PREFIX) :].split(SEPARATOR)
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        if image_name is not None and parts[0] != image_name:
            continue
        try:
            mtime = os.stat(os.path.join(parent, name), follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        found.append(Reader(name, parts[1], int(parts[2]), now - mtime))
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
