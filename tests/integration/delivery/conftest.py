"""Fixtures of the delivery tests: the arch wheel built from this checkout, archctl as a
command, the host's role lock, and private sshd instances on 127.0.0.1."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.sshd import SshServer, make_key

from arch.delivery.wheel import build_wheel
from tests.conftest import require_executables

ROLE_LOCK = "/tmp/arch-role.lock"
# The role and the userdata take minutes on a host where CRIU must be checked and services
# restarted; a hung run must still end the test.
ROLE_TIMEOUT = 1800


def archctl(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """archctl of the package under test, as a command (exit status, stdout, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "arch.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        check=False,
    )


@pytest.fixture
def role_lock() -> Iterator[None]:
    """Hold the host's role lock: the test runs the Ansible role on this host."""
    with open(ROLE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def arch_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The arch wheel of this checkout, built by pip as a release would be."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def ssh_servers(tmp_path: Path) -> Iterator[Callable[[Path], SshServer]]:
    """Start private sshd instances: `ssh_servers(public_key_it_accepts)`."""
    require_executables("/usr/sbin/sshd", "ssh-keygen", why="the SSH tests run a real sshd")
    started: list[SshServer] = []

    def start(authorized_key: Path) -> SshServer:
        server = SshServer(tmp_path / f"sshd-{len(started)}", authorized_key)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    require_executables("ssh-keygen", why="the SSH tests generate their keys")
    key = make_key(tmp_path / "client_key")
    os.chmod(key, 0o600)
    return key
