"""The role's chroot detection: in a chroot (a Packer chroot build) it starts no service.

The role's preflight (read-only: stats, fact gathering, assertions) runs on this host, as
site.yml runs it (facts: the `min` subset, which lacks is_chroot), once with the chroot forced
(arch_chroot=true) and once detected (auto; this machine is no chroot). What it decides is what
every service task and check is conditioned on: no systemd call, no directly started
containerd or exit watcher, and so no archctl verify or selftest in a chroot.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from harness.role import run_play

pytestmark = [pytest.mark.root]

DECISION = re.compile(r"ARCH-DECISION (\{.*\})")


def preflight_decision(work: Path, arch_chroot: str) -> dict[str, object]:
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
    output = run_play(work / f"preflight-{arch_chroot}.yml", play)
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
