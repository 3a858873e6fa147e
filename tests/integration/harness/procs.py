"""Subprocess helpers: bounded command runs, stopping our own processes by pid, unmounting."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_TIMEOUT = 60.0


class CommandError(AssertionError):
    """A command exited non-zero where success was required (an assertion: the test fails)."""


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv to completion with captured text output; raise CommandError if check fails."""
    completed = subprocess.run(
        list(argv),
        input=input_text,
        stdin=None if input_text is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if check and completed.returncode != 0:
        raise CommandError(describe(completed))
    return completed


def describe(completed: subprocess.CompletedProcess[str]) -> str:
    """A readable account of a finished command for assertion messages."""
    command = " ".join(str(arg) for arg in completed.args)
    return (
        f"`{command}` exited {completed.returncode}\n"
        f"--- stdout ---\n{completed.stdout}\n--- stderr ---\n{completed.stderr}"
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process we started, then SIGKILL it if it outlives `timeout`."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM a pid that belongs to this test (not our child), then SIGKILL after `timeout`."""
    if not pid_is_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_is_alive(pid) or _is_zombie(pid):
            return
        time.sleep(0.05)
    if pid_is_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def pids_with_argument(argument: str) -> list[int]:
    """Pids whose argv contains exactly `argument` (e.g. a private socket path of our daemon).

    Used to find shims started by a private containerd: their argv carries that daemon's unique
    socket path, so this matches only processes that this test session caused to exist.
    """
    wanted = argument.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv:
            found.append(int(entry.name))
    return found


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, deepest first (the order to unmount them)."""
    prefix = str(directory.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = _unescape_mount_path(line.split()[4])
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            points.append(mount_point)
    return sorted(points, key=lambda point: point.count("/"), reverse=True)


def _unescape_mount_path(field: str) -> str:
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def unmount_all_under(directory: Path) -> list[str]:
    """Unmount everything mounted below `directory`; returns mount points that stayed mounted."""
    for mount_point in mounts_under(directory):
        if run(["umount", mount_point], check=False, timeout=30).returncode != 0:
            run(["umount", "--lazy", mount_point], check=False, timeout=30)
    return mounts_under(directory)


CGROUP_MOUNTS = Path("/sys/fs/cgroup")


def remove_cgroups(relative: str) -> list[str]:
    """rmdir the cgroup `relative` (with its empty children) in every hierarchy; problems seen."""
    problems = []
    hierarchies = [CGROUP_MOUNTS, *(p for p in CGROUP_MOUNTS.iterdir() if p.is_dir())]
    for hierarchy in hierarchies:
        top = hierarchy / relative.lstrip("/")
        if not (hierarchy / "cgroup.procs").exists() or not top.is_dir():
            continue
        for directory in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if directory.is_dir() and (directory / "cgroup.procs").exists():
                _rmdir(directory, problems)
        _rmdir(top, problems)
    return problems


def _rmdir(directory: Path, problems: list[str]) -> None:
    try:
        directory.rmdir()
    except OSError as error:
        problems.append(f"cgroup {directory} not removed: {error.strerror}")


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` until it returns truthy or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, max_bytes: int = 20_000) -> str:
    """The last `max_bytes` of a log file, or a note that it does not exist."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return f"(no file {path})"
    prefix = "...(truncated)...\n" if size > max_bytes else ""
    return prefix + data.decode(errors="replace")
