"""Shared test configuration: skips for machines that lack what a marker needs, and the
binary-under-test fixtures.

Markers (declared in pyproject.toml): `root` skips unless running as root; `containerd` and
`docker` skip when the daemons/clients are not installed. A skip always states its reason.
With ARCH_TESTS_STRICT=1 (for CI on a fully installed appliance) those skips are failures, so a
missing package cannot turn into a green run that tested nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests.imds_server import ImdsServer
from tests.stack import current

if TYPE_CHECKING:
    from collections.abc import Iterator

    from arch.runc.process_group import ProcessIdentity

DEFAULT_ARCH_RUNC = "/usr/local/bin/arch-runc"
ARCH_RUNC_ENV = "ARCH_RUNC"
STRICT_ENV = "ARCH_TESTS_STRICT"

STACK = current()
# What each marker needs installed (the binaries of the stack under test, see tests/stack.py).
MARKER_EXECUTABLES = {
    "containerd": (STACK.containerd, STACK.ctr, STACK.shim, STACK.runc or "runc"),
    "docker": (STACK.dockerd, STACK.docker, STACK.containerd, STACK.runc or "runc"),
}


def find_executable(name_or_path: str) -> str | None:
    """An absolute path for an executable given by path or looked up on PATH (plus sbin dirs)."""
    if os.path.isabs(name_or_path):
        return name_or_path if os.access(name_or_path, os.X_OK) else None
    search_path = os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]
    )
    return shutil.which(name_or_path, path=search_path)


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test for `reason`, or fail it when ARCH_TESTS_STRICT=1."""
    if os.environ.get(STRICT_ENV) == "1":
        pytest.fail(f"{reason} [{STRICT_ENV}=1 turns this skip into a failure]", pytrace=False)
    pytest.skip(reason)


def finished_process() -> ProcessIdentity:
    """The identity (pid + start time) of a process that has exited: a dead writer or holder."""
    import subprocess

    from arch.runc.process_group import ProcessIdentity

    finished = subprocess.Popen(["true"])
    identity = ProcessIdentity.of(finished.pid)
    finished.wait()
    assert identity is not None
    return identity


class CgroupHierarchy:
    """A cgroup hierarchy of this host that a test can mount once more (as CRIU's cgroup yard
    does): cgroup v1's pids controller where it is mounted, else the cgroup2 hierarchy."""

    def __init__(self, host_mount: Path, mount_args: list[str], name: str) -> None:
        self.host_mount = host_mount  # where the host has it mounted
        self.mount_args = mount_args  # `mount` arguments before the mount point
        self.name = name  # the yard's directory name for it, as CRIU names them

    @classmethod
    def find(cls) -> CgroupHierarchy:
        pids = Path("/sys/fs/cgroup/pids")
        if (pids / "cgroup.procs").exists():
            return cls(pids, ["-t", "cgroup", "-o", "pids", "none"], "pids")
        with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
            for line in mountinfo:
                fields, _, described = line.partition(" - ")
                if described.split()[:1] == ["cgroup2"] and fields.split()[3] == "/":
                    return cls(Path(fields.split()[4]), ["-t", "cgroup2", "none"], "unified")
        unavailable("no cgroup v1 pids or cgroup2 hierarchy is mounted")


def require_root() -> None:
    """Skip the calling test unless it runs as root."""
    if os.geteuid() != 0:
        unavailable("needs root (run the integration tests as root)")


def require_executables(*names_or_paths: str, why: str) -> None:
    """Skip the calling test when any of the executables is not installed."""
    missing = [name for name in names_or_paths if find_executable(name) is None]
    if missing:
        unavailable(f"not installed: {', '.join(missing)} ({why})")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None:
        require_root()
    for marker, executables in MARKER_EXECUTABLES.items():
        if item.get_closest_marker(marker) is not None:
            require_executables(*executables, why=f"needed by @pytest.mark.{marker} tests")


@pytest.fixture(scope="session")
def arch_runc_binary() -> Path:
    """The arch-runc under test: $ARCH_RUNC, else the appliance's /usr/local/bin/arch-runc.

    Never skips: integration tests exist to test an installed appliance, so a missing binary
    is a failure.
    """
    configured = os.environ.get(ARCH_RUNC_ENV) or DEFAULT_ARCH_RUNC
    if not os.path.isabs(configured) or not os.access(configured, os.X_OK):
        pytest.fail(
            f"arch-runc under test not found or not executable: {configured!r}. Install the "
            f"appliance (ansible/site.yml) or set {ARCH_RUNC_ENV}=/absolute/path/to/arch-runc.",
            pytrace=False,
        )
    return Path(configured)


@pytest.fixture(scope="session")
def real_runc_binary() -> Path:
    """The real runc that arch-runc fronts (and that outputs are compared against)."""
    found = find_executable(STACK.runc or "runc")
    if found is None:
        unavailable("runc is not installed")
    if os.path.basename(os.path.realpath(found)) == "arch-runc":
        pytest.fail(f"{found} resolves to arch-runc, not to the real runc", pytrace=False)
    return Path(found)


@pytest.fixture
def imds() -> Iterator[ImdsServer]:
    """A real IMDSv2 server on 127.0.0.1 (tests/imds_server.py), stopped afterwards."""
    server = ImdsServer().start()
    try:
        yield server
    finally:
        server.stop()
