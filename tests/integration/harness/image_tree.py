"""A directory laid out like a provisioned ECS/ARCH instance, for packer/scripts/clean-image.sh:
instance state that must be gone after the clean-up, and what an image must keep."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Files an instance leaves behind; each must be gone after the clean-up.
INSTANCE_FILES = [
    "etc/ssh/ssh_host_ed25519_key",
    "etc/ssh/ssh_host_ed25519_key.pub",
    "etc/ssh/ssh_host_rsa_key",
    "etc/hostname",
    "etc/locale.conf",
    "root/.ssh/authorized_keys",
    "root/.bash_history",
    "home/ec2-user/.ssh/authorized_keys",
    "home/ec2-user/.bash_history",
    "var/lib/cloud/instances/i-0123456789abcdef0/user-data.txt",
    "var/lib/cloud/data/instance-id",
    "var/log/cloud-init.log",
    "var/log/cloud-init-output.log",
    "var/lib/ecs/data/ecs_agent_data.db",
    "var/log/ecs/ecs-agent.log",
    "var/log/ecs/ecs-init.log",
    "var/log/messages",
    "var/log/secure",
    "var/log/wtmp",
    "var/log/audit/audit.log",
    "var/log/journal/0123abcd/system.journal",
    "var/log/sa/sa05",
    "var/log/amazon/ssm/amazon-ssm-agent.log",
    "var/lib/dhclient/dhclient--eth0.lease",
    "var/lib/rsyslog/imjournal.state",
    "var/lib/dnf/history.sqlite",
    "var/cache/dnf/amazonlinux.solv",
    "tmp/arch-wheel/arch-0.1.0-py3-none-any.whl",
    "var/tmp/cloud-init/scratch",
    "run/arch/default/c1/.restored",
    "checkpoint/default/job-1/pages-1.img",
    "checkpoint/default/job-1/metadata.json",
    "checkpoint/default/.selftest-leftover",
    "var/log/arch/arch.log",
    "var/log/arch-bootstrap.log",
    "var/cache/arch/criu-build/criu-4.2.1.tar.xz",
    "var/lib/node_exporter/textfile_collector/arch.prom",
]
# Directories whose contents go but which stay (owner and mode kept).
EMPTIED_DIRECTORIES = [
    "var/lib/cloud",
    "var/lib/ecs/data",
    "var/log/ecs",
    "var/log/journal",
    "tmp",
    "var/tmp",
    "run/arch",
    "checkpoint",
    "var/log/arch",
]
# What the image keeps: configuration, software, the agent's cached image, other users' keys'
# directories.
KEPT_FILES = [
    "etc/ecs/ecs.config",
    "etc/arch/arch.toml",
    "etc/arch/image.key",
    "etc/ssh/sshd_config",
    "var/cache/ecs/ecs-agent.tar",
    "usr/local/bin/archctl",
    "opt/arch/venv/bin/python",
]
MACHINE_ID = "etc/machine-id"


def prepare_instance_tree(root: Path) -> None:
    """Create every file above (with content) and a machine-id."""
    for relative in [*INSTANCE_FILES, *KEPT_FILES]:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"instance state: {relative}\n")
    (root / MACHINE_ID).write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(root / "checkpoint", 0o700)


def leftovers(root: Path) -> list[str]:
    """Instance state still in the tree (empty: clean)."""
    found = [relative for relative in INSTANCE_FILES if os.path.lexists(root / relative)]
    found += [
        f"{relative}/ (not empty)"
        for relative in EMPTIED_DIRECTORIES
        if (root / relative).is_dir() and any((root / relative).iterdir())
    ]
    if (root / MACHINE_ID).read_text() != "":
        found.append(f"{MACHINE_ID} (not empty)")
    return found


def missing_kept(root: Path) -> list[str]:
    """What the image should have kept and lost."""
    missing = [relative for relative in KEPT_FILES if not (root / relative).is_file()]
    missing += [relative for relative in EMPTIED_DIRECTORIES if not (root / relative).is_dir()]
    if not (root / MACHINE_ID).is_file():
        missing.append(MACHINE_ID)
    if (root / "checkpoint").stat().st_mode & 0o777 != 0o700:
        missing.append("checkpoint (mode 0700)")
    return missing


def host_identity() -> dict[str, str]:
    """sha256 of this machine's machine-id and SSH host keys: what a clean-up aimed at a tree
    must never touch."""
    paths = [Path("/etc/machine-id"), *sorted(Path("/etc/ssh").glob("ssh_host_*"))]
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in paths if path.is_file()
    }
