"""Leases on directories being written: image staging directories and restore work directories.

A leftover directory (of a killed checkpoint or restore) holds process memory and must go, but
never while a process, on this host or another one sharing the storage, still writes into it.
flock cannot tell: NFS/EFS locks are emulated or absent, and a lock never crosses hosts
reliably. So the writer keeps LEASE_FILE in the directory, a small JSON document
    {"host": host identity, "boot": boot id, "pid": pid, "start": start time, "expires": epoch s}
rewritten (temp file + rename, atomic on NFS too) every REFRESH_SECONDS by a background thread,
each time with `expires` = now + TTL_SECONDS. A directory is held while
- its lease was written on this host in this boot by a process that still runs (pid + start
  time; a dead holder frees it at once), or
  (the host is arch.host_identity's: the EC2 instance id or machine id + boot id, never the
  hostname, which another instance may carry later)
- its lease comes from another host (or boot) and expires + CLOCK_SKEW_SECONDS is still ahead
  of this host's clock (host clocks may differ by up to that much).
A directory without a lease file is judged by its age by the caller (store.cleanup_stale).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from arch.bounded_json import read_at

LEASE_FILE = ".arch-lease"
TTL_SECONDS = 120.0
REFRESH_SECONDS = 30.0
CLOCK_SKEW_SECONDS = 60.0
LEASE_MAX_BYTES = 4096
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

logger = logging.getLogger("arch")


def _boot_id() -> str:
    from arch.host_identity import boot_id

    return boot_id()


def _host() -> str:
    from arch.host_identity import current

    return current()


class Lease:
    """This process's lease on `directory`, refreshed until stop(); a context manager."""

    def __init__(self, directory: str) -> None:
        from arch.runc.process_group import ProcessIdentity

        self.directory = directory
        self.holder = ProcessIdentity.own()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Lease:
        self._write()
        self._thread = threading.Thread(target=self._refresh, name="arch-lease", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop refreshing and remove the lease file (the directory is complete or going)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            os.unlink(os.path.join(self.directory, LEASE_FILE))
        except FileNotFoundError:
            return

    def __enter__(self) -> Lease:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                self._write()
            except OSError as error:  # the directory may be going away under an abort
                logger.warning("cannot refresh the lease on %s: %s", self.directory, error)

    def _write(self) -> None:
        document = {
            "host": _host(),
            "boot": _boot_id(),
            "pid": self.holder.pid,
            "start": self.holder.start,
            "expires": time.time() + TTL_SECONDS,
        }
        temp = os.path.join(self.directory, f"{LEASE_FILE}.{self.holder.pid}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        try:
            os.write(fd, json.dumps(document).encode("utf-8"))
        finally:
            os.close(fd)
        os.replace(temp, os.path.join(self.directory, LEASE_FILE))


def lease_of(parent_fd: int, name: str) -> dict[str, Any] | None:
    """The lease document of directory `name` in `parent_fd`; None without a (readable) one."""
    try:
        dir_fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    except OSError:
        return None
    try:
        # Bounded, never through a symlink, never blocking on a FIFO (arch.bounded_json).
        document = read_at(dir_fd, LEASE_FILE, LEASE_MAX_BYTES)
    except (OSError, ValueError):
        return None
    finally:
        os.close(dir_fd)
    return document if isinstance(document, dict) else None


def is_held(lease: dict[str, Any], now: float | None = None) -> bool:
    """Whether the lease still protects its directory (see the module docstring)."""
    from arch.runc.process_group import ProcessIdentity

    now = time.time() if now is None else now
    pid, start = lease.get("pid"), lease.get("start")
    same_boot = lease.get("host") == _host() and lease.get("boot") == _boot_id()
    if same_boot and isinstance(pid, int) and isinstance(start, int):
        return ProcessIdentity(pid, start).alive()
    expires = lease.get("expires")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        return False
    return bool(expires + CLOCK_SKEW_SECONDS > now)
