"""Kill trials: SIGKILL arch-runc at a chosen moment of a call, then look for what it left.

containerd SIGKILLs a runtime call that takes longer than its caller waits. These helpers find
the arch-runc process of one call of one container (by its argv), kill it after a delay, and list
what must not survive it: runc or CRIU processes working for this node, and processes in the
container's cgroup while containerd has no running task for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .containerd import ContainerdNode

FIND_TIMEOUT = 30.0
POLL_INTERVAL = 0.002


@dataclass(frozen=True)
class KillOutcome:
    killed: bool  # False: the call ended before the delay passed
    seconds: float  # from the call's appearance to its end or kill


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def arch_runc_call(node: ContainerdNode, subcommand: str, container_id: str) -> int | None:
    """The pid of the Python arch-runc running `subcommand` for the container, if any."""
    root = str(node.runc_root)
    for pid in _pids():
        argv = _cmdline(pid)
        if len(argv) < 3 or argv[-1] != container_id or subcommand not in argv:
            continue
        if "arch-runc" in os.path.basename(argv[1]) and any(arg.startswith(root) for arg in argv):
            return pid
    return None


def kill_call_after(
    node: ContainerdNode,
    subcommand: str,
    container_id: str,
    delay: float,
    caller: subprocess.Popen[str],
) -> KillOutcome:
    """Wait for the arch-runc call to appear, then SIGKILL it `delay` seconds later (unless it
    ended before). `caller` is the ctr process that causes the call."""
    deadline = time.monotonic() + FIND_TIMEOUT
    pid = None
    while pid is None:
        pid = arch_runc_call(node, subcommand, container_id)
        if pid is None:
            if caller.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no arch-runc {subcommand} of {container_id} seen (ctr exited "
                    f"{caller.poll()}: {caller.stderr.read() if caller.stderr else ''})"
                )
            time.sleep(POLL_INTERVAL)
    seen = time.monotonic()
    while time.monotonic() - seen < delay:
        if not procs.pid_is_alive(pid) or _is_zombie(pid):
            return KillOutcome(False, time.monotonic() - seen)
        time.sleep(POLL_INTERVAL)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return KillOutcome(False, time.monotonic() - seen)
    return KillOutcome(True, time.monotonic() - seen)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return "gone"


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def _links_under(pid: int, prefixes: Sequence[str]) -> bool:
    links = [f"/proc/{pid}/cwd"]
    try:
        links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    for link in links:
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if any(target.startswith(prefix) for prefix in prefixes):
            return True
    return False


def runtime_processes(node: ContainerdNode) -> list[str]:
    """runc and CRIU processes working for this node (its runc root, state, images)."""
    prefixes = [str(node.base_dir), str(node.arch.checkpoint_root)]
    found = []
    for pid in _pids():
        try:
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            continue
        if exe not in ("runc", "criu") or _is_zombie(pid):
            continue
        argv = _cmdline(pid)
        if any(prefix in arg for arg in argv for prefix in prefixes) or _links_under(pid, prefixes):
            found.append(f"{pid} ({_state(pid)}) {' '.join(argv)}")
    return found


def cgroup_processes(namespace: str, container_id: str) -> list[str]:
    """Processes in the container's cgroup (containerd's cgroupsPath /<namespace>/<id>)."""
    suffix = f"/{namespace}/{container_id}"
    found = []
    for pid in _pids():
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            continue
        if any(line.endswith(suffix) or f"{suffix}/" in line for line in lines):
            found.append(f"{pid} {' '.join(_cmdline(pid))}")
    return found


def image_digest(image_dir: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime_ns) of every file in the image directory (empty when absent)."""
    try:
        entries = list(os.scandir(image_dir))
    except FileNotFoundError:
        return {}
    return {
        entry.name: (entry.stat().st_size, entry.stat().st_mtime_ns)
        for entry in entries
        if entry.is_file(follow_symlinks=False)
    }
