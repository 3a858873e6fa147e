"""Processes that must not outlive arch-runc: runc children in a process group of their own,
SIGKILLed by the kernel when arch-runc dies (PR_SET_PDEATHSIG), and the means to find and stop
such a group later by its leader's identity (pid + start time).

Imported on arch-runc's create/checkpoint paths: module-level imports stay cheap.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

KILL_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.02
PR_SET_PDEATHSIG = 1

logger = logging.getLogger("arch")


class ProcessIdentity(NamedTuple):
    """A process as the kernel knows it: pid plus start time (clock ticks after boot)."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        stat = _proc_stat(pid)
        return None if stat is None else cls(pid, stat.start)

    @classmethod
    def own(cls) -> ProcessIdentity:
        identity = cls.of(os.getpid())
        assert identity is not None
        return identity

    def alive(self) -> bool:
        stat = _proc_stat(self.pid)
        return stat is not None and stat.start == self.start and stat.state not in "ZX"


class _Stat(NamedTuple):
    state: str
    pgid: int
    start: int


def _proc_stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            text = stat_file.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    # After "(comm)": state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime priority nice num_threads itrealvalue starttime ...
    return _Stat(fields[0], int(fields[2]), int(fields[19]))


def child_setup(parent_pid: int) -> None:
    """preexec_fn of the runc child: its own process group, SIGKILLed when arch-runc dies.

    Runs between fork and exec: only system calls, no locks or imports.
    """
    os.setpgid(0, 0)
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # arch-runc died before the prctl took effect
        os._exit(1)


class _Libc:
    """libc's prctl, resolved before any fork (ctypes' loading is not fork-safe)."""

    def __init__(self) -> None:
        self._prctl: Any = None

    def load(self) -> None:
        if self._prctl is None:
            import ctypes

            self._prctl = ctypes.CDLL(None, use_errno=True).prctl

    def prctl(self, *args: int) -> int:
        return int(self._prctl(*args))


_LIBC = _Libc()


def prepare_child_setup() -> None:
    """Load what child_setup needs; call before spawning."""
    _LIBC.load()


def dies_with_this_process() -> Callable[[], None]:
    """A preexec_fn for helpers (criu cpuinfo): own group, SIGKILLed with arch-runc."""
    prepare_child_setup()
    parent = os.getpid()
    return lambda: child_setup(parent)


def group_members(leader: ProcessIdentity) -> list[int]:
    """Live processes of the group `leader` started (runc and its CRIU).

    A group's number stays allocated while any member lives, so it can only have been reused
    after the whole group was gone: then its leader's pid runs with another start time.
    """
    leader_now = _proc_stat(leader.pid)
    if leader_now is not None and leader_now.start != leader.start:
        return []
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is not None and stat.pgid == leader.pid and stat.state not in "ZX":
            members.append(int(entry))
    return members


def stop_group(leader: ProcessIdentity, grace: float = 0.0) -> list[int]:
    """Let the group end within `grace` seconds, then SIGKILL what is left; wait until it is
    gone. Returns the pids that had to be killed."""
    deadline = time.monotonic() + grace
    members = group_members(leader)
    while members and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        members = group_members(leader)
    killed, survivors = kill_until_gone(lambda: group_members(leader))
    if survivors:
        logger.error("runc/CRIU processes %s survive SIGKILL", survivors)
    return killed


def kill_until_gone(
    listed: Callable[[], Collection[int]], before_each_round: Callable[[], None] | None = None
) -> tuple[list[int], list[int]]:
    """SIGKILL the pids `listed()` names, round after round (`before_each_round` runs first in
    each), until it names none or KILL_WAIT_SECONDS have passed. Returns (every pid killed,
    the pids still listed at the end)."""
    killed: set[int] = set()
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    pids = listed()
    while pids and time.monotonic() < deadline:
        if before_each_round is not None:
            before_each_round()
        for pid in pids:
            kill_pid(pid)
        killed.update(pids)
        time.sleep(POLL_SECONDS)
        pids = listed()
    return sorted(killed), sorted(pids)


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
