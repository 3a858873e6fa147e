"""What a restore may create from an image's filesystem tar: what the job could create itself.

The tar comes from checkpoint storage, which others may be able to write. ARCH applies it as
root, so without a policy a storage writer could plant a setuid-root shell, a device node of the
host's disk or a file capability in any opted-in container. The policy: the restore creates
only what the job's own processes could have created in their writable layer, judged from
config.json (read as runc reads it) and the image's lower layers:

- ownership: the job's own uid and groups; any id with CAP_CHOWN; in a user namespace only ids
  the namespace maps;
- setuid: on files the job owns, or with CAP_FOWNER; setgid: additionally the file's group
  among the job's groups, or CAP_FSETID (the kernel drops the bit otherwise); a directory
  inherits setgid from a setgid parent;
- character and block devices: CAP_MKNOD outside a user namespace (the kernel refuses device
  nodes in one); overlay whiteouts (0:0) and FIFOs need nothing;
- file capabilities (security.capability): CAP_SETFCAP; in a user namespace only namespaced
  (v3) capabilities rooted at the namespace's root; other security.* and trusted.* xattrs:
  CAP_SYS_ADMIN outside a user namespace (SELinux labels excepted: the kernel sets them on every
  file the job creates);
- anything equal to what the new rootfs already holds at that path: the image's lower layers
  (a copy-up: the job touched a lower file, overlay copied its owner, mode, device and
  capabilities) or, on a restart in place, the container's own kept upper layer.

The job's capabilities: for uid 0, its bounding set (every exec by root regains it); for any
other uid, its effective, permitted and ambient sets. Privilege a non-root job might have gained
through a setuid-root program of its image is not counted: such an image starts fresh.
A member outside the policy refuses the whole restore (the container is created fresh and the
reason logged) before anything is applied.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arch.checkpoint.layer.common import DIR_OPEN_FLAGS, LayerError, display_name
from arch.checkpoint.layer.members import Kind

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from arch.checkpoint.layer.members import Member

FILE_CAPABILITY_XATTR = "security.capability"
# Labelled by the kernel when the job creates a file, and judged by SELinux's own policy, not by
# capabilities: passed through (the README's threat model says what that leaves to signing).
SELINUX_LABEL_XATTR = "security.selinux"
_VFS_CAP_REVISION_MASK = 0xFF000000
_VFS_CAP_REVISION_3 = 0x03000000
_VFS_CAP_V3_SIZE = 24
_DEVICE_KINDS = (Kind.CHAR_DEVICE, Kind.BLOCK_DEVICE)
_SKIPPED_KINDS = (Kind.WHITEOUT, Kind.OPAQUE, Kind.HARDLINK)  # a hard link: its target's inode
_FILE_TYPES = {
    Kind.FILE: stat.S_IFREG, Kind.DIRECTORY: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK,
    Kind.FIFO: stat.S_IFIFO, Kind.CHAR_DEVICE: stat.S_IFCHR, Kind.BLOCK_DEVICE: stat.S_IFBLK,
}


class ArchiveRefused(LayerError):
    """A member of the tar is something the job could not have created."""


@dataclass(frozen=True)
class IdMap:
    """An OCI uid or gid mapping: container ids [inside, inside+size) are host ids from host."""

    ranges: tuple[tuple[int, int, int], ...]  # (container id, host id, size)

    def to_host(self, container_id: int) -> int | None:
        for inside, host, size in self.ranges:
            if inside <= container_id < inside + size:
                return host + container_id - inside
        return None

    def holds_host(self, host_id: int) -> bool:
        return any(host <= host_id < host + size for _, host, size in self.ranges)


@dataclass(frozen=True)
class ArchivePolicy:
    capabilities: frozenset[str]
    uid: int  # the job's uid as stored on disk (host id)
    gids: frozenset[int]  # its gid and additional gids (host ids)
    uid_map: IdMap | None  # None: no user namespace
    gid_map: IdMap | None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ArchivePolicy:
        """The policy for the job in a decoded config.json (arch.container.oci_spec)."""
        from arch.container.oci_spec import zero_process

        process = spec.get("process") or zero_process()
        user = process["user"]
        linux = spec.get("linux") or {}
        user_namespace = any(ns["type"] == "user" for ns in linux.get("namespaces") or ())
        uid_map = gid_map = None
        if user_namespace:
            uid_map, gid_map = (_id_map(linux.get(key)) for key in ("uidMappings", "gidMappings"))
        groups = {user["gid"], *(user["additionalGids"] or ())}
        uid = _host_id(uid_map, user["uid"])
        host_gids = {_host_id(gid_map, gid) for gid in groups}
        return cls(
            capabilities=_job_capabilities(process),
            uid=-1 if uid is None else uid,
            gids=frozenset(gid for gid in host_gids if gid is not None),
            uid_map=uid_map,
            gid_map=gid_map,
        )

    def check(self, members: Iterable[Member], root_fd: int) -> None:
        """ArchiveRefused for the first member outside the policy; `root_fd` is the new rootfs
        before anything is applied (its lower layers show through)."""
        setgid_dirs: dict[tuple[str, ...], int] = {}
        for member in members:
            if member.kind in _SKIPPED_KINDS:
                continue
            existing = _lstat_beneath(root_fd, member.parts)
            problem = self._problem(member, existing, root_fd, setgid_dirs)
            if problem is not None:
                raise ArchiveRefused(
                    f"refusing {display_name(member.parts)!r}: {problem}, which the job could not "
                    "have created (archive policy)"
                )
            if member.kind == Kind.DIRECTORY and member.mode & stat.S_ISGID:
                setgid_dirs[member.parts] = member.gid

    def _problem(
        self,
        member: Member,
        existing: os.stat_result | None,
        root_fd: int,
        setgid_dirs: dict[tuple[str, ...], int],
    ) -> str | None:
        # A copy-up: the lower layers hold the same kind of node with the same owner there.
        lower = (
            existing
            if existing is not None
            and stat.S_IFMT(existing.st_mode) == _file_type(member)
            and (existing.st_uid, existing.st_gid) == (member.uid, member.gid)
            else None
        )
        if lower is None:
            problem = self._ownership_problem(member)
            if problem is not None:
                return problem
        lower_bits = 0 if lower is None else lower.st_mode & (stat.S_ISUID | stat.S_ISGID)
        if (
            member.mode & stat.S_ISUID & ~lower_bits
            and member.kind != Kind.DIRECTORY
            and not self._may_chmod(member)
        ):
            return f"setuid on a file of uid {member.uid}"
        if member.mode & stat.S_ISGID & ~lower_bits:
            inherited = member.kind == Kind.DIRECTORY and self._parent_is_setgid(
                member, root_fd, setgid_dirs
            )
            if not inherited and not (self._may_chmod(member) and self._may_keep_setgid(member)):
                return f"setgid on a file of group {member.gid}"
        if member.kind in _DEVICE_KINDS and member.rdev != 0:
            same_device = lower is not None and lower.st_rdev == member.rdev
            if not same_device and (self.uid_map is not None or not self._can("CAP_MKNOD")):
                where = "in a user namespace" if self.uid_map is not None else "without CAP_MKNOD"
                return f"a {member.kind.value} {where}"
        for name, value in member.xattrs.items():
            problem = self._xattr_problem(name, value, member, root_fd)
            if problem is not None:
                return problem
        return None

    def _ownership_problem(self, member: Member) -> str | None:
        may_chown = self._can("CAP_CHOWN")
        if member.uid != self.uid and not (may_chown and _mapped(self.uid_map, member.uid)):
            return f"owner uid {member.uid}"
        if member.gid not in self.gids and not (may_chown and _mapped(self.gid_map, member.gid)):
            return f"group {member.gid}"
        return None

    def _may_chmod(self, member: Member) -> bool:
        return member.uid == self.uid or self._can("CAP_FOWNER")

    def _may_keep_setgid(self, member: Member) -> bool:
        return member.gid in self.gids or self._can("CAP_FSETID")

    def _parent_is_setgid(
        self, member: Member, root_fd: int, setgid_dirs: dict[tuple[str, ...], int]
    ) -> bool:
        parent = member.parts[:-1]
        if parent in setgid_dirs:
            return setgid_dirs[parent] == member.gid
        found = _lstat_beneath(root_fd, parent) if parent else None
        return (
            found is not None
            and stat.S_ISDIR(found.st_mode)
            and bool(found.st_mode & stat.S_ISGID)
            and found.st_gid == member.gid
        )

    def _xattr_problem(self, name: str, value: bytes, member: Member, root_fd: int) -> str | None:
        if name == FILE_CAPABILITY_XATTR:
            if _existing_xattr(root_fd, member.parts, name) == value:
                return None  # copied up from the image's own file
            if not self._can("CAP_SETFCAP"):
                return "file capabilities without CAP_SETFCAP"
            if self.uid_map is not None and not self._rooted_in_namespace(value):
                return "file capabilities not rooted in the job's user namespace"
            return None
        privileged = name.startswith(("security.", "trusted.")) and name != SELINUX_LABEL_XATTR
        if privileged and (self.uid_map is not None or not self._can("CAP_SYS_ADMIN")):
            return f"the {name} attribute without CAP_SYS_ADMIN"
        return None

    def _rooted_in_namespace(self, value: bytes) -> bool:
        if len(value) != _VFS_CAP_V3_SIZE or self.uid_map is None:
            return False
        magic = struct.unpack_from("<I", value, 0)[0]
        rootid = struct.unpack_from("<I", value, 20)[0]
        return bool(magic & _VFS_CAP_REVISION_MASK == _VFS_CAP_REVISION_3) and bool(
            rootid == self.uid_map.to_host(0)
        )

    def _can(self, capability: str) -> bool:
        return capability in self.capabilities


def _job_capabilities(process: Mapping[str, Any]) -> frozenset[str]:
    capabilities = process.get("capabilities") or {}
    sets = {name: set(capabilities.get(name) or ()) for name in
            ("bounding", "effective", "permitted", "ambient")}  # fmt: skip
    if process["user"]["uid"] == 0:
        return frozenset(sets["bounding"])
    return frozenset(sets["effective"] | sets["permitted"] | sets["ambient"])


def _id_map(mappings: list[dict[str, int]] | None) -> IdMap:
    return IdMap(tuple((m["containerID"], m["hostID"], m["size"]) for m in mappings or ()))


def _host_id(id_map: IdMap | None, container_id: int) -> int | None:
    return container_id if id_map is None else id_map.to_host(container_id)


def _mapped(id_map: IdMap | None, host_id: int) -> bool:
    return id_map is None or id_map.holds_host(host_id)


def _file_type(member: Member) -> int:
    return _FILE_TYPES.get(member.kind, 0)


def _lstat_beneath(root_fd: int, parts: tuple[str, ...]) -> os.stat_result | None:
    """lstat of root/parts without following any symlink on the way; None when absent."""
    dir_fd = _open_parent(root_fd, parts)
    if dir_fd is None:
        return None
    try:
        return os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False) if parts else os.fstat(
            dir_fd
        )
    except OSError:
        return None
    finally:
        if dir_fd != root_fd:
            os.close(dir_fd)


def _existing_xattr(root_fd: int, parts: tuple[str, ...], name: str) -> bytes | None:
    dir_fd = _open_parent(root_fd, parts)
    if dir_fd is None:
        return None
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)  # fmt: skip
    except OSError:
        return None
    finally:
        if dir_fd != root_fd:
            os.close(dir_fd)
    try:
        return os.getxattr(fd, name)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise
    finally:
        os.close(fd)


def _open_parent(root_fd: int, parts: tuple[str, ...]) -> int | None:
    dir_fd = root_fd
    for part in parts[:-1]:
        try:
            next_fd = os.open(part, DIR_OPEN_FLAGS, dir_fd=dir_fd)
        except OSError:
            next_fd = -1
        if dir_fd != root_fd:
            os.close(dir_fd)
        if next_fd < 0:
            return None
        dir_fd = next_fd
    return dir_fd
