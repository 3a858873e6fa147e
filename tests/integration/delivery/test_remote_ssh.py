"""archctl remote against real sshd instances on 127.0.0.1: install and verify this host over
SSH; host keys checked against known_hosts (known, unknown, --accept-new, changed, revoked); a
per-host timeout (a command that hangs, a server that never speaks SSH); per-host errors that
leave the other hosts alone.

Every run gets its own HOME: the tests never read or write root's real ~/.ssh.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.delivery import ROLE_TIMEOUT, archctl
from harness.sshd import SshServer, free_port, make_key

pytestmark = pytest.mark.root  # sshd's privilege separation, and the hosts act as root

StartServer = Callable[..., SshServer]


def results_by_host(stdout: str) -> dict[str, dict[str, object]]:
    return {entry["host"]: entry for entry in json.loads(stdout)}


def installed_archctl_has(subcommand: str) -> bool:
    probe = subprocess.run(
        ["/usr/local/bin/archctl", subcommand, "--help"], capture_output=True, text=True
    )
    return probe.returncode == 0


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME for archctl: no ~/.ssh/known_hosts, no ~/.ssh/config."""
    directory = tmp_path / "home"
    directory.mkdir()
    return directory


@pytest.fixture
def remote(home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return archctl("remote", *args, env={**os.environ, "HOME": str(home)}, timeout=timeout)

    return run


def known_hosts_of(path: Path, *servers: SshServer) -> Path:
    path.write_text("".join(server.known_hosts_line() for server in servers))
    return path


def logins(server: SshServer) -> list[str]:
    """sshd's own record of accepted logins (LogLevel VERBOSE)."""
    return [line for line in server.log_file.read_text().splitlines() if "Accepted " in line]


def test_every_host_is_reported_whatever_fails(
    ssh_servers: StartServer, client_key: Path, tmp_path: Path, remote: Callable[..., Any]
) -> None:
    accepting = ssh_servers(client_key.with_suffix(".pub"))
    refusing = ssh_servers(make_key(tmp_path / "someone_else").with_suffix(".pub"))
    unknown = ssh_servers(client_key.with_suffix(".pub"))
    changed = ssh_servers(client_key.with_suffix(".pub"))
    closed = f"root@127.0.0.1:{free_port()}"
    known = known_hosts_of(tmp_path / "known_hosts", accepting, refusing)
    old_key = make_key(tmp_path / "old_host_key").with_suffix(".pub").read_text().split()
    with known.open("a") as entries:
        entries.write(f"[127.0.0.1]:{changed.port} {old_key[0]} {old_key[1]}\n")
    hosts = [
        accepting.address(), refusing.address(), unknown.address(), changed.address(), closed
    ]  # fmt: skip
    result = remote("verify", "--json", "-i", str(client_key), "--known-hosts", str(known), *hosts)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    results = results_by_host(result.stdout)
    assert list(results) == hosts  # every host, in the order given
    good = results[accepting.address()]
    assert good["ok"] is True and good["step"] == "verify", good
    refused = results[refusing.address()]
    assert refused["ok"] is False and refused["step"] == "connect"
    assert f"refused the login with key {client_key}" in str(refused["detail"])
    stranger = results[unknown.address()]
    assert stranger["ok"] is False and stranger["step"] == "connect"
    assert "is not in known_hosts" in str(stranger["detail"])
    impostor = results[changed.address()]
    assert impostor["ok"] is False and impostor["step"] == "connect"
    assert "CHANGED" in str(impostor["detail"])
    unreachable = results[closed]
    assert unreachable["ok"] is False and unreachable["step"] == "connect"
    assert "connection refused" in str(unreachable["detail"])


def test_table_output_and_exit_status(
    ssh_servers: StartServer, client_key: Path, tmp_path: Path, remote: Callable[..., Any]
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    known = known_hosts_of(tmp_path / "known_hosts", server)
    result = remote("verify", "-i", str(client_key), "--known-hosts", str(known), server.address())
    assert result.returncode == 0, result.stdout + result.stderr
    header, row = result.stdout.splitlines()
    assert header.split()[:4] == ["HOST", "RESULT", "STEP", "SECONDS"]
    assert row.split()[:3] == [server.address(), "ok", "verify"]


# --- host keys -------------------------------------------------------------------------------


def test_a_host_in_the_users_known_hosts_is_accepted(
    ssh_servers: StartServer, client_key: Path, home: Path, remote: Callable[..., Any]
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    (home / ".ssh").mkdir(mode=0o700)
    known_hosts_of(home / ".ssh" / "known_hosts", server)
    result = remote("verify", "--json", "-i", str(client_key), server.address())
    assert result.returncode == 0, result.stdout + result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["ok"] is True and entry["step"] == "verify", entry


def test_an_unknown_host_is_refused_before_the_login(
    ssh_servers: StartServer, client_key: Path, home: Path, remote: Callable[..., Any]
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    result = remote("verify", "--json", "-i", str(client_key), server.address())
    assert result.returncode == 1
    (entry,) = json.loads(result.stdout)
    assert entry["ok"] is False and entry["step"] == "connect"
    host_key_type = server.known_hosts_line().split()[1]
    assert f"host key of [127.0.0.1]:{server.port} ({host_key_type} SHA256:" in entry["detail"]
    assert "is not in known_hosts" in entry["detail"] and "--accept-new" in entry["detail"]
    print("refused:", entry["detail"])
    assert logins(server) == []  # refused before authenticating: sshd saw no login
    assert not (home / ".ssh").exists()  # nothing recorded


def test_accept_new_records_the_key_then_checks_it(
    ssh_servers: StartServer, client_key: Path, tmp_path: Path, remote: Callable[..., Any]
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    known = tmp_path / "fleet_known_hosts"  # created by --accept-new
    first = remote(
        "verify",
        "--json",
        "-i",
        str(client_key),
        "--known-hosts",
        str(known),
        "--accept-new",
        server.address(),
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert known.read_text() == server.known_hosts_line()
    assert known.stat().st_mode & 0o777 == 0o600
    second = remote(
        "verify", "--json", "-i", str(client_key), "--known-hosts", str(known), server.address()
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert known.read_text() == server.known_hosts_line()  # known now: not recorded twice


def test_accept_new_without_a_file_records_in_the_users_known_hosts(
    ssh_servers: StartServer, client_key: Path, home: Path, remote: Callable[..., Any]
) -> None:
    servers = [ssh_servers(client_key.with_suffix(".pub")) for _ in range(3)]
    addresses = [server.address() for server in servers]
    result = remote("verify", "--json", "-i", str(client_key), "--accept-new", *addresses)
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = home / ".ssh" / "known_hosts"
    assert (home / ".ssh").stat().st_mode & 0o777 == 0o700
    # Three hosts in parallel, three whole lines.
    assert sorted(recorded.read_text().splitlines(keepends=True)) == sorted(
        server.known_hosts_line() for server in servers
    )


def test_a_changed_key_is_refused_even_with_accept_new(
    ssh_servers: StartServer, client_key: Path, tmp_path: Path, remote: Callable[..., Any]
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    impostor = make_key(tmp_path / "old_host_key").with_suffix(".pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {impostor[0]} {impostor[1]}\n")
    before = known.read_text()
    result = remote(
        "verify",
        "--json",
        "-i",
        str(client_key),
        "--known-hosts",
        str(known),
        "--accept-new",
        server.address(),
    )
    assert result.returncode == 1
    (entry,) = json.loads(result.stdout)
    assert entry["ok"] is False and entry["step"] == "connect"
    assert f"host key of root@127.0.0.1:{server.port} CHANGED" in entry["detail"]
    print("refused:", entry["detail"])
    assert logins(server) == []
    assert known.read_text() == before  # the old key stays; the new one is not recorded


def test_a_revoked_key_is_not_accepted_as_new(
    ssh_servers: StartServer, client_key: Path, tmp_path: Path, remote: Callable[..., Any]
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    key_type, key = server.known_hosts_line().split()[1:3]
    known = tmp_path / "known_hosts"
    known.write_text(f"@revoked * {key_type} {key}\n")
    result = remote(
        "verify",
        "--json",
        "-i",
        str(client_key),
        "--known-hosts",
        str(known),
        "--accept-new",
        server.address(),
    )
    assert result.returncode == 1
    (entry,) = json.loads(result.stdout)
    assert "is marked @revoked in known_hosts: refused" in entry["detail"], entry
    assert known.read_text() == f"@revoked * {key_type} {key}\n"


def test_a_missing_known_hosts_file_is_bad_usage(
    client_key: Path, tmp_path: Path, remote: Callable[..., Any]
) -> None:
    missing = tmp_path / "nope"
    result = remote("verify", "--known-hosts", str(missing), "root@127.0.0.1:22")
    assert result.returncode == 2
    assert f"--known-hosts {missing}: no such file (with --accept-new it is created)" in (
        result.stderr
    )


# --- timeouts --------------------------------------------------------------------------------

HANGING_VERIFY = """#!/bin/sh
# sshd ForceCommand: the client's command, except that `archctl verify` becomes a process that
# records its pid and sleeps for ten minutes.
case "$SSH_ORIGINAL_COMMAND" in
*"/usr/local/bin/archctl verify"*)
    swap='s#/usr/local/bin/archctl verify#{hang}#'
    exec sh -c "$(printf '%s' "$SSH_ORIGINAL_COMMAND" | sed "$swap")" ;;
*) exec sh -c "$SSH_ORIGINAL_COMMAND" ;;
esac
"""


def test_a_hung_command_is_ended_on_the_host_and_reported(
    ssh_servers: StartServer, client_key: Path, tmp_path: Path, remote: Callable[..., Any]
) -> None:
    pid_file = tmp_path / "hung.pid"
    hang = tmp_path / "hang.sh"
    hang.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    hang.chmod(0o755)
    wrapper = tmp_path / "force-command.sh"
    wrapper.write_text(HANGING_VERIFY.format(hang=hang))
    wrapper.chmod(0o755)
    hung = ssh_servers(client_key.with_suffix(".pub"), force_command=str(wrapper))
    good = ssh_servers(client_key.with_suffix(".pub"))
    known = known_hosts_of(tmp_path / "known_hosts", hung, good)
    result = remote(
        "verify",
        "--json",
        "-i",
        str(client_key),
        "--known-hosts",
        str(known),
        "--timeout",
        "40",  # the other host's archctl verify must fit, on a loaded machine too
        hung.address(),
        good.address(),
    )  # archctl() itself gives up after 120 s: far less than the hang's 600 s
    assert result.returncode == 1, result.stdout + result.stderr
    results = results_by_host(result.stdout)
    stuck = results[hung.address()]
    assert stuck["ok"] is False and stuck["step"] == "verify", stuck
    assert "`/usr/local/bin/archctl verify` timed out after" in str(stuck["detail"])
    assert "ended on the host" in str(stuck["detail"])
    assert results[good.address()]["ok"] is True  # the other host was not held up
    hung_pid = int(pid_file.read_text())  # the hang happened where intended
    print(f"hung command pid {hung_pid}; result: {stuck['detail']}")
    assert not Path(f"/proc/{hung_pid}").exists()  # timeout(1) on the host ended it


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port on 127.0.0.1 that accepts connections (the kernel's backlog) and never
    sends an SSH banner."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"root@127.0.0.1:{listener.getsockname()[1]}"


def test_a_server_that_never_speaks_ssh_times_out_at_connect(
    ssh_servers: StartServer,
    client_key: Path,
    tmp_path: Path,
    silent_server: str,
    remote: Callable[..., Any],
) -> None:
    good = ssh_servers(client_key.with_suffix(".pub"))
    known = known_hosts_of(tmp_path / "known_hosts", good)
    result = remote(
        "verify",
        "--json",
        "-i",
        str(client_key),
        "--known-hosts",
        str(known),
        "--connect-timeout",
        "3",
        silent_server,
        good.address(),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    results = results_by_host(result.stdout)
    silent = results[silent_server]
    assert silent["ok"] is False and silent["step"] == "connect"
    assert "no SSH banner within 3s" in str(silent["detail"]), silent
    print("silent server:", silent["detail"])
    assert results[good.address()]["ok"] is True


# --- operations ------------------------------------------------------------------------------


def test_remote_checkpoint_runs_checkpoint_all(
    ssh_servers: StartServer, client_key: Path, tmp_path: Path, remote: Callable[..., Any]
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    known = known_hosts_of(tmp_path / "known_hosts", server)
    result = remote(
        "checkpoint",
        "--json",
        "-i",
        str(client_key),
        "--known-hosts",
        str(known),
        server.address(),
    )
    (entry,) = json.loads(result.stdout)
    assert entry["step"] == "checkpoint"
    if installed_archctl_has("checkpoint"):
        assert result.returncode == 0 and entry["ok"] is True, entry
    else:  # an appliance older than `archctl checkpoint --all`: said plainly, per host
        assert result.returncode == 1 and entry["ok"] is False
        assert "archctl checkpoint --all` exited 2" in str(entry["detail"])


def test_install_then_verify_this_host_over_ssh(
    ssh_servers: StartServer,
    client_key: Path,
    arch_wheel: Path,
    role_lock: None,
    tmp_path: Path,
    remote: Callable[..., Any],
) -> None:
    server = ssh_servers(client_key.with_suffix(".pub"))
    known = known_hosts_of(tmp_path / "known_hosts", server)
    install = remote(
        "install",
        "--json",
        "-i",
        str(client_key),
        "--known-hosts",
        str(known),
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
    verify = remote(
        "verify", "--json", "-i", str(client_key), "--known-hosts", str(known), server.address()
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
