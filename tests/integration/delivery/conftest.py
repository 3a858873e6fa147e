"""Fixtures of the delivery tests: the arch wheel built from this checkout, the host's role
lock, and private sshd instances on 127.0.0.1 (helpers: harness/delivery.py)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.delivery import ROLE_LOCK
from harness.sshd import SshServer, make_key

from arch.delivery.wheel import build_wheel
from tests.conftest import require_executables


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
def ssh_servers(tmp_path: Path) -> Iterator[Callable[..., SshServer]]:
    """Start private sshd instances: `ssh_servers(public_key_it_accepts, force_command=None)`."""
    require_executables("/usr/sbin/sshd", "ssh-keygen", why="the SSH tests run a real sshd")
    started: list[SshServer] = []

    def start(authorized_key: Path, force_command: str | None = None) -> SshServer:
        server = SshServer(
            tmp_path / f"sshd-{len(started)}", authorized_key, force_command=force_command
        )
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
