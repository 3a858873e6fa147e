"""The undo journal of a layer application: what apply_layer changed and how to put it back.

Every change apply_layer makes in the target tree is recorded *before* it happens:
- a node it creates (undo: remove it);
- a node it is about to replace or remove: its prior state is saved first (undo: remove what
  is there now, rebuild the saved node);
- the metadata of an existing directory it changes, and the times of an existing directory whose
  entries it changes (undo: set them back).

Saving a node copies no file contents, and nothing goes to RAM-backed storage:
- on an overlay rootfs, a node the upper layer does not hold comes unchanged from the lower
  layers, which are read-only: only "it came from below" is recorded, and rollback copies it
  back from the lower layers (lower.py's view of them);
- a regular file the upper layer holds (a kept writable layer, or a plain rootfs) is hard-linked
  into a backup directory next to the upper layer, on its filesystem; rollback copies it back
  and the link goes with the backup directory.
Metadata, symlink targets and device numbers are kept in memory. Rollback first removes what the
application created (freeing its space), then rebuilds what it removed, then puts directory
metadata and times back. Inside the rootfs every path is reached through DirectoryWalker (no
symlink is ever followed).

Known limits: a replaced file that had hard links to names the application did not touch comes
back as an independent copy (same content and metadata, a lower link count); so do hard links
between files of the lower layers that rollback copies back one at a time.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Union

from arch.checkpoint.layer.common import (
    DIR_OPEN_FLAGS,
    INCOMPLETE_NODE_XATTRS,
    NEW_FILE_FLAGS,
    PRIVATE_DIR_MODE,
    PRIVATE_MODE,
    DirectoryWalker,
    LayerError,
    NodeMetadata,
    copy_range,
    display_name,
    lstat_at,
    node_metadata,
    node_path,
    read_xattrs,
    remove_xattrs,
    set_fd_metadata,
    set_special_metadata,
    write_xattrs,
)
from arch.checkpoint.layer.lower import TreeCopier

logger = logging.getLogger(__name__)

BACKUP_DIR_PREFIX = ".arch-rollback-"
BACKUP_FILES = "files"


@dataclass
class RollbackSources:
    """Where rollback finds what the journal does not keep itself.

    `backup_parent`: a directory on the filesystem of the upper layer (overlay) or of the tree
    (plain), outside the rootfs, where the journal makes its private backup directory
    (`backup_prefix` + random) when it first needs one; None when there is none (then no file the
    upper layer holds may be removed). `upper_fd`/`lower_fd`: the overlay's upperdir and the
    lower-layer view (both None for a plain tree). The journal closes the fds and removes its
    backup directory when it ends."""

    backup_parent: str | None
    backup_prefix: str = BACKUP_DIR_PREFIX
    upper_fd: int | None = None
    lower_fd: int | None = None

    def remove_stale_backups(self) -> None:
        """Backup directories of this tree left by an apply that was killed: nothing can still
        use them (one container is created once at a time), and this apply resets the tree."""
        if self.backup_parent is None:
            return
        for name in os.listdir(self.backup_parent):
            if name.startswith(self.backup_prefix):
                logger.warning("removing %s/%s, left by an interrupted restore",
                               self.backup_parent, name)
                shutil.rmtree(os.path.join(self.backup_parent, name))


@dataclass
class SavedNode:
    """The prior state of one node (and, for a directory, of everything below it)."""

    name: str
    metadata: NodeMetadata
    from_lower: bool = False  # unchanged from the lower layers: rebuilt from there
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

    def __init__(self, root_fd: int, sources: RollbackSources) -> None:
        self._root_fd = os.dup(root_fd)
        self._sources = sources
        self._upper = None if sources.upper_fd is None else DirectoryWalker(sources.upper_fd)
        self._entries: list[_Entry] = []
        self._created: set[tuple[str, ...]] = set()
        self._times_saved: set[tuple[str, ...]] = set()
        self._metadata_saved: set[tuple[str, ...]] = set()
        self._backup_count = 0
        self._backup_fd: int | None = None
        self.backup_dir: str | None = None
        self._finished = False

    # recording ---------------------------------------------------------------------------

    def created(self, parts: tuple[str, ...]) -> None:
        self._entries.append(_Created(parts))
        self._created.add(parts)

    def was_created(self, parts: tuple[str, ...]) -> bool:
        return any(parts[:depth] in self._created for depth in range(1, len(parts) + 1))

    def directory_touched(self, dir_fd: int, parts: tuple[str, ...]) -> None:
        """Call before adding or removing entries of the directory `parts` (open as dir_fd)."""
        if self.was_created(parts) or parts in self._times_saved:
            return
        self._times_saved.add(parts)
        dir_stat = os.fstat(dir_fd)
        self._entries.append(_DirectoryTimes(parts, dir_stat.st_atime_ns, dir_stat.st_mtime_ns))

    def directory_metadata_changing(self, dir_fd: int, parts: tuple[str, ...]) -> None:
        """Call before changing owner, mode, xattrs or times of the existing directory `parts`."""
        if self.was_created(parts) or parts in self._metadata_saved:
            return
        self._metadata_saved.add(parts)
        self._entries.append(_DirectoryMetadata(parts, node_metadata(dir_fd, os.fstat(dir_fd))))

    def remove(self, parent_fd: int, parts: tuple[str, ...]) -> None:
        """Save the node `parts` (name parts[-1] in parent_fd) with its subtree, then remove it.
        A node this journal created itself is just removed."""
        if not self.was_created(parts):
            saved = self._save(parent_fd, parts, set())
            self._entries.append(_Removed(parts, saved))
        remove_tree(parent_fd, parts[-1])

    # ending ------------------------------------------------------------------------------

    def commit(self) -> None:
        """Keep the applied changes; discard the backups."""
        self._finish()
        self._close()
        self._remove_backups()

    def rollback(self) -> None:
        """Put every recorded change back. Backups are kept if anything fails."""
        self._finish()
        failures = []
        walker = DirectoryWalker(self._root_fd)
        restorer = _Restorer(self.backup_dir, self._sources.lower_fd)
        # Created nodes go first (their space is free again for what comes back), then removed
        # nodes come back newest first, then directories get their metadata and times back.
        ordered: list[_Entry] = [
            entry for entry in reversed(self._entries) if isinstance(entry, _Created)]
        ordered += [entry for entry in reversed(self._entries) if isinstance(entry, _Removed)]
        ordered += [entry for entry in reversed(self._entries)
                    if isinstance(entry, (_DirectoryMetadata, _DirectoryTimes))]
        try:
            for entry in ordered:
                try:
                    _undo(entry, walker, restorer)
                except (OSError, LayerError) as error:
                    failures.append(f"{display_name(entry.parts)}: {error}")
        finally:
            walker.close()
            restorer.close()
            self._close()
        if failures:
            raise LayerError(f"rollback incomplete (backups kept in {self.backup_dir}): "
                             + "; ".join(failures))
        self._remove_backups()

    def _finish(self) -> None:
        if self._finished:
            raise LayerError("journal already committed or rolled back")
        self._finished = True

    def _close(self) -> None:
        if self._upper is not None:
            self._upper.close()
        for fd in (self._root_fd, self._backup_fd, self._sources.upper_fd,
                   self._sources.lower_fd):
            if fd is not None:
                os.close(fd)

    def _remove_backups(self) -> None:
        if self.backup_dir is not None:
            shutil.rmtree(self.backup_dir)

    # saving ------------------------------------------------------------------------------

    def _save(self, parent_fd: int, parts: tuple[str, ...], seen_links: set[tuple[int, int]]
              ) -> SavedNode:
        name = parts[-1]
        node_stat = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        metadata = node_metadata(node_path(parent_fd, name), node_stat)
        if self._from_lower(parts):
            return SavedNode(name, metadata, from_lower=True)
        mode = node_stat.st_mode
        if stat.S_ISDIR(mode):
            return self._save_directory(parent_fd, parts, metadata, seen_links)
        saved = SavedNode(name, metadata, rdev=node_stat.st_rdev)
        if node_stat.st_nlink > 1:
            saved.link_key = (node_stat.st_dev, node_stat.st_ino)
            if saved.link_key in seen_links:
                return saved  # data already saved with the first name of this inode
            seen_links.add(saved.link_key)
        if stat.S_ISLNK(mode):
            saved.symlink_target = os.readlink(name, dir_fd=parent_fd)
        elif stat.S_ISREG(mode):
            saved.backup_file = self._link_backup(parent_fd, parts)
        return saved

    def _save_directory(self, parent_fd: int, parts: tuple[str, ...], metadata: NodeMetadata,
                        seen_links: set[tuple[int, int]]) -> SavedNode:
        saved = SavedNode(parts[-1], metadata)
        dir_fd = os.open(parts[-1], DIR_OPEN_FLAGS, dir_fd=parent_fd)
        try:
            for child in sorted(os.listdir(dir_fd)):
                saved.children.append(self._save(dir_fd, (*parts, child), seen_links))
        finally:
            os.close(dir_fd)
        return saved

    def _from_lower(self, parts: tuple[str, ...]) -> bool:
        """On an overlay: the upper layer has nothing at `parts`, so the merged node there is
        the lower layers' own, unchanged."""
        if self._upper is None:
            return False
        parent_fd = self._upper.open(parts[:-1])
        return parent_fd is None or lstat_at(parent_fd, parts[-1]) is None

    def _link_backup(self, parent_fd: int, parts: tuple[str, ...]) -> str:
        """A hard link to the file's inode in the backup directory: no data is copied."""
        if self._upper is None:
            source_parent_fd = parent_fd
        else:
            upper_parent_fd = self._upper.open(parts[:-1])
            if upper_parent_fd is None:
                raise LayerError(f"{display_name(parts)}: vanished from the upper layer")
            source_parent_fd = upper_parent_fd
            upper_xattrs = read_xattrs(node_path(upper_parent_fd, parts[-1]))
            if any(name in upper_xattrs for name in INCOMPLETE_NODE_XATTRS):
                raise LayerError(f"{display_name(parts)}: its data lives in a lower layer "
                                 "(overlay metacopy); cannot keep it for rollback")
        if self._backup_fd is None:
            if self._sources.backup_parent is None:
                raise LayerError(f"{display_name(parts)}: no backup directory on its "
                                 "filesystem to keep it for rollback")
            self.backup_dir = tempfile.mkdtemp(prefix=self._sources.backup_prefix,
                                               dir=self._sources.backup_parent)
            backups = os.path.join(self.backup_dir, BACKUP_FILES)
            os.mkdir(backups, PRIVATE_DIR_MODE)
            self._backup_fd = os.open(backups, DIR_OPEN_FLAGS)
        self._backup_count += 1
        backup_name = str(self._backup_count)
        os.link(parts[-1], backup_name, src_dir_fd=source_parent_fd, dst_dir_fd=self._backup_fd,
                follow_symlinks=False)
        return backup_name


def remove_tree(parent_fd: int, name: str) -> None:
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
            remove_tree(dir_fd, child)
    finally:
        os.close(dir_fd)
    os.rmdir(name, dir_fd=parent_fd)


# undoing --------------------------------------------------------------------------------

def _undo(entry: _Entry, walker: DirectoryWalker, restorer: _Restorer) -> None:
    parent_fd = walker.open(entry.parts[:-1]) if entry.parts else None
    if isinstance(entry, _Created):
        if parent_fd is None:
            raise LayerError("parent directory vanished")
        _remove_if_present(parent_fd, entry.parts[-1])
    elif isinstance(entry, _Removed):
        if parent_fd is None:
            raise LayerError("parent directory vanished")
        _remove_if_present(parent_fd, entry.parts[-1])
        restorer.restore(parent_fd, entry.parts, entry.saved)
    else:
        dir_fd = _open_directory(walker, entry.parts)
        try:
            if isinstance(entry, _DirectoryMetadata):
                set_directory_metadata(dir_fd, entry.metadata, display_name(entry.parts))
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
    if lstat_at(parent_fd, name) is not None:
        remove_tree(parent_fd, name)


def set_directory_metadata(dir_fd: int, metadata: NodeMetadata, what: str) -> None:
    """Owner, mode, exactly these xattrs, and times of an open directory."""
    os.fchown(dir_fd, metadata.uid, metadata.gid)
    os.fchmod(dir_fd, stat.S_IMODE(metadata.mode))
    replace_xattrs(dir_fd, metadata.xattrs, what)
    os.utime(dir_fd, ns=(metadata.atime_ns, metadata.mtime_ns))


def replace_xattrs(target: int | str, xattrs: dict[str, bytes], what: str) -> None:
    current = read_xattrs(target)
    remove_xattrs(target, [name for name in current if name not in xattrs], what=what)
    write_xattrs(target, {name: value for name, value in xattrs.items()
                          if current.get(name) != value}, what=what)


class _Restorer:
    """Rebuilds saved nodes through directory fds, hard links among them included."""

    def __init__(self, backup_dir: str | None, lower_fd: int | None) -> None:
        self._backup_dir = backup_dir
        self._lower = None if lower_fd is None else DirectoryWalker(lower_fd)
        # first restored name of each multiply linked inode: (dup of its parent fd, name)
        self._restored_links: dict[tuple[int, int], tuple[int, str]] = {}

    def close(self) -> None:
        if self._lower is not None:
            self._lower.close()
        for link_parent_fd, _name in self._restored_links.values():
            os.close(link_parent_fd)
        self._restored_links.clear()

    def restore(self, parent_fd: int, parts: tuple[str, ...], saved: SavedNode) -> None:
        """Rebuild `saved` at `parts`; an inode already rebuilt under another name (in this
        rollback) is linked again, so hard links between removed nodes survive."""
        self._restore(parent_fd, parts, saved)

    def _restore(self, parent_fd: int, parts: tuple[str, ...], saved: SavedNode) -> None:
        what = display_name(parts)
        if saved.from_lower:
            self._copy_from_lower(parent_fd, parts)
            return
        mode = saved.metadata.mode
        if saved.link_key is not None and saved.link_key in self._restored_links:
            source_fd, source_name = self._restored_links[saved.link_key]
            os.link(source_name, saved.name, src_dir_fd=source_fd, dst_dir_fd=parent_fd,
                    follow_symlinks=False)
            return
        if stat.S_ISDIR(mode):
            self._restore_directory(parent_fd, parts, saved)
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

    def _copy_from_lower(self, parent_fd: int, parts: tuple[str, ...]) -> None:
        lower_parent_fd = None if self._lower is None else self._lower.open(parts[:-1])
        if lower_parent_fd is None:
            raise LayerError("the lower layers no longer hold it")
        TreeCopier().copy(lower_parent_fd, parent_fd, parts[-1])

    def _restore_file(self, parent_fd: int, saved: SavedNode, what: str) -> None:
        file_fd = os.open(saved.name, NEW_FILE_FLAGS, PRIVATE_MODE, dir_fd=parent_fd)
        try:
            if saved.backup_file is not None:
                if self._backup_dir is None:
                    raise LayerError("no backup directory")
                backup_path = os.path.join(self._backup_dir, BACKUP_FILES, saved.backup_file)
                backup_fd = os.open(backup_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    copy_range(backup_fd, 0, file_fd, os.fstat(backup_fd).st_size)
                finally:
                    os.close(backup_fd)
            set_fd_metadata(file_fd, saved.metadata, what)
        finally:
            os.close(file_fd)

    def _restore_directory(self, parent_fd: int, parts: tuple[str, ...], saved: SavedNode
                           ) -> None:
        os.mkdir(saved.name, PRIVATE_DIR_MODE, dir_fd=parent_fd)
        dir_fd = os.open(saved.name, DIR_OPEN_FLAGS, dir_fd=parent_fd)
        try:
            for child in saved.children:
                self._restore(dir_fd, (*parts, child.name), child)
            set_fd_metadata(dir_fd, saved.metadata, display_name(parts))
        finally:
            os.close(dir_fd)
