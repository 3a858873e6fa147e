"""packer/scripts/clean-image.sh on a prepared tree laid out like a provisioned instance: instance
state goes, configuration stays, and nothing outside the target root is touched (the machine
running the test keeps its machine-id and SSH host keys). Through packer's null source:
test_ami.py."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.image_tree import host_identity, leftovers, missing_kept, prepare_instance_tree

from arch.delivery.resources import packer_dir

CLEAN_IMAGE = packer_dir() / "scripts" / "clean-image.sh"


def clean(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CLEAN_IMAGE), *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(autouse=True)
def _host_keeps_its_identity() -> Iterator[None]:
    before = host_identity()
    yield
    assert host_identity() == before


def test_instance_state_goes_and_configuration_stays(tmp_path: Path) -> None:
    root = tmp_path / "image"
    prepare_instance_tree(root)
    assert leftovers(root)  # the tree holds state before
    result = clean("--root", str(root))
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert leftovers(root) == []
    assert missing_kept(root) == []
    assert "clean-image: emptied /etc/machine-id" in result.stdout
    assert "clean-image: removed /var/lib/ecs/data/ecs_agent_data.db" in result.stdout
    again = clean("--root", str(root))  # a clean tree stays clean
    assert again.returncode == 0 and "done, 0 paths removed or emptied" in again.stdout


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "image"
    prepare_instance_tree(root)
    outside = tmp_path / "host-logs"  # stands for the machine running the clean-up
    outside.mkdir()
    (outside / "keep.log").write_text("the host's own log\n")
    for entry in (root / "var/log/ecs").iterdir():
        entry.unlink()
    (root / "var/log/ecs").rmdir()
    (root / "var/log/ecs").symlink_to(outside)
    result = clean("--root", str(root))
    print(result.stderr)
    assert result.returncode == 1
    assert f"refused {root}/var/log/ecs: resolves to {outside}, outside {root}" in result.stderr
    assert "the image is not clean" in result.stderr
    assert (outside / "keep.log").read_text() == "the host's own log\n"
    assert "var/lib/ecs/data/ecs_agent_data.db" not in leftovers(root)  # the rest was cleaned


def test_the_running_system_is_only_cleaned_as_a_live_image(tmp_path: Path) -> None:
    for root in ("/", str(tmp_path) + "/.." * len(tmp_path.parts)):
        result = clean("--root", root)
        assert result.returncode == 1, result.stdout
        assert "--root / cleans the running system" in result.stderr
        assert "removed" not in result.stdout


def test_usage_errors() -> None:
    assert clean().returncode == 2
    assert clean("--root").returncode == 2
    assert clean("--root", "/nonexistent-dir").returncode == 1
