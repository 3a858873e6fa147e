"""The role's chroot detection: in a chroot (a Packer chroot build) it starts no service.

The role's preflight (read-only: stats, fact gathering, assertions) runs as site.yml runs it
(facts: the `min` subset, which lacks is_chroot): on this host with the chroot forced
(arch_chroot=true) and detected (auto; this machine is no chroot), and in a real chroot of this
host (harness/chroot.py) detected (auto) and overridden (false). What it decides is what every
service task and check is conditioned on: no systemd call, no directly started containerd or
exit watcher, and so no archctl verify or selftest in a chroot.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from harness.chroot import HostChroot, host_chroot
from harness.role import ANSIBLE_PLAYBOOK, REPO, run_play

pytestmark = [pytest.mark.root]

DECISION = re.compile(r"ARCH-DECISION (\{.*\})")


def preflight_decision(
    work: Path, arch_chroot: str, chroot: HostChroot | None = None
) -> dict[str, object]:
    play = {
        "hosts": "localhost",
        "gather_facts": True,
        "gather_subset": ["!all", "min"],  # as site.yml
        "tasks": [
            {"ansible.builtin.include_role": {"name": "arch", "tasks_from": "preflight"},
             "vars": {"arch_chroot": arch_chroot}},
            {"ansible.builtin.debug": {"msg": "ARCH-DECISION {{ {"
             "'chroot': arch_in_chroot | bool, 'systemd': arch_systemd_running | bool, "
             "'direct': arch_manage_containerd_directly | bool, "
             "'is_chroot_gathered': 'is_chroot' in ansible_facts} | to_json }}"}},
        ],
    }  # fmt: skip
    output = run_play(work / f"preflight-{arch_chroot}.yml", play, chroot=chroot)
    found = DECISION.search(output)
    assert found, output
    decision: dict[str, object] = json.loads(found.group(1).replace('\\"', '"'))
    return decision


def test_forced_chroot_starts_nothing(tmp_path: Path) -> None:
    assert preflight_decision(tmp_path, "true") == {
        "chroot": True, "systemd": False, "direct": False, "is_chroot_gathered": False,
    }  # fmt: skip


def test_chroot_is_detected_where_the_play_gathered_only_min_facts(tmp_path: Path) -> None:
    # This machine is no chroot and has no systemd as PID 1: ARCH starts containerd itself.
    assert not Path("/run/systemd/system").is_dir()
    assert preflight_decision(tmp_path, "auto") == {
        "chroot": False, "systemd": False, "direct": True, "is_chroot_gathered": True,
    }  # fmt: skip


def test_a_real_chroot_is_detected_and_starts_nothing(tmp_path: Path) -> None:
    # Ansible compares / with /proc/1/root (another device here: the chroot's root is a tmpfs);
    # where PID 1's root cannot be read (some VMs deny it even to root) it checks that /'s inode
    # is the root inode of its filesystem (2 on ext4; 1 on the chroot's tmpfs). Both see this.
    with host_chroot(tmp_path / "chroot", needed=[REPO, ANSIBLE_PLAYBOOK.parent]) as chroot:
        before = chroot.changes()
        assert preflight_decision(tmp_path, "auto", chroot) == {
            "chroot": True, "systemd": False, "direct": False, "is_chroot_gathered": True,
        }  # fmt: skip
        # arch_chroot=false overrides the detection (services are then managed as on a host).
        assert preflight_decision(tmp_path, "false", chroot) == {
            "chroot": False, "systemd": False, "direct": True, "is_chroot_gathered": False,
        }  # fmt: skip
        # The preflight is read-only: the chroot's filesystem is as it was.
        assert chroot.changes() == before


def test_the_whole_role_in_a_real_chroot_installs_and_starts_nothing(tmp_path: Path) -> None:
    """What a Packer chroot build runs: site.yml's play, for real (its writes land in the
    chroot's overlay). No service is started or restarted, verify and selftest do not run."""
    host_files = [Path("/etc/arch/arch.toml"), Path("/etc/containerd/config.toml")]
    host_before = {path: path.read_bytes() for path in host_files}
    with host_chroot(tmp_path / "chroot", needed=[REPO, ANSIBLE_PLAYBOOK.parent]) as chroot:
        play = {
            "hosts": "localhost",
            "gather_facts": True,
            "gather_subset": ["!all", "min"],  # as site.yml
            "roles": [{"role": "arch", "vars": {"arch_source_dir": str(REPO)}}],
        }
        output = run_play(tmp_path / "site.yml", play, chroot=chroot)
        recap = re.search(r"^localhost\s+:.*\bfailed=(\d+)", output, re.MULTILINE)
        assert recap and recap.group(1) == "0", output
        assert "archctl selftest: not run" in output, output
        assert "archctl verify: not run (no running services here)" in output, output
        # Nothing started: no pidfile of a directly started containerd or exit watcher.
        run_files = sorted(
            str(path.relative_to(chroot.run_dir)) for path in chroot.run_dir.rglob("*")
        )
        assert not [name for name in run_files if name.endswith(".pid")], run_files
        for started in ("Start containerd directly", "Start the exit watcher directly"):
            assert not re.search(rf"TASK \[arch : {started}[^\n]*\n(ok|changed)", output), output
    assert {path: path.read_bytes() for path in host_files} == host_before
