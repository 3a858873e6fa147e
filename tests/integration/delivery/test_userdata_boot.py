"""The userdata bootstrap run for real on this host with the wheel built from this checkout,
as EC2 runs it at first boot; and what the wheel carries for it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from harness import procs
from harness.delivery import ROLE_TIMEOUT, archctl

from arch.delivery.userdata import LOG_FILE

ECS_CONFIG = Path("/etc/ecs/ecs.config")


def render(tmp_path: Path, *options: str) -> Path:
    script = tmp_path / "userdata.sh"
    result = archctl("userdata", *options, "-o", str(script))
    assert result.returncode == 0, result.stderr
    return script


def boot(script: Path, timeout: float = ROLE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the script the way cloud-init does: as root, with no AWS region or credentials."""
    environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    return procs.run(["bash", str(script)], timeout=timeout, env=environment, check=False)


def test_the_wheel_carries_templates_role_and_packer(arch_wheel: Path) -> None:
    names = set(zipfile.ZipFile(arch_wheel).namelist())
    for name in (
        "arch/_bundled/templates/userdata.sh.j2",
        "arch/_bundled/templates/batch-job.json.j2",
        "arch/_bundled/ansible/install.sh",
        "arch/_bundled/ansible/roles/arch/tasks/install-arch-wheel.yml",
        "arch/_bundled/packer/variables.pkr.hcl",
        "arch/shim/launcher.c",
    ):
        assert name in names
    assert not any("__pycache__" in name for name in names)


def test_an_installed_wheel_renders_from_its_own_templates(
    arch_wheel: Path, tmp_path: Path
) -> None:
    unpacked = tmp_path / "site"
    zipfile.ZipFile(arch_wheel).extractall(unpacked)
    environment = {**os.environ, "PYTHONPATH": str(unpacked)}
    # Not from the checkout: its arch/ would be importable from the working directory.
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "from arch.delivery import resources; print(resources.templates_dir())",
        ],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        check=True,
    )
    assert where.stdout.strip() == str(unpacked / "arch" / "_bundled" / "templates")
    result = archctl(
        "template", "batch-job", "-p", "name=j", "-p", "image=i", env=environment, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["retryStrategy"]["evaluateOnExit"][0]["action"] == "RETRY"


@pytest.mark.root
def test_it_fails_loudly_with_the_line(arch_wheel: Path, tmp_path: Path) -> None:
    missing = render(tmp_path, "--package", f"/nonexistent/{arch_wheel.name}")
    result = boot(missing, timeout=300)
    assert result.returncode == 1
    assert f"error: package /nonexistent/{arch_wheel.name} not found" in result.stdout
    # Fail closed: said in the log (and on the console), nothing admitted.
    assert "the ECS agent stays out of its cluster" in result.stdout
    corrupt = tmp_path / "corrupt" / arch_wheel.name
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a zip archive")
    result = boot(render(tmp_path, "--package", str(corrupt)), timeout=300)
    assert result.returncode != 0
    assert "FAILED at line" in result.stdout and "python3 -m zipfile -e" in result.stdout
    wrong_sum = render(tmp_path, "--package", str(arch_wheel), "--package-sha256", "0" * 64)
    result = boot(wrong_sum, timeout=300)
    assert result.returncode == 1 and f"expected {'0' * 64}" in result.stdout
    assert "FAILED at line" in Path(LOG_FILE).read_text()


@pytest.mark.root
def test_userdata_installs_this_host_from_the_wheel(
    arch_wheel: Path, role_lock: None, tmp_path: Path
) -> None:
    script = render(
        tmp_path, "--package", str(arch_wheel), "--role-var", "arch_install_docker=true"
    )
    result = boot(script)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("done: ARCH is installed and verified")
    assert "done: ARCH is installed and verified" in Path(LOG_FILE).read_text()
    wheel_sum = hashlib.sha256(arch_wheel.read_bytes()).hexdigest()
    installed = Path("/opt/arch/venv/.arch-source.sha256").read_text().strip()
    assert installed == f"wheel:{wheel_sum}"
    ecs_config = ECS_CONFIG.read_text().splitlines()
    assert "ECS_CONTAINER_STOP_TIMEOUT=2m" in ecs_config
    # Admitted only after `archctl verify` passed: ARCH's attribute for placement constraints.
    assert any(
        line.startswith("ECS_INSTANCE_ATTRIBUTES=") and '"arch.version"' in line
        for line in ecs_config
    ), ecs_config
    verify = subprocess.run(["/usr/local/bin/archctl", "verify"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
