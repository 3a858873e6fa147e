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
PID_DIGITS_MAX = 10
PID_LIMIT = 2**31  # pid_t: os.kill of a larger number overflows


class Reader(NamedTuple):
    name: str
    host: str
    pid: int
    age: float


@contextlib.contextmanager
def reading(root: str, relative: str) -> Iterator[None]:
    """Mark the image `relative` beneath `root` as being read while the block runs. Its parent
    is opened beneath the root following no symlink. Best effort: without a parent directory
    there is no image to read either, and a marker that cannot be made protects nothing."""
    from arch.checkpoint.storage.beneath import open_beneath, opened_root
    from arch.checkpoint.storage.pool import host_label

    parent, name = os.path.split(relative)
    marker = SEPARATOR.join(
        (READER_PREFIX[:-1], name, host_label(), str(os.getpid()), os.urandom(6).hex())
    )
    parent_fd = -1
    try:
        with opened_root(root) as root_fd:
            parent_fd = open_beneath(root_fd, parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        os.close(os.open(marker, flags, 0o600, dir_fd=parent_fd))
    except OSError:
        if parent_fd >= 0:
            os.close(parent_fd)
        parent_fd = -1
    try:
        yield
    finally:
        if parent_fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker, dir_fd=parent_fd)
            os.close(parent_fd)


def readers_of(image_dir: str, now: float | None = None) -> list[Reader]:
    """The live readers of `image_dir` (see the module's rule); its parent is opened beneath
    "/" following no symlink (after resolving the path once, as gc lists it)."""
    parent, name = os.path.split(os.path.normpath(image_dir))
    with _opened(parent) as parent_fd:
        return [] if parent_fd is None else readers_at(parent_fd, name, now)


def readers_at(parent_fd: int, image_name: str, now: float | None = None) -> list[Reader]:
    """The live readers of the image `image_name` in the directory `parent_fd`."""
    from arch.checkpoint.storage.pool import host_label

    now = time.time() if now is None else now
    here = host_label()
    live = []
    for reader in _markers(parent_fd, image_name, now):
        if reader.host == here:
            if _pid_alive(reader.pid):
                live.append(reader)
        elif reader.age < READ_TTL_SECONDS:
            live.append(reader)
    return live


def stale_markers(parent: str, now: float | None = None) -> list[str]:
    """Paths of markers in `parent` that no longer protect anything (looked at as in
    readers_of)."""
    with _opened(parent) as parent_fd:
        names = [] if parent_fd is None else stale_markers_at(parent_fd, now)
    return [os.path.join(parent, name) for name in names]


def stale_markers_at(parent_fd: int, now: float | None = None) -> list[str]:
    """Names of the markers in the directory that no longer protect anything."""
    from arch.checkpoint.storage.pool import host_label

    now = time.time() if now is None else now
    here = host_label()
    return [
        reader.name
        for reader in _markers(parent_fd, None, now)
        if (reader.host == here and not _pid_alive(reader.pid))
        or (reader.host != here and reader.age >= READ_TTL_SECONDS)
    ]


def remove_stale_markers_at(parent_fd: int, now: float | None = None) -> list[str]:
    """Remove the markers in the directory that no longer protect anything (their restore's
    arch-runc was killed), never following a symlink; the names removed. Whatever else has a
    marker's name there (a directory, a FIFO) goes too: the name is ARCH's."""
    from arch.checkpoint.storage.beneath import remove_tree_at

    removed = []
    for name in stale_markers_at(parent_fd, now):
        remove_tree_at(parent_fd, name)
        removed.append(name)
    return removed


@contextlib.contextmanager
def _opened(path: str) -> Iterator[int | None]:
    """`path` resolved once, then opened beneath "/" following no symlink; None when absent."""
    from arch.checkpoint.storage.beneath import open_beneath, opened_root

    resolved = os.path.realpath(path).lstrip("/")
    try:
        with opened_root("/") as root_fd:
            parent_fd = open_beneath(root_fd, resolved)
    except OSError:
        yield None
        return
    try:
        yield parent_fd
    finally:
        os.close(parent_fd)


def _markers(parent_fd: int, image_name: str | None, now: float) -> list[Reader]:
    try:
        names = os.listdir(parent_fd)
    except OSError:
        return []
    found = []
    for name in names:
        if not name.startswith(READER_PREFIX):
            continue
        parts = name[len(READER_PREFIX) :].split(SEPARATOR)
        pid = parts[2] if len(parts) == 4 else ""
        if not (pid.isascii() and pid.isdigit()) or len(pid) > PID_DIGITS_MAX:
            continue
        if image_name is not None and parts[0] != image_name:
            continue
        try:
            mtime = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        found.append(Reader(name, parts[1], int(parts[2]), now - mtime))
    return found


def _pid_alive(pid: int) -> bool:
    if not 0 < pid < PID_LIMIT:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
