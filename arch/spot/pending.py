"""Images on the way: a pool member's image that a host under a Spot notice is still writing.

When a notice arrives, spot-watch records for every opted-in pool member on this host that its
image is coming, in the pool directory on the shared storage, with the notice's time as the
deadline (after it the host is gone and the image will never come). The record is removed once
the member's image is in the pool, or its checkpoint failed.

A new member of the pool whose create finds no unclaimed image waits while a record promises
one (arch.shim's pool claim, bounded by arch.toml's `restore_wait`), then claims it: with the
ECS service scheduler's default deployment configuration (minimumHealthyPercent 100,
maximumPercent 200) the replacement task starts on another host *before* the old task is
stopped ("Draining Amazon ECS container instances",
https://docs.aws.amazon.com/AmazonECS/latest/developerguide/container-instance-draining.html),
so without the wait it would start fresh a moment before the image appears.

A record is a small JSON file `.pending~<host>~<token>` directly in the pool directory. The
storage is shared with other hosts and written by containers' owners: records are read beneath
the pool directory, following no symlink, size-bounded, and only their deadline is used, never
trusted beyond the reader's own bound.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable

PENDING_PREFIX = ".pending~"
MAX_RECORD_BYTES = 4096
# A record whose deadline passed this long ago no longer holds anyone back (clock skew between
# hosts, the last seconds of a publication).
DEADLINE_GRACE = 10.0
FILE_MODE = 0o600
POOL_DIR_MODE = 0o700


class Pending(NamedTuple):
    """One image on the way: who writes it and until when it can come (epoch seconds)."""

    name: str
    host: str
    container: str
    deadline: float


def record_name(host: str, token: str) -> str:
    return f"{PENDING_PREFIX}{host}~{token}"


def write(pool_fd: int, host: str, container: str, deadline: float) -> str:
    """Record that `container`'s image is on the way into the pool open at `pool_fd`; returns
    the record's name (temp file + rename: a reader never sees half a record)."""
    from arch.checkpoint.storage.store import random_hex

    name = record_name(host, random_hex())
    temp = f".tmp{name}"
    document = {"host": host, "container": container, "deadline": deadline,
                "written": time.time()}  # fmt: skip
    data = json.dumps(document, sort_keys=True).encode("utf-8")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, FILE_MODE, dir_fd=pool_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, name, src_dir_fd=pool_fd, dst_dir_fd=pool_fd)
    return name


def remove(pool_fd: int, name: str) -> bool:
    try:
        os.unlink(name, dir_fd=pool_fd)
    except FileNotFoundError:
        return False
    return True


def read_all(pool_fd: int) -> list[Pending]:
    """Every readable record of the pool; unreadable or malformed ones are skipped."""
    records = []
    for name in os.listdir(pool_fd):
        if name.startswith(PENDING_PREFIX):
            record = _read(pool_fd, name)
            if record is not None:
                records.append(record)
    return records


def awaited(pool_fd: int, now: float | None = None) -> list[Pending]:
    """The records that may still deliver an image (deadline not long past)."""
    moment = time.time() if now is None else now
    return [record for record in read_all(pool_fd) if record.deadline + DEADLINE_GRACE > moment]


def _read(pool_fd: int, name: str) -> Pending | None:
    from arch import bounded_json

    try:
        document = bounded_json.read_at(pool_fd, name, MAX_RECORD_BYTES)
    except (OSError, ValueError):  # others write the pool: a planted file is no record
        return None
    if not isinstance(document, dict):
        return None
    deadline = document.get("deadline")
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        return None
    return Pending(name, str(document.get("host"))[:64], str(document.get("container"))[:200],
                   float(deadline))  # fmt: skip


class Announcements:
    """The records one host wrote for one notice, by container name, to remove as each ends."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.written: dict[str, tuple[str, str, str]] = {}  # name -> (root, pool_dir, record)

    def announce(self, name: str, root: str, pool_dir: str, deadline: float) -> None:
        """Record `name`'s image as on the way into `pool_dir` (beneath `root`); OSError."""
        with _opened_pool(root, pool_dir, create=True) as pool_fd:
            record = write(pool_fd, self.host, name, deadline)
        self.written[name] = (root, pool_dir, record)

    def settle(self, name: str) -> None:
        """`name`'s checkpoint ended (its image is in the pool, or will not come)."""
        entry = self.written.pop(name, None)
        if entry is None:
            return
        root, pool_dir, record = entry
        with _opened_pool(root, pool_dir) as pool_fd:
            remove(pool_fd, record)

    def settle_all(self) -> list[str]:
        """Remove every record left; the problems, one line each."""
        problems = []
        for name in list(self.written):
            try:
                self.settle(name)
            except OSError as error:
                problems.append(f"{name}: pending record not removed: {error}")
        return problems


class _opened_pool:
    """The pool directory opened beneath its root (no symlink followed), as a context."""

    def __init__(self, root: str, pool_dir: str, create: bool = False) -> None:
        self.root, self.pool_dir, self.create = root, pool_dir, create
        self.fd = -1

    def __enter__(self) -> int:
        from arch.checkpoint.storage.beneath import make_dirs_beneath, open_beneath, opened_root

        prefix = self.root.rstrip("/") + "/"
        if not self.pool_dir.startswith(prefix):
            raise OSError(f"{self.pool_dir}: not beneath {self.root}")
        with opened_root(self.root) as root_fd:
            relative = self.pool_dir[len(prefix) :].strip("/")
            if self.create:
                self.fd = make_dirs_beneath(root_fd, relative, POOL_DIR_MODE)
            else:
                self.fd = open_beneath(root_fd, relative)
        return self.fd

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)


POLL_SECONDS = 0.5


def wait_for_arrival(
    root: str,
    pool_dir: str,
    limit: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[int], None] | None = None,
) -> bool:
    """Wait, at most `limit` seconds, while an image is on the way into the pool and none is
    there unclaimed. True when an unclaimed image is there (claim it now), False when nothing
    is on the way any more or the wait ended. `on_wait` hears once how many are on the way."""
    from arch.checkpoint.storage.pool import is_entry

    end = clock() + limit
    told = False
    while True:
        try:
            with _opened_pool(root, pool_dir) as pool_fd:
                if any(is_entry(name) for name in os.listdir(pool_fd)):
                    return True
                coming = awaited(pool_fd)
                if not coming:
                    return False
                if on_wait is not None and not told:
                    told = True
                    on_wait(len(coming))
        except FileNotFoundError:
            return False
        if clock() >= end:
            return False
        sleep(POLL_SECONDS)
