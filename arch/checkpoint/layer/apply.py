"""Apply an untrusted OCI layer archive to a container rootfs, with a complete undo journal.

The archive comes from shared storage, so nothing in it is trusted:
1. its size and sha256 must match what the checkpoint's metadata says, and
2. every member header is parsed and validated before anything is touched (archive.py);
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

import logging
import os
import stat
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from arch.checkpoint.layer.archive import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    check_file,
    file_identity,
    read_members,
    verify_digest,
)
from arch.checkpoint.layer.common import (
    DIR_OPEN_FLAGS,
    NEW_FILE_FLAGS,
    PRIVATE_DIR_MODE,
    PRIVATE_MODE,
    DirectoryWalker,
    LayerError,
    OverlayMarkers,
    UnsafePathError,
    copy_range,
    display_name,
    read_xattrs,
    remove_xattrs,
    set_fd_metadata,
    set_special_metadata,
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
    archive_fd = os.open(tar_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # never a FIFO
    try:
        check_file(archive_fd, tar_path, expected_size)
        try:
            members = read_members(archive_fd, limits)
        except LayerError:
            # A corrupt archive explains a bad header better than the header does.
            verify_digest(archive_fd, tar_path, expected_sha256, expected_size)
            raise
        root_fd = os.open(rootfs, DIR_OPEN_FLAGS)
        try:
            if policy is not None:
                policy.check(members, root_fd, archive_fd)
            target = _Target.prepare(rootfs, root_fd, overlay, members)
            journal = Journal(root_fd, target.sources)
            # The digest is checked while the members are applied (hashing runs without the
            # GIL): every member path was validated above, so nothing lands outside the
            # rootfs meanwhile, and a mismatch rolls everything back before anything runs.
            with ThreadPoolExecutor(max_workers=1) as background:
                verifying = background.submit(
                    verify_digest, archive_fd, tar_path, expected_sha256, expected_size
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


# application ----------------------------------------------------------------------------

def _apply_or_roll_back(members: list[Member], archive_fd: int, root_fd: int,
                        journal: Journal, verifying: Future[tuple[int, ...]],
                        reset: Callable[[int, Journal], None]) -> None:
    applier = _Applier(archive_fd, root_fd, journal)
    try:
        reset(root_fd, journal)
        applier.apply(members)
        identity = verifying.result()
        if file_identity(archive_fd) != identity:
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
