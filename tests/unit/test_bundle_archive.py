"""`archctl bundle`'s pieces that need no network: which installer requirements each
interpreter gets, the role's pinned CRIU, platform tags, and the userdata's bundle mode."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from arch.cli.main import main as archctl
from arch.delivery.bundle import (
    BundleError,
    criu_source,
    installer_requirements,
    marker_holds,
    platform_tags,
)
from arch.delivery.resources import ansible_dir
from arch.delivery.userdata import PackageSource, UserdataError, UserdataOptions, render_userdata

REQUIREMENTS = (ansible_dir() / "requirements.txt").read_text()
DEFAULTS = (ansible_dir() / "roles" / "arch" / "defaults" / "main.yml").read_text()


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_each_controller_interpreter_gets_exactly_one_ansible_core(python: str) -> None:
    (requirement,) = installer_requirements(REQUIREMENTS, python)
    assert re.fullmatch(r"ansible-core==\d+\.\d+\.\d+", requirement), requirement


@pytest.mark.parametrize("python", ["3.9", "3.10"])
def test_older_interpreters_only_run_arch(python: str) -> None:
    # Amazon Linux 2023's python3 (3.9) runs arch; its installer runs under python3.11.
    assert installer_requirements(REQUIREMENTS, python) == []


def test_markers() -> None:
    assert marker_holds('python_version >= "3.10" and python_version < "3.11"', "3.10")
    assert not marker_holds('python_version >= "3.10" and python_version < "3.11"', "3.11")
    assert marker_holds("python_version != '3.9'", "3.12")
    with pytest.raises(BundleError, match="cannot evaluate"):
        marker_holds('platform_machine == "x86_64"', "3.11")


def test_the_roles_pinned_criu() -> None:
    source = criu_source(DEFAULTS)
    assert source.url.endswith(f"criu_{source.version}.orig.tar.xz")
    assert re.fullmatch(r"[0-9a-f]{64}", source.sha256)
    with pytest.raises(BundleError, match="no arch_criu_url"):
        criu_source(DEFAULTS.replace("arch_criu_url:", "arch_criu_elsewhere:"))


def test_wheels_run_on_the_oldest_glibc_of_the_targets() -> None:
    tags = platform_tags("x86_64")
    assert "manylinux2014_x86_64" in tags and "manylinux_2_34_x86_64" in tags
    assert "manylinux_2_35_x86_64" not in tags  # Amazon Linux 2023 has glibc 2.34


def test_bundle_refuses_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert archctl(["bundle", "-o", str(tmp_path / "b.tgz")]) == 2
    assert ".tar" in capsys.readouterr().err
    assert archctl(["bundle", "-o", str(tmp_path / "b.tar"), "--python", "2.7", "--no-criu"]) == 1
    assert "3.9 or 3.11" in capsys.readouterr().err
    assert not (tmp_path / "b.tar").exists()


def test_userdata_takes_a_bundle_and_installs_offline(tmp_path: Path) -> None:
    package = PackageSource.parse("https://example.com/dist/arch-bundle-0.1.0.tar")
    assert package.is_bundle
    script = render_userdata(UserdataOptions(package, ecs_cluster="prod"))
    assert "readonly package_is_bundle=true\n" in script
    assert "sha256sum --quiet --strict -c SHA256SUMS" in script
    assert 'export PIP_NO_INDEX=1 PIP_FIND_LINKS="$bundle_dir/wheels"' in script
    path = tmp_path / "userdata.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
    wheel = PackageSource.parse("s3://bucket/arch-0.1.0-py3-none-any.whl")
    assert not wheel.is_bundle
    assert "readonly package_is_bundle=false\n" in render_userdata(UserdataOptions(wheel))
    with pytest.raises(UserdataError, match="bundle"):
        PackageSource.parse("https://example.com/arch.tar.gz")
