"""The whole role in check mode with Amazon Linux 2023's facts: its dnf path's task graph,
variables and templates, on this Debian host, which cannot run that path for real.

The play runs in a real chroot of this host (harness/chroot.py) laid out as a fresh AL2023 host:
runc and dockerd in /usr/bin (Debian has them in /usr/sbin), the distribution's CRIU in
/usr/sbin/criu (a copy of the CRIU the installed appliance uses, which passes `criu check` on
this kernel, standing in for AL2023's criu 3.17.1, which passes on AL2023's kernel 6.1), and no
ARCH installed. The play gathers no facts: its first task seeds AL2023_FACTS. Ansible's dnf
module cannot run here, so a test module in its place (role_stand_ins/dnf.py, check mode only)
records what it was asked to install, and the play's last task writes the role's decisions
(its variables, arch.toml rendered) to a file the test reads.

It runs twice: with this host's installer (ansible/install.sh's bootstrap), and with the one
install.sh makes on AL2023, whose python3 is 3.9: ansible/requirements.txt's ansible-core in a
python3.11 venv (AL2023 packages python3.11), modules run by Python 3.9. tests/run.sh makes that
venv and names its ansible-playbook in $ARCH_TEST_AL2023_ANSIBLE_PLAYBOOK, the 3.9 interpreter
in $ARCH_TEST_AL2023_MODULE_PYTHON.

Check mode must change nothing: every write in the chroot lands in its overlay's upper layer,
and that layer is compared before and after (as are the host's ARCH files, byte for byte).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.chroot import host_chroot
from harness.role import ANSIBLE_PLAYBOOK, REPO, run_play

from tests.conftest import unavailable

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

pytestmark = [pytest.mark.root]

STAND_INS = Path(__file__).resolve().parent / "role_stand_ins"
AL2023_CONTROLLER_ENV = "ARCH_TEST_AL2023_ANSIBLE_PLAYBOOK"
AL2023_MODULE_PYTHON_ENV = "ARCH_TEST_AL2023_MODULE_PYTHON"
HOST_ARCH_CONFIG = Path("/etc/arch/arch.toml")
# What check mode must leave byte for byte as it was on the host.
HOST_FILES = (
    Path("/etc/containerd/config.toml"),
    Path("/etc/docker/daemon.json"),
    HOST_ARCH_CONFIG,
    Path("/usr/local/bin/arch-runc"),
)
# An ARCH install, hidden in the chroot: the AL2023 host is fresh.
ARCH_INSTALL_PATHS = (
    "/etc/arch",
    "/opt/arch/venv",
    "/opt/arch/src",
    "/opt/arch/.launcher.sha256",
    "/usr/local/bin/arch-runc",
    "/usr/local/bin/archctl",
    "/usr/local/sbin/criu",
    "/var/lib/arch",
    "/var/log/arch",
    "/var/cache/arch",
    "/etc/containerd/config.toml",
    "/etc/docker/daemon.json",
    "/etc/tmpfiles.d/arch.conf",
    "/etc/systemd/system/arch-verify.service",
    "/etc/systemd/system/arch-exit-watch.service",
    "/etc/systemd/system/arch-spot-watch.service",
    "/etc/systemd/system/multi-user.target.wants/arch-verify.service",
    "/etc/systemd/system/multi-user.target.wants/arch-exit-watch.service",
    "/etc/systemd/system/multi-user.target.wants/arch-spot-watch.service",
    "/checkpoint",
)
DEBIAN_PATHS_HIDDEN = ("/usr/sbin/runc", "/usr/sbin/dockerd")

# The facts `ansible -m setup` gathers on an Amazon Linux 2023 x86_64 EC2 instance (the ECS AMI),
# as ansible-core computes them: distribution from /etc/os-release (NAME="Amazon Linux",
# VERSION_ID="2023": version 2023, major 2023, minor NA; os_family RedHat), pkg_mgr dnf (AL2023
# ships dnf 4 as /usr/bin/dnf), python the system python3.9, kernel 6.1 (amzn2023 build),
# systemd, not a chroot. Only facts' shape and the values the role may read matter here.
AL2023_FACTS: dict[str, Any] = {
    "architecture": "x86_64",
    "machine": "x86_64",
    "system": "Linux",
    "kernel": "6.1.158-180.294.amzn2023.x86_64",
    "kernel_version": "#1 SMP PREEMPT_DYNAMIC Mon Nov 10 18:31:34 UTC 2025",
    "os_family": "RedHat",
    "distribution": "Amazon",
    "distribution_version": "2023",
    "distribution_major_version": "2023",
    "distribution_minor_version": "NA",
    "distribution_release": "NA",
    "distribution_file_path": "/etc/os-release",
    "distribution_file_variety": "Amazon",
    "distribution_file_parsed": True,
    "os_release": "Amazon Linux 2023",
    "pkg_mgr": "dnf",
    "service_mgr": "systemd",
    "is_chroot": False,
    "selinux": {"status": "enabled", "mode": "permissive", "type": "targeted"},
    "selinux_python_present": True,
    "python_version": "3.9.24",
    "python": {
        "executable": "/usr/bin/python3.9",
        "has_sslcontext": True,
        "type": "cpython",
        "version": {"major": 3, "minor": 9, "micro": 24, "releaselevel": "final", "serial": 0},
        "version_info": [3, 9, 24, "final", 0],
    },
    "userspace_architecture": "x86_64",
    "userspace_bits": "64",
    "virtualization_role": "guest",
    "virtualization_type": "kvm",
    "user_id": "root",
    "user_uid": 0,
    "user_dir": "/root",
    "env": {"HOME": "/root", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"},
    "hostname": "ip-10-0-1-23",
    "nodename": "ip-10-0-1-23.eu-west-1.compute.internal",
    "domain": "eu-west-1.compute.internal",
    "fqdn": "ip-10-0-1-23.eu-west-1.compute.internal",
}

# Amazon Linux 2023's names for what the role installs (its repositories' package names).
AL2023_BASE_PACKAGES = {
    "runc",
    "containerd",
    "iptables-nft",
    "python3",
    "python3-pip",
    "gcc",
    "glibc-devel",
    "make",
    "tar",
    "xz",
    "ca-certificates",
}
# Debian's names, which dnf would not find.
DEBIAN_ONLY_PACKAGES = {
    "docker.io", "docker-cli", "python3-venv", "libc6-dev", "xz-utils", "busybox-static",
    "nfs-common", "libgnutls28-dev",
}  # fmt: skip

RECAP = re.compile(r"^localhost\s+:(.*)$", re.MULTILINE)
DECISION = {
    "real_runc": "{{ arch_real_runc }}",
    "criu": "{{ arch_criu_path }}",
    "docker_installed": "{{ arch_docker_installed | bool }}",
    "was_installed": "{{ arch_was_installed | bool }}",
    "chroot": "{{ arch_in_chroot | bool }}",
    "systemd": "{{ arch_systemd_running | bool }}",
    "direct": "{{ arch_manage_containerd_directly | bool }}",
    "arch_toml": "{{ lookup('ansible.builtin.template', arch_toml_template) }}",
}


def installed_runc_and_criu() -> tuple[Path, Path]:
    """The runc and the CRIU (one passing `criu check` here) of the installed appliance."""
    config = tomllib.loads(HOST_ARCH_CONFIG.read_text())
    return Path(config["runc"]).resolve(), Path(config["criu"]).resolve()


def host_dockerd() -> Path:
    for candidate in (Path("/usr/sbin/dockerd"), Path("/usr/bin/dockerd")):
        if candidate.is_file():
            return candidate.resolve()
    raise AssertionError("no dockerd on this host: ansible/install.sh installs Docker")


def play_recap(output: str) -> dict[str, int]:
    """This host's counters in ansible-playbook's PLAY RECAP."""
    found = RECAP.search(output)
    assert found, output
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", found.group(1))}


def controller(which: str) -> tuple[Path, list[str]]:
    """The ansible-playbook to run, and its options: the module interpreter for AL2023's."""
    if which == "host":
        return ANSIBLE_PLAYBOOK, []
    playbook = os.environ.get(AL2023_CONTROLLER_ENV, "")
    if not playbook or not Path(playbook).is_file():
        unavailable(
            f"${AL2023_CONTROLLER_ENV} names no ansible-playbook: tests/run.sh makes one (the "
            "installer AL2023 gets: ansible/requirements.txt in a python3.11 venv)"
        )
    python = os.environ.get(AL2023_MODULE_PYTHON_ENV, "")
    if not python or not Path(python).is_file():
        unavailable(
            f"${AL2023_MODULE_PYTHON_ENV} names no Python 3.9: AL2023's python3, which runs "
            "the role's modules there (tests/run.sh sets it)"
        )
    return Path(playbook), ["-e", f"ansible_python_interpreter={python}"]


@pytest.mark.parametrize("which_controller", ["host", "al2023"])
def test_role_check_mode_with_al2023_facts(tmp_path: Path, which_controller: str) -> None:
    if not HOST_ARCH_CONFIG.is_file():
        pytest.fail(f"{HOST_ARCH_CONFIG} missing: run ansible/install.sh first")
    ansible_playbook, controller_options = controller(which_controller)
    runc, criu = installed_runc_and_criu()
    host_files_before = {path: path.read_bytes() for path in HOST_FILES}
    needed = [REPO, ansible_playbook.parent]
    with host_chroot(tmp_path / "chroot", needed=needed) as chroot:
        for path in ARCH_INSTALL_PATHS + DEBIAN_PATHS_HIDDEN:
            chroot.hide(path)
        chroot.put("/usr/bin/runc", copy_of=runc)
        chroot.put("/usr/bin/dockerd", copy_of=host_dockerd())
        chroot.put("/usr/sbin/criu", copy_of=criu)
        library = chroot.share / "library"
        library.mkdir()
        for module in ("dnf.py", "seed_facts.py"):
            (library / module).write_bytes((STAND_INS / module).read_bytes())
        requests_file = chroot.share / "dnf-requests.jsonl"
        decision_file = chroot.share / "decision.json"
        before = chroot.changes()

        play = {
            "name": "ARCH on Amazon Linux 2023 (check mode)",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {"name": "Seed Amazon Linux 2023's facts", "seed_facts": {"facts": AL2023_FACTS}},
                {
                    "name": "The role",
                    "ansible.builtin.include_role": {"name": "arch", "public": True},
                },
                {
                    "name": "Hand the role's decisions to the test",
                    "ansible.builtin.copy": {
                        "content": "{{ decision | to_json }}",
                        "dest": str(decision_file),
                        "mode": "0600",
                    },
                    "vars": {"decision": DECISION},
                    "check_mode": False,
                },
            ],
        }
        output = run_play(
            tmp_path / "al2023-check.yml",
            play,
            options=[
                "--check",
                "-e", f"arch_source_dir={REPO}",
                "-e", f"arch_toml_template={REPO}/ansible/roles/arch/templates/arch.toml.j2",
                *controller_options,
            ],
            environment={
                "ANSIBLE_LIBRARY": str(library), "ARCH_TEST_DNF_REQUESTS": str(requests_file),
            },
            chroot=chroot,
            ansible_playbook=ansible_playbook,
        )  # fmt: skip
        after = chroot.changes()

    recap = play_recap(output)
    assert recap["failed"] == 0 and recap["unreachable"] == 0, output
    requests = [json.loads(line) for line in requests_file.read_text().splitlines()]
    requested = {name for request in requests for name in request["name"]}
    assert all(request["state"] == "present" for request in requests), requests
    base = next(set(r["name"]) for r in requests if "containerd" in r["name"])
    assert base == AL2023_BASE_PACKAGES, requests
    # Docker; the CRIU package; the compiler and libc.a `archctl selftest` builds its payload with.
    assert {"docker", "criu", "gcc", "glibc-static"} <= requested, requests
    assert not requested & DEBIAN_ONLY_PACKAGES, requests
    assert "busybox" not in requested, requests  # not in AL2023's repositories
    # The distro CRIU passes `criu check`: no build (its -devel packages are not asked for).
    assert not {name for name in requested if name.endswith("-devel")} - {"glibc-devel"}, requests

    decision = json.loads(decision_file.read_text())
    arch_toml = tomllib.loads(decision.pop("arch_toml"))
    assert decision == {
        "real_runc": "/usr/bin/runc",
        "criu": "/usr/sbin/criu",
        "docker_installed": True,
        "was_installed": False,
        "chroot": False,
        # No systemd runs in the chroot: ARCH would start containerd itself.
        "systemd": False,
        "direct": True,
    }, output
    assert arch_toml["runc"] == "/usr/bin/runc"
    assert arch_toml["criu"] == "/usr/sbin/criu"
    assert arch_toml["checkpoint_root"] == "/checkpoint"
    # Check mode reports what a real run would do, and does none of it.
    assert recap["changed"] > 0, output
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
    assert {path: path.read_bytes() for path in HOST_FILES} == host_files_before
