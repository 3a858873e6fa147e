"""Which filesystem holds a path, from /proc/self/mountinfo: is it shared (network) storage?"""

from __future__ import annotations

import os

MOUNTINFO = "/proc/self/mountinfo"
# Filesystems other hosts can write: images there are as trustworthy as every writer of them.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "9p", "afs",
        "gpfs", "beegfs", "ocfs2", "gfs2", "fuse.sshfs", "fuse.s3fs", "fuse.glusterfs",
        "fuse.cephfs", "fuse.gcsfuse", "fuse.juicefs", "fuse.mountpoint-s3", "fuse.rclone",
    }
)  # fmt: skip


def filesystem_type(path: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the filesystem mounted at the nearest mount point above `path` (its nearest
    existing ancestor, symlinks resolved); None when mountinfo cannot be read."""
    target = os.path.realpath(path)
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        fields, _, tail = line.partition(" - ")
        parts, described = fields.split(), tail.split()
        if len(parts) < 5 or not described:
            continue
        mount_point = _unescape(parts[4])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        # Later lines win at the same mount point: they are mounted on top.
        if inside and (best is None or len(mount_point) >= best[0]):
            best = (len(mount_point), described[0])
    return None if best is None else best[1]


def mount_entry(path: str, mountinfo: str = MOUNTINFO) -> tuple[str, str, str] | None:
    """(mount point, filesystem type, source) of the mount that holds `path` (as
    filesystem_type chooses it); None when mountinfo cannot be read."""
    target = os.path.realpath(path)
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    best: tuple[str, str, str] | None = None
    for line in lines:
        fields, _, tail = line.partition(" - ")
        parts, described = fields.split(), tail.split()
        if len(parts) < 5 or len(described) < 2:
            continue
        mount_point = _unescape(parts[4])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) >= len(best[0])):
            best = (mount_point, described[0], _unescape(described[1]))
    return best


def is_network_filesystem(fstype: str | None) -> bool:
    return fstype in NETWORK_FILESYSTEMS


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field
