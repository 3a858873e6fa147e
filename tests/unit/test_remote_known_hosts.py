"""arch.remote.known_hosts: which files are read, where --accept-new records, marker lines."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from arch.remote.known_hosts import (
    HostKeyTrust,
    KnownHostsError,
    append_line,
    fingerprint,
    load_into,
)


@pytest.fixture
def host_key(tmp_path: Path) -> paramiko.PKey:
    import subprocess

    path = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def line_for(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def test_marker_lines_do_not_hide_the_other_entries(
    tmp_path: Path, host_key: paramiko.PKey
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(
        "# a comment\n"
        f"@cert-authority *.example.com {host_key.get_name()} {host_key.get_base64()}\n"
        "garbage\n"
        "host.example ssh-unknown-type AAAA\n" + line_for("[10.0.0.1]:2222", host_key)
    )
    keys = paramiko.HostKeys()
    load_into(keys, known)
    assert keys.lookup("[10.0.0.1]:2222")[host_key.get_name()] == host_key
    assert keys.lookup("*.example.com") is None


def test_revoked_keys_are_collected(
    tmp_path: Path, host_key: paramiko.PKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    known = tmp_path / "fleet"
    known.write_text(f"@revoked * {host_key.get_name()} {host_key.get_base64()}\n")
    trust = HostKeyTrust.from_options([str(known)], accept_new=True)
    assert host_key.asbytes() in trust.revoked
    assert trust.record_to == known


def test_accept_new_records_to_the_users_file_without_a_given_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert HostKeyTrust.from_options([], accept_new=True).record_to == (
        tmp_path / ".ssh" / "known_hosts"
    )
    assert HostKeyTrust.from_options([], accept_new=False).record_to is None


def test_a_given_file_must_exist_unless_accept_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(KnownHostsError, match="no such file"):
        HostKeyTrust.from_options([str(tmp_path / "missing")], accept_new=False)
    with pytest.raises(KnownHostsError, match="does not exist"):
        HostKeyTrust.from_options([str(tmp_path / "no" / "dir")], accept_new=True)
    with pytest.raises(KnownHostsError, match="not a regular file"):
        HostKeyTrust.from_options([str(tmp_path)], accept_new=True)


def test_append_keeps_a_last_line_without_newline_whole(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("a ssh-ed25519 AAAA")
    append_line(known, "b ssh-ed25519 BBBB\n")
    assert known.read_text() == "a ssh-ed25519 AAAA\nb ssh-ed25519 BBBB\n"


def test_fingerprint_is_openssh_sha256(tmp_path: Path, host_key: paramiko.PKey) -> None:
    import subprocess

    public = tmp_path / "host_key.pub"
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[1]
    assert fingerprint(host_key) == printed
