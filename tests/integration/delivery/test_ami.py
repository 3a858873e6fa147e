"""archctl ami against the real packer (Debian's 1.6.6 here): validate, failures, the null source
with the wheel check and the image clean-up, and a local build from an installed package."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from harness.delivery import ROLE_TIMEOUT, archctl
from harness.image_tree import host_identity, leftovers, missing_kept, prepare_instance_tree

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


def test_failed_build_carries_packers_message(tmp_path: Path, arch_wheel: Path) -> None:
    # The role cannot be found: the provisioner that runs it fails, before anything is installed.
    result = archctl(
        "ami",
        "build",
        "--local",
        "--wheel",
        str(arch_wheel),
        "--manifest",
        str(tmp_path / "manifest.json"),
        f"ansible_dir={tmp_path / 'no-ansible'}",
    )
    assert result.returncode == 1
    assert "\narchctl ami build: `" in result.stderr  # after the streamed ui errors
    assert "Script exited with non-zero exit status: 127" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "manifest.json").exists()


def baked_wheel(stderr: str) -> tuple[str, str, str]:
    """(file name, version, sha256) of the wheel archctl ami build says it bakes."""
    match = re.search(
        r"archctl ami build: baking (\S+) \(arch (\S+), sha256 ([0-9a-f]{64})\)", stderr
    )
    assert match is not None, stderr[-3000:]
    return match.group(1), match.group(2), match.group(3)


def test_local_build_checks_records_the_wheel_and_cleans_the_named_root(
    tmp_path: Path, arch_wheel: Path
) -> None:
    """The null source without the role (local_provision=false): the wheel's hash is checked and
    recorded, and the clean-up runs on a prepared tree, never on this machine."""
    root = tmp_path / "image"
    prepare_instance_tree(root)
    manifest = tmp_path / "manifest.json"
    before = host_identity()
    result = archctl(
        "ami",
        "build",
        "--local",
        "--wheel",
        str(arch_wheel),
        "--manifest",
        str(manifest),
        "local_provision=false",
        f"local_clean_root={root}",
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    wheel_sha256 = hashlib.sha256(arch_wheel.read_bytes()).hexdigest()
    assert baked_wheel(result.stderr) == (arch_wheel.name, "0.1.0", wheel_sha256)
    assert f"{arch_wheel}: OK" in result.stdout  # sha256sum --check, the first provisioner
    print("\n".join(line for line in result.stdout.splitlines() if "clean-image" in line))
    assert leftovers(root) == [] and missing_kept(root) == []
    assert host_identity() == before
    (build,) = json.loads(manifest.read_text())["builds"]
    assert build["custom_data"]["arch_wheel"] == arch_wheel.name
    assert build["custom_data"]["arch_wheel_sha256"] == wheel_sha256
    assert build["custom_data"]["arch_version"] == "0.1.0"
    assert build["custom_data"]["cleaned_root"] == str(root)


def test_the_clean_up_never_takes_this_machine_as_its_root() -> None:
    result = archctl("ami", "validate", "local_clean_root=/")
    assert result.returncode == 1
    assert "The local_clean_root must be an absolute directory other than /" in result.stdout


@pytest.fixture(scope="module")
def installed_archctl(tmp_path_factory: pytest.TempPathFactory, arch_wheel: Path) -> Path:
    """archctl of a venv where the arch wheel is installed as the README says (not editable,
    no checkout on its path)."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{arch_wheel}[delivery]",
        ],
        check=True,
        timeout=900,
    )
    return venv / "bin" / "archctl"


@pytest.mark.root
def test_local_build_from_an_installed_package_provisions_this_host_and_cleans_the_image_tree(
    role_lock: None, tmp_path: Path, installed_archctl: Path
) -> None:
    root = tmp_path / "image"
    prepare_instance_tree(root)
    manifest = tmp_path / "manifest.json"
    before = host_identity()
    result = subprocess.run(
        [
            str(installed_archctl),
            "ami",
            "build",
            "--local",
            "--manifest",
            str(manifest),
            "local_install_docker=true",
            f"local_clean_root={root}",
        ],
        capture_output=True,
        text=True,
        timeout=ROLE_TIMEOUT,
        cwd=tmp_path,  # nowhere near a checkout
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    name, version, wheel_sha256 = baked_wheel(result.stderr)
    assert (name, version) == ("arch-0.1.0-py3-none-any.whl", "0.1.0")
    # install.sh reports on stderr, which packer relays as ui errors (archctl: on stderr).
    assert "arch-install: done" in result.stderr  # the role ran through install.sh
    # The role installed exactly that wheel (wheel mode records its sha256).
    installed = Path("/opt/arch/venv/.arch-source.sha256").read_text().strip()
    assert installed == f"wheel:{wheel_sha256}"
    # archctl verify, a later provisioner, printed its checks (and passed: the build did).
    verify_lines = re.findall(r"local\.null\.local: (ok|warn|FAIL) +(\S+)", result.stdout)
    assert ("ok", "runc") in verify_lines and ("ok", "criu") in verify_lines, result.stdout[-3000:]
    assert not [name for status, name in verify_lines if status == "FAIL"]
    # The clean-up ran on the image tree only.
    assert leftovers(root) == [] and missing_kept(root) == []
    assert host_identity() == before
    assert f"built local: Null (manifest {manifest})" in result.stdout
    (build,) = json.loads(manifest.read_text())["builds"]
    assert build["name"] == "local" and build["builder_type"] == "null"
    assert build["custom_data"]["flavour"] == "local"
    assert build["custom_data"]["arch_version"] == "0.1.0"
    assert build["custom_data"]["arch_wheel_sha256"] == wheel_sha256
