"""The undo journal of a layer application: what apply_layer changed and how to put it back.

Every change apply_layer makes in the target tree is recorded *before* it happens:
- a node it creates (undo: remove it);
- a node it is about to replace or remove: its whole prior state is saved first — metadata and
  xattrs in memory, file contents copied into the backup directory (outside the rootfs; a
  rename cannot cross the mount) — (undo: remove what is there now, recreate the saved node);
- the metadata of an existing directory it changes, and the times of an existing directory whose
  entries it changes (undo: set them back).
Rollback replays the journal backwards; commit discards the backups. Inside the rootfs every
path is reached through DirectoryWalker (no symlink is ever followed).

Known limit: a replaced file that had hard links *outside* the replaced subtree comes back as an
independent copy (same content and metadata, link count 1).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from typing import Union

from arch.checkpoint.layer_common import (
    DIR_OPEN_FLAGS,
    DirectoryWalker,
    LayerError,
    copy_range,
    display_name,
    node_path,
    read_xattrs,
    remove_xattrs,
    write_xattrs,
)

logger = logging.getLogger(__name__)

BACKUP_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
PRIVATE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


@dataclass(frozen=True)
class NodeMetadata:
    mode: int  # st_mode, file type included
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    xattrs: dict[str, bytes]


@dataclass
class SavedNode:
    """The prior state of one node (and, for a directory, of everything below it)."""

    name: str
    metadata: NodeMetadata
    rdev: int = 0
    symlink_target: str | None = None
    backup_file: str | None = None
    link_key: tuple[int, int] | None = None  # (st_dev, st_ino) of a multiply linked non-dir
    children: list[SavedNode] = field(default_factory=list)


@dataclass(frozen=True)
class _Created:
    parts: tuple[str, ...]


@dataclass(frozen=True)
class _Removed:
    parts: tuple[str, ...]
    saved: SavedNode


@dataclass(frozen=True)
class _DirectoryMetadata:
    parts: tuple[str, ...]
    metadata: NodeMetadata


@dataclass(frozen=True)
class _DirectoryTimes:
    parts: tuple[str, ...]
    atime_ns: int
    mtime_ns: int


_Entry = Union[_Created, _Removed, _DirectoryMetadata, _DirectoryTimes]


class Journal:
    """Undo log of one apply_layer call. Call exactly one of commit() or rollback()."""

    def __init__(self, root_fd: int, backup_dir: str) -> None:
        self._root_fd = os.dup(root_fd)
        self.backup_dir = backup_dir
        self._entries: list[_Entry] = []
        self._created: set[tuple[str, ...]] = set()
        self._times_saved: set[tuple[str, ...]] = set()
        self._metadata_saved: set[tuple[str, ...]] = set()
        self._backup_count = 0
        self._finished = False

    @classmethod
    def start(cls, root_fd: int, backup_dir: str) -> Journal:
        """A journal whose backups go into `backup_dir`, created here (it must not exist)."""
        os.mkdir(backup_dir, PRIVATE_DIR_MODE)
        return cls(root_fd, backup_dir)

    # recording ---------------------------------------------------------------------------

    def created(self, parts: tuple[str, ...]) -> None:
        self._entries.append(_Created(parts))
        self._created.add(parts)

    def was_created(self, parts: tuple[str, ...]) -> bool:
        return parts in self._created

    def directory_touched(self, dir_fd: int, parts: tuple[str, ...]) -> None:
        """Call before adding or removing entries of the directory `parts` (open as dir_fd)."""
        if parts in self._created or parts in self._times_saved:
            return
        self._times_saved.add(parts)
        dir_stat = os.fstat(dir_fd)
        self._entries.append(_DirectoryTimes(parts, dir_stat.st_atime_ns, dir_stat.st_mtime_ns))

    def directory_metadata_changing(self, dir_fd: int, parts: tuple[str, ...]) -> None:
        """Call before changing owner, mode, xattrs or times of the existing directory `parts`."""
        if parts in self._created or parts in self._metadata_saved:
            return
        self._metadata_saved.add(parts)
        self._entries.append(_DirectoryMetadata(parts, _metadata(dir_fd, os.fstat(dir_fd))))

    def remove(self, parent_fd: int, parts: tuple[str, ...]) -> None:
        """Save the node `parts` (name parts[-1] in parent_fd) with its subtree, then remove it."""
        saved = self._save(parent_fd, parts[-1], set())
        self._entries.append(_Removed(parts, saved))
        _remove_tree(parent_fd, parts[-1])

    # ending ------------------------------------------------------------------------------

    def commit(self) -> None:
        """Keep the applied changes; discard the backups."""
        self._finish()
        os.close(self._root_fd)
        shutil.rmtree(self.backup_dir)

    def rollback(self) -> None:
        """Put every recorded change back, newest first. Backups are kept if anything fails."""
        self._finish()
        failures = []
        walker = DirectoryWalker(self._root_fd)
        try:
            for entry in reversed(self._entries):
                try:
                    _undo(entry, walker, self.backup_dir)
                except (OSError, LayerError) as error:
                    failures.append(f"{display_name(entry.parts)}: {error}")
        finally:
            walker.close()
            os.close(self._root_fd)
        if failures:
            raise LayerError(f"rollback incomplete (backups kept in {self.backup_dir}): "
                             + "; ".join(failures))
        shutil.rmtree(self.backup_dir)

    def _finish(self) -> None:
        if self._finished:
            raise LayerError("journal already committed or rolled back")
        self._finished = True

    # saving ------------------------------------------------------------------------------

    def _save(self, parent_fd: int, name: str, seen_links: set[tuple[int, int]]) -> SavedNode:
        node_stat = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        mode = node_stat.st_mode
        if stat.S_ISDIR(mode):
            return self._save_directory(parent_fd, name, node_stat, seen_links)
        saved = SavedNode(name, _metadata(node_path(parent_fd, name), node_stat),
                          rdev=node_stat.st_rdev)
        if node_stat.st_nlink > 1:
            saved.link_key = (node_stat.st_dev, node_stat.st_ino)
            if saved.link_key in seen_links:
                return saved  # data already saved with the first name of this inode
            seen_links.add(saved.link_key)
        if stat.S_ISLNK(mode):
            saved.symlink_target = os.readlink(name, dir_fd=parent_fd)
        elif stat.S_ISREG(mode):
            saved.backup_file = self._save_contents(parent_fd, name, node_stat)
        return saved

    def _save_directory(self, parent_fd: int, name: str, node_stat: os.stat_result,
                        seen_links: set[tuple[int, int]]) -> SavedNode:
        dir_fd = os.open(name, DIR_OPEN_FLAGS, dir_fd=parent_fd)
        try:
            saved = SavedNode(name, _metadata(dir_fd, node_stat))
            for child in sorted(os.listdir(dir_fd)):
                saved.children.append(self._save(dir_fd, child, seen_links))
        finally:
            os.close(dir_fd)
        return saved

    def _save_contents(self, parent_fd: int, name: str, node_stat: os.stat_result) -> str:
        self._backup_count += 1
        backup_name = str(self._backup_count)
        source_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            target_fd = os.open(os.path.join(self.backup_dir, backup_name), BACKUP_FILE_FLAGS,
                                PRIVATE_MODE)
            try:
                copy_range(source_fd, 0, target_fd, node_stat.st_size)
            finally:
                os.close(target_fd)
        finally:
            os.close(source_fd)
        return backup_name


def _metadata(target: int | str, node_stat: os.stat_result) -> NodeMetadata:
    return NodeMetadata(node_stat.st_mode, node_stat.st_uid, node_stat.st_gid,
                        node_stat.st_atime_ns, node_stat.st_mtime_ns, read_xattrs(target))


def _remove_tree(parent_fd: int, name: str) -> None:
    """Remove `name` in parent_fd and, for a directory, everything below it (no symlinks
    followed: a directory is entered only through an O_NOFOLLOW open)."""
    try:
        os.unlink(name, dir_fd=parent_fd)
        return
    except IsADirectoryError:
        pass
    except OSError as error:
        if error.errno != errno.EPERM:  # unlink(2) of a directory: EISDIR (Linux) or EPERM
            raise
    dir_fd = os.open(name, DIR_OPEN_FLAGS, dir_fd=parent_fd)
    try:
        for child in os.listdir(dir_fd):
            _remove_tree(dir_fd, child)
    finally:
        os.close(dir_fd)
    os.rmdir(name, dir_fd=parent_fd)


# undoing --------------------------------------------------------------------------------

def _undo(entry: _Entry, walker: DirectoryWalker, backup_dir: str) -> None:
    parent_fd = walker.open(entry.parts[:-1]) if entry.parts else None
    if isinstance(entry, _Created):
        if parent_fd is None:
            raise LayerError("parent directory vanished")
        _remove_if_present(parent_fd, entry.parts[-1])
    elif isinstance(entry, _Removed):
        if parent_fd is None:
            raise LayerError("parent directory vanished")
        _remove_if_present(parent_fd, entry.parts[-1])
        _Restorer(backup_dir).restore(parent_fd, entry.parts, entry.saved)
    else:
        dir_fd = _open_directory(walker, entry.parts)
        try:
            if isinstance(entry, _DirectoryMetadata):
                _set_directory_metadata(dir_fd, entry.metadata, display_name(entry.parts))
            else:
                os.utime(dir_fd, ns=(entry.atime_ns, entry.mtime_ns))
        finally:
            os.close(dir_fd)


def _open_directory(walker: DirectoryWalker, parts: tuple[str, ...]) -> int:
    fd = walker.open(parts)
    if fd is None:
        raise LayerError("directory vanished")
    return os.dup(fd)


def _remove_if_present(parent_fd: int, name: str) -> None:
    try:
        os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    _remove_tree(parent_fd, name)


def _set_directory_metadata(dir_fd: int, metadata: NodeMetadata, what: str) -> None:
    os.fchown(dir_fd, metadata.uid, metadata.gid)
    os.fchmod(dir_fd, stat.S_IMODE(metadata.mode))
    _replace_xattrs(dir_fd, metadata.xattrs, what)
    os.utime(dir_fd, ns=(metadata.atime_ns, metadata.mtime_ns))


def _replace_xattrs(target: int | str, xattrs: dict[str, bytes], what: str) -> None:
    current = read_xattrs(target)
    remove_xattrs(target, [name for name in current if name not in xattrs], what=what)
    write_xattrs(target, {name: value for name, value in xattrs.items()
                          if current.get(name) != value}, what=what)


class _Restorer:
    """Recreates saved nodes through directory fds, hard links within one saved tree included."""

    def __init__(self, backup_dir: str) -> None:
        self._backup_dir = backup_dir
        # first restored name of each multiply linked inode: (dup of its parent fd, name)
        self._restored_links: dict[tuple[int, int], tuple[int, str]] = {}

    def restore(self, parent_fd: int, parts: tuple[str, ...], saved: SavedNode) -> None:
        try:
            self._restore(parent_fd, saved, display_name(parts))
        finally:
            for link_parent_fd, _name in self._restored_links.values():
                os.close(link_parent_fd)
            self._restored_links.clear()

    def _restore(self, parent_fd: int, saved: SavedNode, what: str) -> None:
        mode = saved.metadata.mode
        if saved.link_key is not None and saved.link_key in self._restored_links:
            source_fd, source_name = self._restored_links[saved.link_key]
            os.link(source_name, saved.name, src_dir_fd=source_fd, dst_dir_fd=parent_fd,
                    follow_symlinks=False)
            return
        if stat.S_ISDIR(mode):
            self._restore_directory(parent_fd, saved, what)
            return
        if stat.S_ISREG(mode):
            self._restore_file(parent_fd, saved, what)
        elif stat.S_ISLNK(mode):
            os.symlink(saved.symlink_target or "", saved.name, dir_fd=parent_fd)
            set_special_metadata(parent_fd, saved.name, saved.metadata, what, symlink=True)
        else:
            os.mknod(saved.name, stat.S_IFMT(mode) | 0o600, saved.rdev, dir_fd=parent_fd)
            set_special_metadata(parent_fd, saved.name, saved.metadata, what, symlink=False)
        if saved.link_key is not None:
            self._restored_links[saved.link_key] = (os.dup(parent_fd), saved.name)

    def _restore_file(self, parent_fd: int, saved: SavedNode, what: str) -> None:
        file_fd = os.open(saved.name, NEW_FILE_FLAGS, PRIVATE_MODE, dir_fd=parent_fd)
        try:
            if saved.backup_file is not None:
                backup_path = os.path.join(self._backup_dir, saved.backup_file)
                backup_fd = os.open(backup_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    copy_range(backup_fd, 0, file_fd, os.fstat(backup_fd).st_size)
                finally:
                    os.close(backup_fd)
            set_fd_metadata(file_fd, saved.metadata, what)
        finally:
            os.close(file_fd)

    def _restore_directory(self, parent_fd: int, saved: SavedNode, what: str) -> None:
        os.mkdir(saved.name, PRIVATE_DIR_MODE, dir_fd=parent_fd)
        dir_fd = os.open(saved.name, DIR_OPEN_FLAGS, dir_fd=parent_fd)
        try:
            for child in saved.children:
                self._restore(dir_fd, child, f"{what}/{child.name}")
            set_fd_metadata(dir_fd, saved.metadata, what)
        finally:
            os.close(dir_fd)


def set_fd_metadata(fd: int, metadata: NodeMetadata, what: str) -> None:
    """Owner, mode, xattrs, then times (chown clears set-id bits and capabilities; every other
    change would move mtime) of an open regular file or directory."""
    os.fchown(fd, metadata.uid, metadata.gid)
    os.fchmod(fd, stat.S_IMODE(metadata.mode))
    write_xattrs(fd, metadata.xattrs, what=what)
    os.utime(fd, ns=(metadata.atime_ns, metadata.mtime_ns))


def set_special_metadata(parent_fd: int, name: str, metadata: NodeMetadata, what: str, *,
                         symlink: bool) -> None:
    """The same for a symlink, FIFO or device node `name` in parent_fd (never followed)."""
    os.chown(name, metadata.uid, metadata.gid, dir_fd=parent_fd, follow_symlinks=False)
    if not symlink:
        _chmod_node(parent_fd, name, stat.S_IMODE(metadata.mode))
    write_xattrs(node_path(parent_fd, name), metadata.xattrs, what=what)
    os.utime(name, dir_fd=parent_fd, follow_symlinks=False,
             ns=(metadata.atime_ns, metadata.mtime_ns))


def _chmod_node(parent_fd: int, name: str, mode: int) -> None:
    """chmod a FIFO/device without following a symlink: through an O_PATH fd of the node."""
    path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        if stat.S_ISLNK(os.fstat(path_fd).st_mode):
            raise LayerError(f"{name!r} turned into a symlink")
        os.chmod(f"/proc/self/fd/{path_fd}", mode)
    finally:
        os.close(path_fd)
