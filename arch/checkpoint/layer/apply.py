"""Apply an untrusted OCI layer archive to a container rootfs, with a complete undo journal.

The archive comes from shared storage, so nothing in it is trusted:
1. its size and sha256 must match what the checkpoint's metadata says (one streaming read);
2. every member header is parsed and validated before anything is touched: names (relative,
   no `..`, no NUL, bounded), types (file, dir, symlink, hard link, FIFO, devices), whiteout
   names, hard-link targets (an earlier member of the same archive), xattr names, and that no
   member lies below a symlink or file created by the archive itself; escaped whiteout-like
   names (common.py) are unescaped, so such a member is a file, never a deletion;
3. it is applied through the rootfs mount (for overlay: the merged view): deletions first
   (whiteouts and opaque markers only hide what existed before this layer), then the other
   members in archive order, then directory times. Every path is reached through directory
   fds opened with O_NOFOLLOW, so a symlink in the image or in the archive is never followed.
Any failure rolls back every change and raises LayerError naming the member and the reason.
Data is read from the validated member offsets of the same open file; the file's identity
(inode, size, mtime, ctime) is re-checked after applying, so a file changed on the shared
storage meanwhile is refused as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from arch.checkpoint.layer.common import (
    COPY_CHUNK_SIZE,
    DIR_OPEN_FLAGS,
    NANOSECONDS,
    NEW_FILE_FLAGS,
    OPAQUE_MARKER,
    PAX_ESCAPED,
    PAX_ESCAPED_VALUE,
    PAX_MTIME,
    PAX_XATTR_PREFIX,
    PRIVATE_DIR_MODE,
    PRIVATE_MODE,
    WHITEOUT_DEVICE,
    WHITEOUT_PREFIX,
    DirectoryWalker,
    LayerError,
    OverlayMarkers,
    UnsafePathError,
    copy_range,
    display_name,
    is_overlay_private_xattr,
    parse_pax_time,
    read_xattrs,
    remove_xattrs,
    set_fd_metadata,
    set_special_metadata,
    unescape_component,
    write_xattrs,
)
from arch.checkpoint.layer.journal import BACKUP_DIR_PREFIX, Journal, RollbackSources
from arch.checkpoint.layer.lower import open_lower_view
from arch.checkpoint.layer.members import DELETIONS, Kind, Member
from arch.checkpoint.layer.reset import (
    Coverage,
    ResetStep,
    check_rollback_space,
    is_empty_directory,
    plan_reset,
    rollback_space_needed,
    run_reset,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from arch.checkpoint.layer.overlay_mount import OverlayMount
    from arch.checkpoint.layer.policy import ArchivePolicy

logger = logging.getLogger(__name__)

TAR_ENCODING = "utf-8"
TAR_ERRORS = "surrogateescape"
EXTENDED_HEADER_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                         tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
MAX_ID = 2**32 - 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
END_OF_ARCHIVE_SIZE = 2 * tarfile.BLOCKSIZE
# an escaped archive name may exceed the real path's length limit by its escape prefixes
PATH_ESCAPE_ALLOWANCE = 1024


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what an archive may hold, so a hostile one cannot exhaust memory or time."""

    max_entries: int = 1_000_000
    max_extended_header: int = 1 << 20  # one PAX / GNU long-name header
    max_path_bytes: int = 4095
    max_name_bytes: int = 255
    max_xattrs_per_member: int = 128


DEFAULT_LIMITS = ArchiveLimits()


def apply_layer(tar_path: str, rootfs: str, expected_sha256: str, expected_size: int, *,
                overlay: OverlayMount | None, limits: ArchiveLimits = DEFAULT_LIMITS,
                policy: ArchivePolicy | None = None) -> Journal:
    """Verify, validate and apply the layer at `tar_path` to `rootfs`.

    `overlay`: the overlay mounted at `rootfs` (its upper layer may be empty or kept from an
    earlier run of the container), or None for a plain directory tree. Before anything changes,
    the space a rollback may need is checked on the upper layer's filesystem (LayerError when
    it is missing). Returns the journal: commit() once the restore succeeded, rollback() to
    undo every change. On failure everything is already rolled back and LayerError is raised.
    With a `policy`, a member the job could not have created refuses the whole layer
    (ArchiveRefused) before anything is touched.
    """
    archive_fd = os.open(tar_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check_file(archive_fd, tar_path, expected_size)
        try:
            members = read_members(archive_fd, limits)
        except LayerError:
            # A corrupt archive explains a bad header better than the header does.
            _verify_digest(archive_fd, tar_path, expected_sha256, expected_size)
            raise
        root_fd = os.open(rootfs, DIR_OPEN_FLAGS)
        try:
            if policy is not None:
                policy.check(members, root_fd)
            target = _Target.prepare(rootfs, root_fd, overlay, members)
            journal = Journal(root_fd, target.sources)
            # The digest is checked while the members are applied (hashing runs without the
            # GIL): every member path was validated above, so nothing lands outside the
            # rootfs meanwhile, and a mismatch rolls everything back before anything runs.
            with ThreadPoolExecutor(max_workers=1) as background:
                verifying = background.submit(
                    _verify_digest, archive_fd, tar_path, expected_sha256, expected_size
                )
                _apply_or_roll_back(members, archive_fd, root_fd, journal, verifying,
                                    target.reset)
            target.log_applied()
        finally:
            os.close(root_fd)
    finally:
        os.close(archive_fd)
    return journal


@dataclass
class _Target:
    """The rootfs about to change: where rollback finds what it needs, and the kept upper
    layer's reset steps (none on a fresh overlay)."""

    sources: RollbackSources
    steps: list[ResetStep]
    started: float
    description: str

    @classmethod
    def prepare(cls, rootfs: str, root_fd: int, overlay: OverlayMount | None,
                members: list[Member]) -> _Target:
        started = time.monotonic()
        if overlay is None or overlay.upperdir is None:
            return cls._plain(rootfs, root_fd, members, started)
        if overlay.datadirs:
            raise LayerError(f"{rootfs}: overlay data-only layers (datadir+) are not supported")
        upper_fd = os.open(overlay.upperdir, DIR_OPEN_FLAGS)
        try:
            lower_fd = _open_lower_view(overlay)
        except BaseException:
            os.close(upper_fd)
            raise
        sources = RollbackSources(
            _backup_parent(overlay.upperdir, os.fstat(upper_fd).st_dev),
            backup_prefix(overlay.upperdir), upper_fd, lower_fd)
        try:
            sources.remove_stale_backups()
            fresh = is_empty_directory(upper_fd)
            lower = DirectoryWalker(lower_fd)
            try:
                steps = [] if fresh else plan_reset(
                    upper_fd, lower, OverlayMarkers(overlay.opaque_xattr_names),
                    Coverage(members))
            finally:
                lower.close()
            needed = _space_needed(root_fd, members, steps)
            check_rollback_space(overlay.upperdir, needed)
        except BaseException:
            os.close(upper_fd)
            os.close(lower_fd)
            raise
        upper = "fresh upper layer" if fresh else f"kept upper layer, {len(steps)} reset steps"
        return cls(sources, steps, started,
                   f"{upper}, rollback may write back {needed} bytes")

    @classmethod
    def _plain(cls, rootfs: str, root_fd: int, members: list[Member], started: float
               ) -> _Target:
        backup_parent = _backup_parent(os.path.realpath(rootfs), os.fstat(root_fd).st_dev)
        needed = _space_needed(root_fd, members, [])
        if needed and backup_parent is None:
            raise LayerError(f"{rootfs}: no directory next to it on its filesystem for the "
                             "rollback's backups")
        check_rollback_space(rootfs, needed)
        sources = RollbackSources(backup_parent, backup_prefix(os.path.realpath(rootfs)))
        sources.remove_stale_backups()
        return cls(sources, [], started,
                   f"plain tree, rollback may write back {needed} bytes")

    def reset(self, root_fd: int, journal: Journal) -> None:
        if not self.steps:
            return
        assert self.sources.lower_fd is not None
        merged = DirectoryWalker(root_fd)
        lower = DirectoryWalker(self.sources.lower_fd)
        try:
            run_reset(self.steps, merged, lower, journal)
        finally:
            merged.close()
            lower.close()

    def log_applied(self) -> None:
        logger.info("layer applied in %.3f s (%s)", time.monotonic() - self.started,
                    self.description)


def _space_needed(root_fd: int, members: list[Member], steps: list[ResetStep]) -> int:
    merged = DirectoryWalker(root_fd)
    try:
        return rollback_space_needed(members, steps, merged)
    finally:
        merged.close()


def _open_lower_view(overlay: OverlayMount) -> int:
    bottom = tempfile.mkdtemp(prefix="arch-lower-bottom-")
    try:
        return open_lower_view(overlay.lowerdirs, bottom, userxattr="userxattr" in overlay.options)
    finally:
        os.rmdir(bottom)  # the view keeps what it needs of the (empty) directory


def backup_prefix(tree: str) -> str:
    """The name prefix of the backup directories of one upper layer (or plain tree)."""
    return f"{BACKUP_DIR_PREFIX}{os.path.basename(tree.rstrip('/'))}-"


def _backup_parent(path: str, device: int) -> str | None:
    """The directory next to `path` on its filesystem (where rollback backups may go), if any."""
    parent = os.path.dirname(path.rstrip("/")) or "/"
    try:
        return parent if os.stat(parent).st_dev == device else None
    except OSError:
        return None


# verification ---------------------------------------------------------------------------

def _identity(fd: int) -> tuple[int, ...]:
    file_stat = os.fstat(fd)
    return (file_stat.st_dev, file_stat.st_ino, file_stat.st_size, file_stat.st_mtime_ns,
            file_stat.st_ctime_ns)


def _check_file(fd: int, tar_path: str, expected_size: int) -> None:
    file_stat = os.fstat(fd)
    if not stat.S_ISREG(file_stat.st_mode):
        raise LayerError(f"{tar_path}: not a regular file")
    if file_stat.st_size != expected_size:
        raise LayerError(f"{tar_path}: size {file_stat.st_size} != expected {expected_size}")


def _verify_digest(fd: int, tar_path: str, expected_sha256: str, expected_size: int
                   ) -> tuple[int, ...]:
    """Hash the whole file with preadv (the shared file offset is left alone); its identity."""
    _check_file(fd, tar_path, expected_size)
    digest = hashlib.sha256()
    buffer = bytearray(COPY_CHUNK_SIZE)
    view = memoryview(buffer)
    offset = 0
    while True:
        count = os.preadv(fd, [view], offset)
        if count == 0:
            break
        digest.update(view[:count])
        offset += count
    if offset != expected_size:
        raise LayerError(f"{tar_path}: read {offset} bytes, expected {expected_size}")
    if digest.hexdigest() != expected_sha256.lower():
        raise LayerError(f"{tar_path}: sha256 {digest.hexdigest()} != expected {expected_sha256}")
    return _identity(fd)


# validation -----------------------------------------------------------------------------

def read_members(archive_fd: int, limits: ArchiveLimits = DEFAULT_LIMITS) -> list[Member]:
    """Parse and validate every member header of the archive open as `archive_fd`.

    Raises LayerError for the first member that is refused; touches nothing.
    """
    validator = _Validator(limits)
    with os.fdopen(os.dup(archive_fd), "rb") as stream:
        stream.seek(0)  # a dup shares the file position with archive_fd
        try:
            with tarfile.open(fileobj=stream, mode="r:", tarinfo=_limited_tarinfo(limits),
                              encoding=TAR_ENCODING, errors=TAR_ERRORS) as archive:
                for info in _iterate(archive, limits):
                    validator.add(info)
                end_offset = archive.offset
        except tarfile.TarError as error:
            raise LayerError(f"archive is corrupt or truncated: {error}") from error
        _check_end_of_archive(stream, end_offset)
    return validator.members


def _iterate(archive: tarfile.TarFile, limits: ArchiveLimits) -> Iterator[tarfile.TarInfo]:
    count = 0
    while True:
        info = archive.next()
        if info is None:
            return
        count += 1
        if count > limits.max_entries:
            raise LayerError(f"archive has more than {limits.max_entries} members")
        yield info
        # The validator keeps what it needs; tarfile would otherwise hold every TarInfo too.
        archive.members.clear()  # type: ignore[attr-defined]


def _limited_tarinfo(limits: ArchiveLimits) -> type[tarfile.TarInfo]:
    class LimitedTarInfo(tarfile.TarInfo):
        """Refuses oversized extended headers before tarfile reads them into memory."""

        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str
                    ) -> LimitedTarInfo:
            info = super().frombuf(buf, encoding, errors)
            if info.type in EXTENDED_HEADER_TYPES and info.size > limits.max_extended_header:
                raise LayerError(f"extended header of {info.size} bytes exceeds the limit of "
                                 f"{limits.max_extended_header}")
            if info.type == tarfile.GNUTYPE_SPARSE:
                raise LayerError(f"refusing member {info.name!r}: sparse files are not allowed")
            return info

    return LimitedTarInfo


def _check_end_of_archive(stream: BinaryIO, end_offset: int) -> None:
    """After the last member only zero blocks may follow: at least the end-of-archive marker."""
    stream.seek(end_offset)
    trailing = 0
    while True:
        chunk = stream.read(COPY_CHUNK_SIZE)
        if not chunk:
            break
        if chunk.count(0) != len(chunk):
            raise LayerError(f"archive is corrupt: data that is not a member header after "
                             f"offset {end_offset}")
        trailing += len(chunk)
    if trailing < END_OF_ARCHIVE_SIZE:
        raise LayerError("archive is truncated: no end-of-archive marker")


class _Validator:
    def __init__(self, limits: ArchiveLimits) -> None:
        self._limits = limits
        self._kinds: dict[tuple[str, ...], Kind] = {}  # what the archive itself puts at a path
        self._names: set[tuple[Kind, tuple[str, ...]]] = set()
        self.members: list[Member] = []

    def add(self, info: tarfile.TarInfo) -> None:
        try:
            member = self._member(info)
            self._check_against_archive(member)
        except (LayerError, ValueError, UnicodeError) as error:
            raise LayerError(f"refusing member {info.name!r}: {error}") from None
        self.members.append(member)

    def _member(self, info: tarfile.TarInfo) -> Member:
        escaped = _is_escaped(info)
        kind, parts = self._kind(info, self._split_name(info.name), escaped)
        member = Member(
            name=info.name, kind=kind, parts=parts, mode=stat.S_IMODE(info.mode),
            uid=self._id(info.uid), gid=self._id(info.gid), mtime_ns=self._mtime(info),
            xattrs=self._xattrs(info))
        if kind == Kind.FILE:
            return dataclasses.replace(member, size=info.size, data_offset=info.offset_data)
        if info.size != 0:
            raise LayerError(f"a {kind.value} must not carry data")
        if kind == Kind.SYMLINK:
            return dataclasses.replace(member,
                                       symlink_target=self._symlink_target(info.linkname))
        if kind == Kind.HARDLINK:
            return dataclasses.replace(member,
                                       link_parts=self._link_parts(info.linkname, escaped))
        if kind in (Kind.CHAR_DEVICE, Kind.BLOCK_DEVICE):
            return dataclasses.replace(member, rdev=os.makedev(info.devmajor, info.devminor))
        return member

    def _split_name(self, name: str) -> tuple[str, ...]:
        """The archived path components (still escaped), checked for syntax only."""
        if "\x00" in name:
            raise LayerError("NUL in name")
        if name.startswith("/"):
            raise LayerError("absolute name")
        relative = name[2:] if name.startswith("./") else name
        if relative in ("", "."):
            return ()
        if len(os.fsencode(relative)) > self._limits.max_path_bytes + PATH_ESCAPE_ALLOWANCE:
            raise LayerError("name too long")
        parts = tuple(relative.rstrip("/").split("/"))
        for part in parts:
            if part in ("", ".", ".."):
                raise LayerError(f"path component {part!r} not allowed")
        return parts

    def _real_parts(self, parts: tuple[str, ...], escaped: bool) -> tuple[str, ...]:
        """The path a member's archived components name (never a deletion marker)."""
        if escaped:
            real = tuple(unescape_component(part) for part in parts)
        elif any(part.startswith(WHITEOUT_PREFIX) for part in parts):
            raise LayerError("a whiteout name used as a directory")
        else:
            real = parts
        for part in real:
            self._check_component(part)
        if len(os.fsencode("/".join(real))) > self._limits.max_path_bytes:
            raise LayerError("name too long")
        return real

    def _check_component(self, part: str) -> None:
        if part in ("", ".", ".."):
            raise LayerError(f"path component {part!r} not allowed")
        if len(os.fsencode(part)) > self._limits.max_name_bytes:
            raise LayerError("path component too long")

    def _kind(self, info: tarfile.TarInfo, parts: tuple[str, ...], escaped: bool
              ) -> tuple[Kind, tuple[str, ...]]:
        """The member's kind, and the path it creates (for a deletion: the path it deletes,
        for an opaque marker: the directory it empties)."""
        if info.sparse is not None:
            raise LayerError("sparse files are not allowed")
        leaf = parts[-1] if parts else ""
        if not leaf.startswith(WHITEOUT_PREFIX):
            real = self._real_parts(parts, escaped)
            kind = _TYPE_KINDS.get(info.type)
            if kind is None:
                raise LayerError(f"member type {info.type!r} not allowed")
            if not real and kind != Kind.DIRECTORY:
                raise LayerError("the root must be a directory")
            if (kind == Kind.CHAR_DEVICE
                    and os.makedev(info.devmajor, info.devminor) == WHITEOUT_DEVICE):
                raise LayerError("character device 0:0 is overlay's whiteout, not a layer member")
            return kind, real
        directory = self._real_parts(parts[:-1], escaped)
        if info.type not in REGULAR_TYPES:
            raise LayerError("a whiteout must be a regular file")
        if info.size != 0:
            raise LayerError("a whiteout must be empty (a real file of this name, from an image "
                             "written before ARCH escaped such names, cannot be restored)")
        if leaf == OPAQUE_MARKER:
            return Kind.OPAQUE, directory
        deleted = leaf[len(WHITEOUT_PREFIX):]
        if escaped:
            deleted = unescape_component(deleted)
        elif deleted.startswith(WHITEOUT_PREFIX):
            raise LayerError("unknown special whiteout (a real file of this name, from an image "
                             "written before ARCH escaped such names, cannot be restored)")
        self._check_component(deleted)
        return Kind.WHITEOUT, (*directory, deleted)

    def _id(self, value: int) -> int:
        if not 0 <= value <= MAX_ID:
            raise LayerError(f"uid/gid {value} out of range")
        return value

    def _mtime(self, info: tarfile.TarInfo) -> int:
        exact = info.pax_headers.get(PAX_MTIME)
        if exact is not None:
            return parse_pax_time(exact)
        return int(info.mtime) * NANOSECONDS

    def _xattrs(self, info: tarfile.TarInfo) -> dict[str, bytes]:
        xattrs = {}
        for key, value in info.pax_headers.items():
            if not key.startswith(PAX_XATTR_PREFIX):
                continue
            name = key[len(PAX_XATTR_PREFIX):]
            if not name or "\x00" in name or len(os.fsencode(name)) > XATTR_NAME_MAX:
                raise LayerError(f"invalid xattr name {name!r}")
            if is_overlay_private_xattr(name):
                raise LayerError(f"overlay-private xattr {name!r}")
            data = value.encode(TAR_ENCODING, TAR_ERRORS)
            if len(data) > XATTR_SIZE_MAX:
                raise LayerError(f"xattr {name!r} too large")
            xattrs[name] = data
        if len(xattrs) > self._limits.max_xattrs_per_member:
            raise LayerError("too many xattrs")
        return xattrs

    def _symlink_target(self, target: str) -> str:
        if not target or "\x00" in target or len(os.fsencode(target)) > self._limits.max_path_bytes:
            raise LayerError("invalid symlink target")
        return target

    def _link_parts(self, target: str, escaped: bool) -> tuple[str, ...]:
        parts = self._split_name(target)
        if not parts or (not escaped and parts[-1].startswith(WHITEOUT_PREFIX)):
            raise LayerError(f"hard link target {target!r} not allowed")
        real = self._real_parts(parts, escaped)
        linked_kind = self._kinds.get(real)
        if linked_kind is None or linked_kind in (Kind.DIRECTORY, Kind.HARDLINK):
            raise LayerError(f"hard link target {target!r} is not an earlier non-directory "
                             "member of this archive")
        return real

    def _check_against_archive(self, member: Member) -> None:
        """No duplicate paths; nothing below a non-directory this archive creates."""
        key = (member.kind, member.parts)
        if key in self._names:
            raise LayerError("duplicate member")
        self._names.add(key)
        for depth in range(len(member.parts)):
            parent_kind = self._kinds.get(member.parts[:depth])
            if parent_kind is not None and parent_kind != Kind.DIRECTORY:
                raise LayerError(f"{display_name(member.parts[:depth])!r} is a "
                                 f"{parent_kind.value} in this archive; nothing can be below it")
        if member.kind not in DELETIONS:
            self._kinds[member.parts] = member.kind


def _is_escaped(info: tarfile.TarInfo) -> bool:
    value = info.pax_headers.get(PAX_ESCAPED)
    if value is None:
        return False
    if value != PAX_ESCAPED_VALUE:
        raise LayerError(f"PAX record {PAX_ESCAPED}={value!r} not understood")
    return True


_TYPE_KINDS = {
    **{member_type: Kind.FILE for member_type in REGULAR_TYPES},
    tarfile.DIRTYPE: Kind.DIRECTORY,
    tarfile.SYMTYPE: Kind.SYMLINK,
    tarfile.LNKTYPE: Kind.HARDLINK,
    tarfile.FIFOTYPE: Kind.FIFO,
    tarfile.CHRTYPE: Kind.CHAR_DEVICE,
    tarfile.BLKTYPE: Kind.BLOCK_DEVICE,
}


# application ----------------------------------------------------------------------------

def _apply_or_roll_back(members: list[Member], archive_fd: int, root_fd: int,
                        journal: Journal, verifying: Future[tuple[int, ...]],
                        reset: Callable[[int, Journal], None]) -> None:
    applier = _Applier(archive_fd, root_fd, journal)
    try:
        reset(root_fd, journal)
        applier.apply(members)
        identity = verifying.result()
        if _identity(archive_fd) != identity:
            raise LayerError("the archive changed on its storage while it was being applied")
    except BaseException as raised:
        applier.close()
        digest_error = verifying.exception()  # waits: a corrupt archive is the better reason
        error = digest_error if isinstance(digest_error, LayerError) else raised
        _roll_back_after(error, journal)
        if isinstance(error, LayerError):
            raise error from (raised if error is not raised else raised.__cause__)
        raise LayerError(f"applying the layer failed: {error}") from error
    applier.close()


def _roll_back_after(error: BaseException, journal: Journal) -> None:
    try:
        journal.rollback()
    except LayerError as rollback_error:
        raise LayerError(f"{error}; and then {rollback_error}") from error


class _Applier:
    def __init__(self, archive_fd: int, root_fd: int, journal: Journal) -> None:
        self._archive_fd = archive_fd
        self._journal = journal
        self._walker = DirectoryWalker(root_fd)
        self._link_walker = DirectoryWalker(root_fd)
        self._directory_times: list[Member] = []

    def apply(self, members: list[Member]) -> None:
        for member in members:
            if member.kind in DELETIONS:
                self._guarded(self._delete, member)
        for member in members:
            if member.kind not in DELETIONS:
                self._guarded(self._add, member)
        for member in reversed(self._directory_times):  # deepest first
            self._guarded(self._set_directory_times, member)

    def close(self) -> None:
        self._walker.close()
        self._link_walker.close()

    def _guarded(self, step: Callable[[Member], None], member: Member) -> None:
        try:
            step(member)
        except LayerError as error:
            raise LayerError(f"member {member.name!r}: {error}") from error
        except OSError as error:
            raise LayerError(f"member {member.name!r}: {error.strerror or error} "
                             f"(errno {error.errno})") from error

    # deletions --------------------------------------------------------------------------

    def _delete(self, member: Member) -> None:
        """Remove what a whiteout names, or empty the directory an opaque marker names.
        A path that does not exist, or only exists through a symlink, has nothing to delete."""
        if member.kind == Kind.OPAQUE and not member.parts:
            self._empty_directory(self._walker.fd_at(0), ())
            return
        try:
            parent_fd = self._walker.open(member.parts[:-1])
        except UnsafePathError:
            return
        if parent_fd is None or not _exists(parent_fd, member.parts[-1]):
            return
        if member.kind == Kind.OPAQUE and _is_directory(parent_fd, member.parts[-1]):
            dir_fd = os.open(member.parts[-1], DIR_OPEN_FLAGS, dir_fd=parent_fd)
            try:
                self._empty_directory(dir_fd, member.parts)
            finally:
                os.close(dir_fd)
            return
        self._journal.directory_touched(parent_fd, member.parts[:-1])
        self._journal.remove(parent_fd, member.parts)

    def _empty_directory(self, dir_fd: int, parts: tuple[str, ...]) -> None:
        children = sorted(os.listdir(dir_fd))
        if children:
            self._journal.directory_touched(dir_fd, parts)
        for child in children:
            self._journal.remove(dir_fd, (*parts, child))

    # additions --------------------------------------------------------------------------

    def _add(self, member: Member) -> None:
        if not member.parts:
            self._update_directory(self._walker.fd_at(0), member)
            return
        parent_fd = self._walker.open(member.parts[:-1], create_missing=self._create_parent)
        assert parent_fd is not None
        name = member.parts[-1]
        existing = _lstat(parent_fd, name)
        if (existing is not None and stat.S_ISDIR(existing.st_mode)
                and member.kind == Kind.DIRECTORY):
            dir_fd = os.open(name, DIR_OPEN_FLAGS, dir_fd=parent_fd)
            try:
                self._update_directory(dir_fd, member)
            finally:
                os.close(dir_fd)
            return
        self._journal.directory_touched(parent_fd, member.parts[:-1])
        if existing is not None:
            self._journal.remove(parent_fd, member.parts)
        self._create(parent_fd, member)

    def _create(self, parent_fd: int, member: Member) -> None:
        if member.kind == Kind.FILE:
            self._create_file(parent_fd, member)
        elif member.kind == Kind.DIRECTORY:
            self._create_directory(parent_fd, member)
        elif member.kind == Kind.SYMLINK:
            self._create_symlink(parent_fd, member)
        elif member.kind == Kind.HARDLINK:
            self._create_hard_link(parent_fd, member)
        else:
            self._create_node(parent_fd, member)

    def _create_parent(self, parent_fd: int, parts: tuple[str, ...]) -> None:
        """A directory the archive has no entry for (tar allows that): plain 0755 root:root."""
        self._journal.directory_touched(parent_fd, parts[:-1])
        os.mkdir(parts[-1], PRIVATE_DIR_MODE, dir_fd=parent_fd)
        self._journal.created(parts)
        dir_fd = os.open(parts[-1], DIR_OPEN_FLAGS, dir_fd=parent_fd)
        try:
            os.fchmod(dir_fd, 0o755)
        finally:
            os.close(dir_fd)

    def _update_directory(self, dir_fd: int, member: Member) -> None:
        self._journal.directory_metadata_changing(dir_fd, member.parts)
        _set_directory_metadata(dir_fd, member)
        self._directory_times.append(member)

    def _create_directory(self, parent_fd: int, member: Member) -> None:
        os.mkdir(member.parts[-1], PRIVATE_DIR_MODE, dir_fd=parent_fd)
        self._journal.created(member.parts)
        dir_fd = os.open(member.parts[-1], DIR_OPEN_FLAGS, dir_fd=parent_fd)
        try:
            _set_directory_metadata(dir_fd, member)
        finally:
            os.close(dir_fd)
        self._directory_times.append(member)

    def _create_file(self, parent_fd: int, member: Member) -> None:
        file_fd = os.open(member.parts[-1], NEW_FILE_FLAGS, PRIVATE_MODE, dir_fd=parent_fd)
        self._journal.created(member.parts)
        try:
            copy_range(self._archive_fd, member.data_offset, file_fd, member.size)
            set_fd_metadata(file_fd, member.metadata, member.name)
        finally:
            os.close(file_fd)

    def _create_symlink(self, parent_fd: int, member: Member) -> None:
        os.symlink(member.symlink_target, member.parts[-1], dir_fd=parent_fd)
        self._journal.created(member.parts)
        set_special_metadata(parent_fd, member.parts[-1], member.metadata, member.name,
                             symlink=True)

    def _create_node(self, parent_fd: int, member: Member) -> None:
        file_type = {Kind.FIFO: stat.S_IFIFO, Kind.CHAR_DEVICE: stat.S_IFCHR,
                     Kind.BLOCK_DEVICE: stat.S_IFBLK}[member.kind]
        os.mknod(member.parts[-1], file_type | PRIVATE_MODE, member.rdev, dir_fd=parent_fd)
        self._journal.created(member.parts)
        set_special_metadata(parent_fd, member.parts[-1], member.metadata, member.name,
                             symlink=False)

    def _create_hard_link(self, parent_fd: int, member: Member) -> None:
        source_parent_fd = self._link_walker.open(member.link_parts[:-1])
        if source_parent_fd is None:
            raise LayerError(f"hard link target {display_name(member.link_parts)!r} is missing")
        os.link(member.link_parts[-1], member.parts[-1], src_dir_fd=source_parent_fd,
                dst_dir_fd=parent_fd, follow_symlinks=False)
        self._journal.created(member.parts)

    def _set_directory_times(self, member: Member) -> None:
        dir_fd = self._walker.open(member.parts)
        if dir_fd is None:
            raise LayerError("directory vanished")
        os.utime(dir_fd, ns=(member.mtime_ns, member.mtime_ns))


def _set_directory_metadata(dir_fd: int, member: Member) -> None:
    """Owner, mode and exactly the archive's xattrs now; times at the end, after the
    directory's entries exist."""
    os.fchown(dir_fd, member.uid, member.gid)
    os.fchmod(dir_fd, member.mode)
    current = read_xattrs(dir_fd)
    remove_xattrs(dir_fd, [name for name in current if name not in member.xattrs],
                  what=member.name)
    write_xattrs(dir_fd, {name: value for name, value in member.xattrs.items()
                          if current.get(name) != value}, what=member.name)


def _lstat(parent_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _exists(parent_fd: int, name: str) -> bool:
    return _lstat(parent_fd, name) is not None


def _is_directory(parent_fd: int, name: str) -> bool:
    node_stat = _lstat(parent_fd, name)
    return node_stat is not None and stat.S_ISDIR(node_stat.st_mode)
