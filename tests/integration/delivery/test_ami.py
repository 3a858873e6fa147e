"""archctl ami against the real packer (Debian's 1.6.6 here): validate, failures, a local build."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from harness.delivery import ROLE_TIMEOUT, archctl

from tests.conftest import require_executables


@pytest.fixture(autouse=True)
def _packer() -> None:
    require_executables("packer", why="archctl ami drives the real packer")


def test_validate_passes_on_every_template() -> None:
    result = archctl("ami", "validate", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    assert set(checks) == {"fmt", "local", "ecs", "batch"}
    assert all(check["ok"] for check in checks.values()), checks
    assert checks["local"]["level"] == "full"


def test_validation_failure_shows_packers_own_message() -> None:
    result = archctl("ami", "validate", "region=Eu_West")
    assert result.returncode == 1
    assert "The region must be an AWS region name" in result.stdout
    assert "Traceback" not in result.stderr


def test_missing_packer_is_a_clear_error() -> None:
    result = archctl("ami", "build", "--local", "--packer", "/nonexistent/packer")
    assert result.returncode == 1
    assert result.stderr.startswith("archctl ami build: packer not found ('/nonexistent/packer')")
    assert "Traceback" not in result.stderr


def test_failed_build_carries_packers_message(tmp_path: Path) -> None:
    # The role cannot be found: the first provisioner fails, before anything is installed.
    result = archctl(
        "ami",
        "build",
        "--local",
        "--manifest",
        str(tmp_path / "manifest.json"),
        f"ansible_dir={tmp_path / 'no-ansible'}",
    )
    assert result.returncode == 1
    assert "\narchctl ami build: `" in result.stderr  # after the streamed ui errors
    assert "Script exited with non-zero exit status: 127" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.root
def test_local_build_provisions_this_host_and_ends_verified(
    role_lock: None, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.json"
    result = archctl(
        "ami",
        "build",
        "--local",
        "--manifest",
        str(manifest),
        "local_install_docker=true",
        timeout=ROLE_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    # install.sh reports on stderr, which packer relays as ui errors (archctl: on stderr).
    assert "arch-install: done" in result.stderr  # the role ran through install.sh
    # archctl verify, the last provisioner, printed its checks (and passed: the build did).
    verify_lines = re.findall(r"local\.null\.local: (ok|warn|FAIL) +(\S+)", result.stdout)
    assert ("ok", "runc") in verify_lines and ("ok", "criu") in verify_lines, result.stdout[-3000:]
    assert not [name for status, name in verify_lines if status == "FAIL"]
    assert f"built local: Null (manifest {manifest})" in result.stdout
    (build,) = json.loads(manifest.read_text())["builds"]
    assert build["name"] == "local" and build["builder_type"] == "null"
    assert build["custom_data"]["flavour"] == "local"
    assert build["custom_data"]["arch_version"]
