"""How the checkpoint root is mounted, for `archctl verify`: local, EFS through amazon-efs-utils
(TLS, IAM), EFS as plain NFS, or other NFS.

Images hold process memory, so the transport matters. What is read:
- /proc/self/mountinfo: the mount that holds the checkpoint root (its type, source and
  options). amazon-efs-utils mounts with TLS through a local stunnel, so the kernel's NFS
  mount then points at 127.0.0.1 ("Using the EFS mount helper with TLS": the helper "starts a
  client stunnel process" and mounts "localhost" through it,
  docs.aws.amazon.com/efs/latest/ug/encryption-in-transit.html).
- /etc/fstab: the entry for the checkpoint root, whose type (`efs`) and options (`tls`, `iam`)
  say what the role asked for; IAM authorisation leaves no trace in mountinfo.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from arch.appliance.mounts import MOUNTINFO, NETWORK_FILESYSTEMS, mount_entry

FSTAB = "/etc/fstab"
# fs-0123abcd.efs.eu-west-1.amazonaws.com (and .com.cn): an EFS file system's DNS name.
EFS_DNS_NAME = re.compile(r"^fs-[0-9a-f]{8,40}\.efs\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class MountReport(NamedTuple):
    kind: str  # "local", "efs-utils", "efs-nfs", "nfs", "other"
    status_ok: bool  # False: worth a warning
    detail: str


def fstab_entry(mount_point: str, fstab: str = FSTAB) -> tuple[str, str, list[str]] | None:
    """(source, type, options) of the fstab line that mounts `mount_point`, if any."""
    try:
        with open(fstab, encoding="utf-8", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 4 and fields[1].rstrip("/") == mount_point.rstrip("/"):
            found = (fields[0], fields[2], fields[3].split(","))
    return found


def _host_of(source: str) -> str:
    """The server of an NFS source `host:/path`."""
    return source.rsplit(":", 1)[0] if ":" in source else source


def describe(root: str, mountinfo: str = MOUNTINFO, fstab: str = FSTAB) -> MountReport:
    """What holds `root`, and whether its transport protects what travels there."""
    mounted = mount_entry(root, mountinfo)
    planned = fstab_entry(root, fstab)
    if mounted is None:
        return MountReport("other", True, f"{root}: cannot read {mountinfo}")
    mount_point, fstype, source = mounted
    if fstype not in NETWORK_FILESYSTEMS:
        return MountReport("local", True, f"{root}: local storage ({fstype} at {mount_point})")
    planned_type = planned[1] if planned else ""
    planned_options = planned[2] if planned else []
    host = _host_of(source)
    if fstype.startswith("nfs") and (planned_type == "efs" or host in LOOPBACK_HOSTS):
        tls = host in LOOPBACK_HOSTS
        iam = "iam" in planned_options
        tls_text = "on (the mount helper's stunnel)" if tls else "off"
        detail = (
            f"{root}: EFS through amazon-efs-utils ({planned[0] if planned else source}; "
            f"TLS {tls_text}; IAM authorisation {'on' if iam else 'off'})"
        )
        return MountReport("efs-utils", tls and iam, detail)
    if fstype.startswith("nfs") and EFS_DNS_NAME.match(host):
        return MountReport(
            "efs-nfs",
            False,
            f"{root}: EFS as plain NFS ({source}, {fstype}): no TLS, no IAM; the fallback "
            "without amazon-efs-utils. Process memory crosses the network unencrypted, and a "
            "file system policy that requires secure transport refuses it",
        )
    return MountReport("nfs", True, f"{root}: network storage {source} ({fstype})")
