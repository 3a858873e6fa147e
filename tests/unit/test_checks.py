"""archctl verify's checks against hosts laid out in tmp dirs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from arch.appliance import checks
from arch.config import HostConfig

if TYPE_CHECKING:
    from pathlib import Path


def script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def target(tmp_path: Path, runc: str | None, **overrides: str) -> checks.VerifyTarget:
    config = HostConfig(
        str(tmp_path / "arch.toml"),
        runc=runc,
        checkpoint_root=str(tmp_path / "checkpoint"),
        state_dir=str(tmp_path / "state"),
    )
    fields = {
        "config": config,
        "arch_runc": str(tmp_path / "arch-runc"),
        "containerd_config": str(tmp_path / "config.toml"),
        "containerd_address": str(tmp_path / "containerd.sock"),
        "docker_config": str(tmp_path / "daemon.json"),
        "docker_socket": str(tmp_path / "docker.sock"),
        **overrides,
    }
    return checks.VerifyTarget(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("runc version 1.1.5+ds1\ncommit: x", (1, 1, 5)),
        ("Version: 4.2.1\n", (4, 2, 1)),
        ("runc version 1.3.0-rc.1", (1, 3, 0)),
        ("no version here", ()),
    ],
)
def test_parse_version(text: str, version: tuple[int, ...]) -> None:
    assert checks.parse_version(text) == version


def test_runc_missing_from_config_fails(tmp_path: Path) -> None:
    result = checks.check_runc(target(tmp_path, None))
    assert result.status == checks.FAIL
    assert "not set" in result.detail


def test_runc_too_old_fails(tmp_path: Path) -> None:
    runc = script(tmp_path / "runc", 'echo "runc version 1.0.3"')
    assert checks.check_runc(target(tmp_path, runc)).status == checks.FAIL


def test_runc_ok(tmp_path: Path) -> None:
    runc = script(tmp_path / "runc", 'echo "runc version 1.1.5+ds1"')
    result = checks.check_runc(target(tmp_path, runc))
    assert result == checks.CheckResult("runc", checks.OK, f"{runc} 1.1.5")


def test_arch_runc_must_answer_like_runc(tmp_path: Path) -> None:
    runc = script(tmp_path / "runc", 'echo "runc version 1.1.5"')
    script(tmp_path / "arch-runc", 'echo "runc version 1.1.5"')
    assert checks.check_arch_runc(target(tmp_path, runc)).status == checks.OK
    script(tmp_path / "arch-runc", 'echo "something else"')
    assert checks.check_arch_runc(target(tmp_path, runc)).status == checks.FAIL


def test_containerd_wiring(tmp_path: Path) -> None:
    arch_runc = str(tmp_path / "arch-runc")
    config = tmp_path / "config.toml"
    assert checks.check_containerd_wiring(target(tmp_path, None)).status == checks.FAIL
    config.write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n'
        f'BinaryName = "{arch_runc}"\n'
    )
    assert checks.check_containerd_wiring(target(tmp_path, None)).status == checks.OK
    config.write_text("version = 2\n")
    assert checks.check_containerd_wiring(target(tmp_path, None)).status == checks.FAIL
    config.write_text("version = [\n")
    assert checks.check_containerd_wiring(target(tmp_path, None)).status == checks.FAIL


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own directories as root")
def test_storage_must_be_private_and_root_owned(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir(mode=0o700)
    (tmp_path / "state").mkdir(mode=0o755)
    os.chmod(tmp_path / "state", 0o755)
    result = checks.check_storage(target(tmp_path, None))
    assert result.status == checks.FAIL
    assert "state: mode 0755, must be 0700" in result.detail
    os.chmod(tmp_path / "state", 0o700)
    assert checks.check_storage(target(tmp_path, None)).status == checks.OK


def test_containerd_service_needs_a_listening_socket(tmp_path: Path) -> None:
    import socket

    sock_path = str(tmp_path / "containerd.sock")
    assert checks.check_containerd_service(target(tmp_path, None)).status == checks.FAIL
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(sock_path)
        listener.listen(1)
        assert checks.check_containerd_service(target(tmp_path, None)).status == checks.OK


def test_verify_exit_status_and_json(tmp_path: Path) -> None:
    config = tmp_path / "arch.toml"
    config.write_text("runc = ")
    result = subprocess.run(
        [sys.executable, "-m", "arch.cli.main", "verify", "--json"],
        env={**os.environ, "ARCH_CONFIG": str(config)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert '"status": "fail"' in result.stdout
    assert "malformed TOML" in result.stdout
