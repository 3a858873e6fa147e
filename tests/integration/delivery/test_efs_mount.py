"""The role's choice of EFS mount (configure-storage.yml): amazon-efs-utils' `efs` type with TLS
and IAM where the mount helper is installed, plain NFSv4.1 as the stated fallback, a clear
failure when the helper is required and missing.

These machines have no NFS client in the kernel, so nothing is mounted: the role runs in check
mode with --diff (the /etc/fstab line it would write is in its output, the host's fstab is not
touched), or stops at its own check before any change. The helper is a stand-in file at a path
the test names (arch_efs_mount_helper): only its presence is what the role looks at.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from harness.role import run_play

pytestmark = pytest.mark.root  # the play reads root's view of the host (package state, fstab)

EFS_SOURCE = "fs-0123456789abcdef0.efs.eu-west-1.amazonaws.com:/"


def storage_play(tmp_path: Path, **variables: object) -> dict[str, object]:
    settings = {
        "arch_checkpoint_root": str(tmp_path / "checkpoint"),
        "arch_checkpoint_nfs_source": EFS_SOURCE,
        "arch_os_nfs_packages": [],  # nothing to install for a check
        "arch_os_efs_packages": [],
        "arch_os_mkfs_packages": {},
        **variables,
    }
    task = {
        "name": "The role's configure-storage.yml",
        "ansible.builtin.include_role": {"name": "arch", "tasks_from": "configure-storage"},
        "vars": settings,
    }
    return {"hosts": "localhost", "gather_facts": False, "tasks": [task]}


def fstab_digest() -> str:
    return hashlib.sha256(Path("/etc/fstab").read_bytes()).hexdigest()


def planned_fstab_line(output: str, root: Path) -> str:
    lines = [line for line in output.splitlines() if line.startswith("+") and str(root) in line]
    assert len(lines) == 1, output[-3000:]
    return lines[0][1:].strip()


def test_efs_through_the_mount_helper_with_tls_and_iam(tmp_path: Path) -> None:
    helper = tmp_path / "mount.efs"
    helper.write_text("#!/bin/sh\n")
    before = fstab_digest()
    output = run_play(
        tmp_path / "play.yml",
        storage_play(tmp_path, arch_efs_mount_helper=str(helper)),
        options=["--check", "--diff"],
    )
    line = planned_fstab_line(output, tmp_path / "checkpoint")
    print("planned:", line)
    assert line.split() == [
        EFS_SOURCE, str(tmp_path / "checkpoint"), "efs", "_netdev,noresvport,tls,iam,nofail",
        "0", "0",
    ]  # fmt: skip
    assert "is mounted as plain NFSv4.1" not in output
    assert fstab_digest() == before


def test_plain_nfs_is_the_stated_fallback_without_the_helper(tmp_path: Path) -> None:
    output = run_play(
        tmp_path / "play.yml",
        storage_play(tmp_path, arch_efs_mount_helper=str(tmp_path / "absent")),
        options=["--check", "--diff"],
    )
    fields = planned_fstab_line(output, tmp_path / "checkpoint").split()
    assert fields[2] == "nfs4" and "nfsvers=4.1" in fields[3].split(",")
    assert f"{EFS_SOURCE} is mounted as plain NFSv4.1, without TLS or IAM" in output
    assert f"({tmp_path / 'absent'} is not installed)" in output


def test_nfs_on_request_even_with_the_helper(tmp_path: Path) -> None:
    helper = tmp_path / "mount.efs"
    helper.write_text("#!/bin/sh\n")
    output = run_play(
        tmp_path / "play.yml",
        storage_play(tmp_path, arch_efs_mount_helper=str(helper), arch_checkpoint_efs_mount="nfs"),
        options=["--check", "--diff"],
    )
    assert planned_fstab_line(output, tmp_path / "checkpoint").split()[2] == "nfs4"
    assert "is not used: arch_checkpoint_efs_mount is nfs" in output


def test_a_required_helper_that_is_missing_stops_the_role_before_any_change(
    tmp_path: Path,
) -> None:
    before = fstab_digest()
    output = run_play(
        tmp_path / "play.yml",
        storage_play(
            tmp_path,
            arch_efs_mount_helper=str(tmp_path / "absent"),
            arch_checkpoint_efs_mount="efs",
        ),
        succeeds=False,
    )
    assert f"arch_checkpoint_efs_mount is efs but {tmp_path / 'absent'} is missing" in output
    assert fstab_digest() == before
    assert not (tmp_path / "checkpoint").exists()


def test_a_bad_choice_is_refused(tmp_path: Path) -> None:
    output = run_play(
        tmp_path / "play.yml",
        storage_play(tmp_path, arch_checkpoint_efs_mount="tls"),
        succeeds=False,
    )
    assert "arch_checkpoint_efs_mount must be auto, efs or nfs, not tls" in output
