"""arch.runc.leftover_mounts with real mounts: a work directory holding what a killed CRIU
leaves (its cgroup yard: a tmpfs with a cgroup hierarchy mounted below it) is unmounted and
removed, and the removal never reaches into the mounted hierarchy (an empty cgroup of the host
stays)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from arch.runc import leftover_mounts
from arch.runc.leftover_mounts import (
    mounts_under,
    remove_tree,
    unmount_cgroup_yards,
    unmount_under,
)
from tests.conftest import CgroupHierarchy, unavailable

pytestmark = pytest.mark.root

def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def hierarchy() -> CgroupHierarchy:
    if os.geteuid() != 0:
        unavailable("mounting needs root")
    return CgroupHierarchy.find()


@pytest.fixture
def host_cgroup(hierarchy: CgroupHierarchy) -> Iterator[Path]:
    """An empty cgroup of this test's own in a hierarchy of the host."""
    cgroup = hierarchy.host_mount / f"arch-test-{uuid.uuid4().hex[:8]}"
    cgroup.mkdir()
    try:
        yield cgroup
    finally:
        cgroup.rmdir()


@pytest.fixture
def cgroup_yard(
    tmp_path: Path, hierarchy: CgroupHierarchy, host_cgroup: Path
) -> Iterator[Path]:
    """A restore work directory as a SIGKILLed CRIU leaves it: restore.log, and a tmpfs yard
    with a hierarchy of the host mounted in it."""
    work = tmp_path / "restore-abc123"
    yard = work / ".criu.cgyard.Xy12Zw"
    yard.mkdir(parents=True)
    (work / "restore.log").write_text("(00.01) cg: Preparing cgroups yard\n")
    mount("-t", "tmpfs", "none", str(yard))
    (yard / hierarchy.name).mkdir()
    mount(*hierarchy.mount_args, str(yard / hierarchy.name))
    try:
        yield work
    finally:
        for point in mounts_under(str(work)):
            subprocess.run(["umount", "-l", point], check=False, timeout=30)


def test_remove_tree_unmounts_the_yard_first_and_leaves_the_hierarchy_alone(
    cgroup_yard: Path, hierarchy: CgroupHierarchy, host_cgroup: Path
) -> None:
    yard = cgroup_yard / ".criu.cgyard.Xy12Zw"
    assert (yard / hierarchy.name / host_cgroup.name).is_dir()  # the host's, seen in the yard

    detached = remove_tree(str(cgroup_yard))

    print(f"detached: {detached}")
    assert detached == [str(yard / hierarchy.name), str(yard)]
    assert not cgroup_yard.exists()
    assert mounts_under(str(cgroup_yard.parent)) == []
    assert host_cgroup.is_dir()


def test_unmount_under_keeps_the_directory_and_reports_nothing_when_nothing_is_mounted(
    cgroup_yard: Path,
) -> None:
    assert len(unmount_under(str(cgroup_yard))) == 2
    assert (cgroup_yard / "restore.log").is_file()
    assert unmount_under(str(cgroup_yard)) == []
    assert remove_tree(str(cgroup_yard)) == []
    assert not cgroup_yard.exists()


def test_remove_tree_of_a_missing_or_relative_path_does_nothing(tmp_path: Path) -> None:
    assert remove_tree(str(tmp_path / "absent")) == []
    assert remove_tree("relative/path") == []


def test_in_a_directory_arch_does_not_own_only_criu_s_yards_are_unmounted(
    cgroup_yard: Path, hierarchy: CgroupHierarchy
) -> None:
    """A work directory a CRIU configuration file names: its other mounts are not ARCH's."""
    other = cgroup_yard / "someone-elses"
    other.mkdir()
    mount("-t", "tmpfs", "none", str(other))
    yard = cgroup_yard / ".criu.cgyard.Xy12Zw"

    detached = unmount_cgroup_yards(str(cgroup_yard))

    assert detached == [str(yard / hierarchy.name), str(yard)]
    assert mounts_under(str(cgroup_yard)) == [str(other)]


@pytest.mark.parametrize(
    "unmount", [leftover_mounts.unmount_under, leftover_mounts.unmount_cgroup_yards]
)
def test_an_unreadable_mountinfo_is_reported_as_mounts_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unmount: Callable[[str], list[str]]
) -> None:
    """Callers catch MountsLeft (the work directory is then kept, never removed into a mount):
    a mountinfo that cannot be read must not escape as another error."""
    monkeypatch.setattr(leftover_mounts, "MOUNTINFO", str(tmp_path / "no-mountinfo"))
    with pytest.raises(leftover_mounts.MountsLeft, match="cannot read"):
        unmount(str(tmp_path))
