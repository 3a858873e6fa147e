"""What a restore may do from an image's filesystem tar: only what the job could have done itself.

The tar comes from checkpoint storage, which others may be able to write. ARCH applies it as
root, so without a policy a storage writer could plant a setuid-root shell, a device node of the
host's disk, a file capability, `/etc/ld.so.preload` or a rewritten `/etc/passwd` in any
opted-in container. The policy judges every member against the new rootfs before anything is
applied (its lower layers, or on a restart in place the container's own kept upper layer) and
against the job's credentials in config.json (read as runc reads it):

- a new name (a created node, a hard link, a replaced or deleted entry) needs a directory the
  job may write: write and search permission for its uid/gids, or its ownership (it may chmod
  its own directory), or CAP_DAC_OVERRIDE, CAP_FOWNER or CAP_CHOWN over it; a directory the
  tar creates itself is the job's. In a sticky directory, another user's entry may be replaced
  or deleted only by the directory's owner or with CAP_FOWNER. Deleting a directory deletes its
  whole tree: every directory in it must be writable so.
- a node changed in place: a new owner needs CAP_CHOWN (a new group: the owner's own group, or
  CAP_CHOWN); a new mode the ownership or CAP_FOWNER (or CAP_CHOWN, to take it over); new file
  contents write permission on the file (or CAP_DAC_OVERRIDE/FOWNER/CHOWN), and a setuid or
  setgid file keeps its bit across a write only with CAP_FSETID or when the job may chmod it.
  A member that cannot be a change in place (another type, symlink target or device) replaces
  the node, as above.
- a new node: owned by the job's uid, or any uid with CAP_CHOWN; in one of the job's groups,
  the group of a setgid parent directory, or any group with CAP_CHOWN; in a user namespace only
  ids the namespace maps;
- setuid: on files the job owns, or with CAP_FOWNER; setgid: additionally the file's group
  among the job's groups, or CAP_FSETID (the kernel drops the bit otherwise); a directory
  inherits setgid from a setgid parent;
- character and block devices: CAP_MKNOD outside a user namespace (the kernel refuses device
  nodes in one); FIFOs need nothing beyond their directory;
- file capabilities (security.capability): CAP_SETFCAP; in a user namespace only namespaced
  (v3) capabilities rooted at the namespace's root; other security.* and trusted.* xattrs:
  CAP_SYS_ADMIN outside a user namespace (SELinux labels excepted: the kernel sets them on every
  file the job creates);
- whiteouts (`.wh.NAME`) delete NAME and opaque markers (`.wh..wh..opq`) delete everything in
  their directory: judged as those deletions in their directory; deleting nothing is no change;
- the tar's directories that the rootfs lacks and the tar does not list are created root-owned
  0755 by the apply: judged as such creations;
- a member equal to what the rootfs already holds at that path (type, owner, mode and, for a
  file, size and sha256 of the contents; a symlink's target; a device's number) changes
  nothing and is allowed: overlay copies a lower node up whenever the job touches it.

Capabilities count over a node only when the node's owner and group are mapped into the job's
user namespace (the kernel's capable_wrt_inode_uidgid). The job's capabilities: for uid 0, its
bounding set (every exec by root regains it); for any other uid, its effective, permitted and
ambient sets. Privilege a non-root job might have gained through a setuid-root program of its
image is not counted, nor search permission on the way to a directory: such an image starts
fresh. A member outside the policy refuses the whole restore (the container is created fresh
and the reason logged) before anything is applied.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arch.checkpoint.layer.common import DIR_OPEN_FLAGS, LayerError, display_name
from arch.checkpoint.layer.members import DELETIONS, Kind, Member

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

FILE_CAPABILITY_XATTR = "security.capability"
# Labelled by the kernel when the job creates a file, and judged by SELinux's own policy, not by
# capabilities: passed through (the README's threat model says what that leaves to signing).
SELINUX_LABEL_XATTR = "security.selinux"
_VFS_CAP_REVISION_MASK = 0xFF000000
_VFS_CAP_REVISION_3 = 0x03000000
_VFS_CAP_V3_SIZE = 24
_DEVICE_KINDS = (Kind.CHAR_DEVICE, Kind.BLOCK_DEVICE)
_FILE_TYPES = {
    Kind.FILE: stat.S_IFREG, Kind.DIRECTORY: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK,
    Kind.FIFO: stat.S_IFIFO, Kind.CHAR_DEVICE: stat.S_IFCHR, Kind.BLOCK_DEVICE: stat.S_IFBLK,
}
_SET_ID_BITS = stat.S_ISUID | stat.S_ISGID
# What the apply gives a parent directory the tar does not list (layer_apply._create_parent).
_IMPLICIT_PARENT_MODE = 0o755
_READ_CHUNK = 1 << 20
_WRITE, _SEARCH = 2, 1  # permission bits of one class (owner, group or other)
CREATED, CHANGED, DELETED = "created", "changed", "deleted"


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
    uid: int  # the job's uid as stored on disk (host id); -1 when unmapped
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

    def check(self, members: Iterable[Member], root_fd: int, archive_fd: int | None = None
              ) -> None:  # fmt: skip
        """ArchiveRefused for the first member outside the policy. `root_fd` is the new rootfs
        before anything is applied (its lower layers show through); `archive_fd` the tar, whose
        file contents are compared with the rootfs's (without it, a file counts as changed)."""
        _Judge(self, list(members), root_fd, archive_fd).run()

    # -- what the job's credentials allow over one node --------------------------------------

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def can_over(self, capability: str, node: os.stat_result) -> bool:
        """The capability applies to the node: in a user namespace only when the node's owner
        and group are mapped into it (capable_wrt_inode_uidgid)."""
        return self.can(capability) and _mapped(self.uid_map, node.st_uid) and _mapped(
            self.gid_map, node.st_gid
        )

    def may_chown_to(self, uid: int, gid: int) -> bool:
        return self.can("CAP_CHOWN") and _mapped(self.uid_map, uid) and _mapped(self.gid_map, gid)

    def permits(self, node: os.stat_result, wanted: int) -> bool:
        """The node's permission bits grant `wanted` (_WRITE | _SEARCH...) to the job (the
        kernel picks one class: owner, else group, else other)."""
        mode = node.st_mode
        if node.st_uid == self.uid:
            bits = mode >> 6
        elif node.st_gid in self.gids:
            bits = mode >> 3
        else:
            bits = mode
        return bits & wanted == wanted

    def may_take_over(self, node: os.stat_result) -> bool:
        """The job may change the node's mode: it owns it, or CAP_FOWNER (chmod anything) or
        CAP_CHOWN (chown it to itself first) applies to it."""
        return (
            node.st_uid == self.uid
            or self.can_over("CAP_FOWNER", node)
            or (self.can_over("CAP_CHOWN", node) and self.uid >= 0)
        )

    def may_write_directory(self, directory: os.stat_result) -> bool:
        """The job may add and remove names in the directory."""
        if self.can_over("CAP_DAC_OVERRIDE", directory) or self.may_take_over(directory):
            return True
        wanted = _WRITE if self.can_over("CAP_DAC_READ_SEARCH", directory) else _WRITE | _SEARCH
        return self.permits(directory, wanted)

    def may_write_file(self, node: os.stat_result) -> bool:
        return (
            self.can_over("CAP_DAC_OVERRIDE", node)
            or self.may_take_over(node)
            or self.permits(node, _WRITE)
        )

    def may_unlink_from(self, directory: os.stat_result, node: os.stat_result) -> bool:
        """The sticky bit's rule: another user's entry only by the directory's owner or with
        CAP_FOWNER over the entry."""
        return (
            not directory.st_mode & stat.S_ISVTX
            or node.st_uid == self.uid
            or directory.st_uid == self.uid
            or self.can_over("CAP_FOWNER", node)
        )

    def deletes_anything(self) -> bool:
        """Write permission and the sticky bit never stop this job (root's default)."""
        return self.uid_map is None and self.can("CAP_DAC_OVERRIDE") and self.can("CAP_FOWNER")

    def may_chmod(self, member: Member) -> bool:
        return member.uid == self.uid or self.can("CAP_FOWNER")

    def may_keep_setgid(self, member: Member) -> bool:
        return member.gid in self.gids or self.can("CAP_FSETID")

    def xattr_problem(self, name: str, value: bytes, existing_value: bytes | None) -> str | None:
        if name == FILE_CAPABILITY_XATTR:
            if existing_value == value:
                return None  # copied up from the image's own file
            if not self.can("CAP_SETFCAP"):
                return "file capabilities without CAP_SETFCAP"
            if self.uid_map is not None and not self._rooted_in_namespace(value):
                return "file capabilities not rooted in the job's user namespace"
            return None
        privileged = name.startswith(("security.", "trusted.")) and name != SELINUX_LABEL_XATTR
        if privileged and (self.uid_map is not None or not self.can("CAP_SYS_ADMIN")):
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


class _Judge:
    """One check of a tar's members against the rootfs (see the module's rules)."""

    def __init__(self, policy: ArchivePolicy, members: list[Member], root_fd: int,
                 archive_fd: int | None) -> None:  # fmt: skip
        self.policy = policy
        self.members = members
        self.root = _Rootfs(root_fd)
        self.archive_fd = archive_fd
        # What the tar itself puts at a path (the last member there wins, as in the apply).
        self.created = {m.parts: m for m in members if m.kind not in DELETIONS}
        self.whiteouts = {m.parts for m in members if m.kind == Kind.WHITEOUT}
        self.emptied = {m.parts for m in members if m.kind == Kind.OPAQUE}

    def run(self) -> None:
        for member in [*self._implicit_parents(), *self.members]:
            problem = self._problem(member)
            if problem is not None:
                what = {Kind.WHITEOUT: " (a whiteout)", Kind.OPAQUE: " (an opaque marker)"}
                raise ArchiveRefused(
                    f"refusing {display_name(member.parts)!r}{what.get(member.kind, '')}: "
                    f"{problem} (archive policy)"
                )

    def _implicit_parents(self) -> list[Member]:
        """The directories the apply creates root-owned 0755 because the tar does not list
        them and the rootfs lacks them, parents first."""
        found: dict[tuple[str, ...], Member] = {}
        for member in self.members:
            if member.kind in DELETIONS:
                continue  # below a missing directory, a deletion deletes nothing
            for depth in range(1, len(member.parts)):
                parent = member.parts[:depth]
                if parent in found or parent in self.created:
                    continue
                if self._existing_directory(parent) is None:
                    found[parent] = Member(name=display_name(parent), kind=Kind.DIRECTORY,
                                           parts=parent, mode=_IMPLICIT_PARENT_MODE, uid=0, gid=0,
                                           mtime_ns=0, xattrs={})  # fmt: skip
        return list(found.values())

    # -- one member ---------------------------------------------------------------------------

    def _problem(self, member: Member) -> str | None:
        if member.kind == Kind.WHITEOUT:
            return self._deletion_problem(member.parts)
        if member.kind == Kind.OPAQUE:
            return self._emptying_problem(member.parts)
        existing = self._existing(member.parts)
        problem = self._change_problem(member, existing)
        if problem is not None and existing is not None and self._unchanged(member, existing):
            problem = None  # overlay's copy-up of the image's own node
        if problem is None:
            problem = self._device_problem(member, existing)
        if problem is None:
            for name, value in sorted(member.xattrs.items()):
                existing_value = (
                    self.root.xattr(member.parts, name) if existing is not None else None
                )
                problem = self.policy.xattr_problem(name, value, existing_value)
                if problem is not None:
                    return f"{problem}, which the job could not have {CREATED}"
        return problem

    def _change_problem(self, member: Member, existing: os.stat_result | None) -> str | None:
        if member.kind == Kind.HARDLINK:  # a new name for an inode the tar judged already
            return self._placement_problem(member.parts, existing)
        if existing is not None and self._in_place_possible(member, existing):
            in_place = self._in_place_problem(member, existing)
            if in_place is None or self._replacement_problem(member, existing) is None:
                return None
            return in_place
        return self._replacement_problem(member, existing)

    def _in_place_possible(self, member: Member, existing: os.stat_result) -> bool:
        if stat.S_IFMT(existing.st_mode) != _FILE_TYPES.get(member.kind):
            return False
        if member.kind == Kind.SYMLINK:
            return self.root.readlink(member.parts) == member.symlink_target
        if member.kind in _DEVICE_KINDS:
            return existing.st_rdev == member.rdev
        return True

    def _in_place_problem(self, member: Member, existing: os.stat_result) -> str | None:
        """What the job could not have done to the node already there: chown, chmod, write."""
        policy = self.policy
        if member.uid != existing.st_uid and not (
            policy.can_over("CAP_CHOWN", existing) and policy.may_chown_to(member.uid, member.gid)
        ):
            return f"owner uid {existing.st_uid} changed to {member.uid}, which the job could "\
                f"not have {CHANGED}"
        if member.gid != existing.st_gid and not (
            (member.uid == policy.uid and member.gid in policy.gids)
            or (policy.can_over("CAP_CHOWN", existing)
                and policy.may_chown_to(member.uid, member.gid))
        ):  # fmt: skip
            return f"group {existing.st_gid} changed to {member.gid}, which the job could not "\
                f"have {CHANGED}"
        new_bits = member.mode & _SET_ID_BITS & ~existing.st_mode
        problem = self._set_id_problem(member, new_bits)
        if problem is not None:
            return problem
        if stat.S_IMODE(member.mode) != stat.S_IMODE(existing.st_mode) and not (
            policy.may_take_over(existing) or policy.may_chmod(member)
        ):
            return f"mode {stat.S_IMODE(existing.st_mode):o} changed to "\
                f"{stat.S_IMODE(member.mode):o}, which the job could not have {CHANGED}"
        if (member.kind == Kind.FILE and not policy.may_write_file(existing)
                and not self._same_contents(member, existing)):  # fmt: skip
            return f"new contents of a file uid {policy.uid} may not write, which the job "\
                f"could not have {CHANGED}"
        if (member.kind == Kind.FILE and member.mode & _SET_ID_BITS
                and not (policy.can("CAP_FSETID") or policy.may_chmod(member))
                and not self._same_contents(member, existing)):  # fmt: skip
            return f"new contents of a setuid/setgid file keeping its bit without CAP_FSETID, "\
                f"which the job could not have {CHANGED}"
        return None

    def _replacement_problem(self, member: Member, existing: os.stat_result | None
                             ) -> str | None:  # fmt: skip
        if not member.parts:
            return f"a new root directory, which the job could not have {CREATED}"
        return self._placement_problem(member.parts, existing) or self._creation_problem(member)

    def _placement_problem(self, parts: tuple[str, ...], existing: os.stat_result | None
                           ) -> str | None:  # fmt: skip
        """A new name at `parts` (replacing `existing`, if any): its directory must be one
        the job may write (and may delete `existing` from)."""
        parent = parts[:-1]
        directory = self._directory_before(parent)
        if directory is None:
            return None  # the tar creates the directory: the job's own
        policy = self.policy
        if not policy.may_write_directory(directory):
            return f"a change in {display_name(parent)!r}, a directory uid {policy.uid} may "\
                f"not write, which the job could not have {CHANGED}"
        if existing is None:
            return None
        if not policy.may_unlink_from(directory, existing):
            return f"another user's entry in the sticky directory {display_name(parent)!r}, "\
                f"which the job could not have {DELETED}"
        if stat.S_ISDIR(existing.st_mode):
            return self._tree_problem(parts, existing)
        return None

    def _creation_problem(self, member: Member) -> str | None:
        policy = self.policy
        if member.uid != policy.uid and not policy.may_chown_to(member.uid, member.gid):
            return f"owner uid {member.uid}, which the job could not have {CREATED}"
        inherited = self._setgid_parent_gid(member.parts) == member.gid
        if (member.gid not in policy.gids and not inherited
                and not policy.may_chown_to(member.uid, member.gid)):  # fmt: skip
            return f"group {member.gid}, which the job could not have {CREATED}"
        return self._set_id_problem(member, member.mode & _SET_ID_BITS)

    def _set_id_problem(self, member: Member, bits: int) -> str | None:
        """Setuid/setgid `bits` the member sets: could the job have set them?"""
        policy = self.policy
        if bits & stat.S_ISUID and member.kind != Kind.DIRECTORY and not policy.may_chmod(member):
            return f"setuid on a file of uid {member.uid}, which the job could not have {CREATED}"
        if bits & stat.S_ISGID:
            inherited = (member.kind == Kind.DIRECTORY
                         and self._setgid_parent_gid(member.parts) == member.gid)  # fmt: skip
            if not inherited and not (policy.may_chmod(member) and policy.may_keep_setgid(member)):
                return f"setgid on a file of group {member.gid}, which the job could not have "\
                    f"{CREATED}"
        return None

    def _device_problem(self, member: Member, existing: os.stat_result | None) -> str | None:
        if member.kind not in _DEVICE_KINDS or member.rdev == 0:
            return None
        same_device = (existing is not None and existing.st_rdev == member.rdev
                       and stat.S_IFMT(existing.st_mode) == _FILE_TYPES[member.kind])  # fmt: skip
        policy = self.policy
        if same_device or (policy.uid_map is None and policy.can("CAP_MKNOD")):
            return None
        where = "in a user namespace" if policy.uid_map is not None else "without CAP_MKNOD"
        return f"a {member.kind.value} {where}, which the job could not have {CREATED}"

    # -- deletions ----------------------------------------------------------------------------

    def _deletion_problem(self, parts: tuple[str, ...]) -> str | None:
        existing = None if self._below_deletion(parts) else self.root.lstat(parts)
        if existing is None:
            return None  # deletes nothing
        return self._placement_problem(parts, existing)

    def _emptying_problem(self, parts: tuple[str, ...]) -> str | None:
        directory = None if self._below_deletion(parts) else self.root.lstat(parts)
        if directory is None or not stat.S_ISDIR(directory.st_mode):
            return None
        return self._tree_problem(parts, directory)

    def _tree_problem(self, parts: tuple[str, ...], directory: os.stat_result) -> str | None:
        """Deleting everything in the directory: the job must be able to remove every entry of
        every directory in the tree."""
        policy = self.policy
        if policy.deletes_anything():
            return None
        pending = [(parts, directory)]
        while pending:
            here, here_stat = pending.pop()
            entries = self.root.entries(here)
            if entries and not policy.may_write_directory(here_stat):
                return f"deleting in {display_name(here)!r}, a directory uid {policy.uid} may "\
                    f"not write, which the job could not have {DELETED}"
            for name, entry in entries:
                if not policy.may_unlink_from(here_stat, entry):
                    return f"deleting another user's {display_name((*here, name))!r} in a "\
                        f"sticky directory, which the job could not have {DELETED}"
                if stat.S_ISDIR(entry.st_mode):
                    pending.append(((*here, name), entry))
        return None

    # -- the rootfs before the apply, as the tar sees it --------------------------------------

    def _below_deletion(self, parts: tuple[str, ...]) -> bool:
        """Whether a whiteout of this tar deletes an ancestor of `parts`, or an opaque marker
        empties one (the node there is gone before the tar's members are created)."""
        return any(parts[:depth] in self.whiteouts for depth in range(1, len(parts))) or any(
            parts[:depth] in self.emptied for depth in range(len(parts))
        )

    def _existing(self, parts: tuple[str, ...]) -> os.stat_result | None:
        """The node at `parts` when the tar's member there is applied (deletions come first)."""
        if parts in self.whiteouts or self._below_deletion(parts):
            return None
        return self.root.lstat(parts)

    def _existing_directory(self, parts: tuple[str, ...]) -> os.stat_result | None:
        found = self._existing(parts)
        return found if found is not None and stat.S_ISDIR(found.st_mode) else None

    def _directory_before(self, parts: tuple[str, ...]) -> os.stat_result | None:
        """The directory at `parts` as the job found it, or None when the tar (or the apply, for
        an unlisted parent) creates it."""
        return self._existing_directory(parts)

    def _setgid_parent_gid(self, parts: tuple[str, ...]) -> int | None:
        """The group a new node at `parts` inherits from a setgid parent directory, if any."""
        if not parts:
            return None
        parent = parts[:-1]
        listed = self.created.get(parent)
        if listed is not None and listed.kind == Kind.DIRECTORY:
            return listed.gid if listed.mode & stat.S_ISGID else None
        found = self._existing_directory(parent)
        if found is not None and found.st_mode & stat.S_ISGID:
            return found.st_gid
        return None

    def _unchanged(self, member: Member, existing: os.stat_result) -> bool:
        """The member puts back what is there: same type, owner, mode and contents."""
        if (
            stat.S_IFMT(existing.st_mode) != _FILE_TYPES.get(member.kind)
            or (existing.st_uid, existing.st_gid) != (member.uid, member.gid)
            or stat.S_IMODE(existing.st_mode) != stat.S_IMODE(member.mode)
        ):
            return False
        if member.kind == Kind.FILE:
            return self._same_contents(member, existing)
        if member.kind == Kind.SYMLINK:
            return self.root.readlink(member.parts) == member.symlink_target
        if member.kind in _DEVICE_KINDS:
            return existing.st_rdev == member.rdev
        return True

    def _same_contents(self, member: Member, existing: os.stat_result) -> bool:
        if existing.st_size != member.size or self.archive_fd is None:
            return False
        existing_digest = self.root.sha256(member.parts)
        return existing_digest is not None and existing_digest == _archive_sha256(
            self.archive_fd, member.data_offset, member.size
        )


class _Rootfs:
    """Read-only looks at the rootfs beneath its descriptor, following no symlink."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._stats: dict[tuple[str, ...], os.stat_result | None] = {}

    def lstat(self, parts: tuple[str, ...]) -> os.stat_result | None:
        if parts not in self._stats:
            self._stats[parts] = _lstat_beneath(self.root_fd, parts)
        return self._stats[parts]

    def readlink(self, parts: tuple[str, ...]) -> str | None:
        with _Parent(self.root_fd, parts) as dir_fd:
            if dir_fd is None or not parts:
                return None
            try:
                return os.readlink(parts[-1], dir_fd=dir_fd)
            except OSError:
                return None

    def entries(self, parts: tuple[str, ...]) -> list[tuple[str, os.stat_result]]:
        """(name, lstat) of each entry of the directory at `parts`."""
        with _Parent(self.root_fd, (*parts, "")) as dir_fd:
            if dir_fd is None:
                return []
            found = []
            for name in sorted(os.listdir(dir_fd)):
                try:
                    found.append((name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)))
                except FileNotFoundError:
                    continue
            return found

    def xattr(self, parts: tuple[str, ...], name: str) -> bytes | None:
        return _existing_xattr(self.root_fd, parts, name)

    def sha256(self, parts: tuple[str, ...]) -> str | None:
        with _Parent(self.root_fd, parts) as dir_fd:
            if dir_fd is None or not parts:
                return None
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                             | os.O_NONBLOCK, dir_fd=dir_fd)  # fmt: skip
            except OSError:
                return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            digest = hashlib.sha256()
            while True:
                chunk = os.read(fd, _READ_CHUNK)
                if not chunk:
                    return digest.hexdigest()
                digest.update(chunk)
        finally:
            os.close(fd)


class _Parent:
    """The directory holding root/parts[-1], opened following no symlink (None if absent)."""

    def __init__(self, root_fd: int, parts: tuple[str, ...]) -> None:
        self.root_fd = root_fd
        self.parts = parts
        self.fd: int | None = None

    def __enter__(self) -> int | None:
        self.fd = _open_parent(self.root_fd, self.parts)
        return self.fd

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is not None and self.fd != self.root_fd:
            os.close(self.fd)


def _archive_sha256(archive_fd: int, offset: int, size: int) -> str:
    digest = hashlib.sha256()
    while size > 0:
        chunk = os.pread(archive_fd, min(size, _READ_CHUNK), offset)
        if not chunk:
            raise LayerError("the archive ended inside a member")
        digest.update(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return digest.hexdigest()


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
        fd = os.open(parts[-1] if parts else ".",
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
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
