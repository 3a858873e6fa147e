"""archctl remote against real sshd instances on 127.0.0.1: install and verify this host over
SSH, and per-host errors (a closed port, a refused key) that leave the other hosts alone."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.delivery import ROLE_TIMEOUT, archctl
from harness.sshd import SshServer, free_port, make_key

pytestmark = pytest.mark.root  # sshd's privilege separation, and the hosts act as root


def results_by_host(stdout: str) -> dict[str, dict[str, object]]:
    return {entry["host"]: entry for entry in json.loads(stdout)}


def installed_archctl_has(subcommand: str) -> bool:
    probe = subprocess.run(
        ["/usr/local/bin/archctl", subcommand, "--help"], capture_output=True, text=True
    )
    return probe.returncode == 0


def test_every_host_is_reported_whatever_fails(
    ssh_servers: Callable[[Path], SshServer], client_key: Path, tmp_path: Path
) -> None:
    accepting = ssh_servers(client_key.with_suffix(".pub"))
    refusing = ssh_servers(make_key(tmp_path / "someone_else").with_suffix(".pub"))
    closed = f"root@127.0.0.1:{free_port()}"
    hosts = [accepting.address(), refusing.address(), closed]
    result = archctl("remote", "verify", "--json", "-i", str(client_key), *hosts)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    results = results_by_host(result.stdout)
    assert list(results) == hosts  # every host, in the order given
    good = results[accepting.address()]
    assert good["ok"] is True and good["step"] == "verify", good
    refused = results[refusing.address()]
    assert refused["ok"] is False and refused["step"] == "connect"
    assert f"refused the login with key {client_key}" in str(refused["detail"])
    unreachable = results[closed]
    assert unreachable["ok"] is False and unreachable["step"] == "connect"
    assert "connection refused" in str(unreachable["detail"])


def test_table_output_and_exit_status(
    ssh_servers: Callable[[Path], SshServer], client_key: Path
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    result = archctl("remote", "verify", "-i", str(client_key), server.address())
    assert result.returncode == 0, result.stdout + result.stderr
    header, row = result.stdout.splitlines()
    assert header.split()[:4] == ["HOST", "RESULT", "STEP", "SECONDS"]
    assert row.split()[:3] == [server.address(), "ok", "verify"]


def test_remote_checkpoint_runs_checkpoint_all(
    ssh_servers: Callable[[Path], SshServer], client_key: Path
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    result = archctl("remote", "checkpoint", "--json", "-i", str(client_key), server.address())
    (entry,) = json.loads(result.stdout)
    assert entry["step"] == "checkpoint"
    if installed_archctl_has("checkpoint"):
        assert result.returncode == 0 and entry["ok"] is True, entry
    else:  # an appliance older than `archctl checkpoint --all`: said plainly, per host
        assert result.returncode == 1 and entry["ok"] is False
        assert "archctl checkpoint --all` exited 2" in str(entry["detail"])


def test_install_then_verify_this_host_over_ssh(
    ssh_servers: Callable[[Path], SshServer],
    client_key: Path,
    arch_wheel: Path,
    role_lock: None,
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    install = archctl(
        "remote",
        "install",
        "--json",
        "-i",
        str(client_key),
        "--wheel",
        str(arch_wheel),
        "--role-var",
        "arch_install_docker=true",
        server.address(),
        timeout=ROLE_TIMEOUT,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    (entry,) = json.loads(install.stdout)
    assert entry["ok"] is True and entry["step"] == "install", entry
    assert entry["detail"] == f"installed {arch_wheel.name}; archctl verify passed"
    verify = archctl("remote", "verify", "--json", "-i", str(client_key), server.address())
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_strict_host_keys_refuse_an_unknown_host(
    ssh_servers: Callable[[Path], SshServer], client_key: Path, tmp_path: Path
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    home = tmp_path / "home"  # no known_hosts: every host key is unknown
    home.mkdir()
    environment = {**os.environ, "HOME": str(home)}
    strict = archctl(
        "remote",
        "verify",
        "--json",
        "--strict-host-keys",
        "-i",
        str(client_key),
        server.address(),
        env=environment,
    )
    assert strict.returncode == 1
    (entry,) = json.loads(strict.stdout)
    assert entry["ok"] is False and entry["step"] == "connect"
    assert "not found in known_hosts" in str(entry["detail"])
