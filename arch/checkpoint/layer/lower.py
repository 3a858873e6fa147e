"""The lower layers of a container's overlay, read on their own: what its rootfs looks like
before any change of the upper layer, and copies of it into the rootfs.

The view is a second, read-only overlay of the same lowerdirs, made with the new mount API
(fsopen/fsconfig/fsmount) as a *detached* mount: it is reached only through its file
descriptor, appears in no mount table, and goes away when the descriptor is closed or the
process dies. Lower layers are read-only and shared by design, so a second overlay of them is
as safe as a second container of the same image. The kernel resolves the layers' whiteouts,
opaque directories and stacking exactly as it does for the container.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Sequence

from arch.checkpoint.layer.common import (
    DIR_OPEN_FLAGS,
    NEW_FILE_FLAGS,
    PRIVATE_DIR_MODE,
    PRIVATE_MODE,
    DirectoryWalker,
    LayerError,
    copy_range,
    lstat_at,
    node_metadata,
    node_path,
    set_fd_metadata,
    set_special_metadata,
)

# Syscall numbers shared by every architecture (the table was unified from 424 on).
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
FILE_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def open_lower_view(lowerdirs: Sequence[str], empty_dir: str, *, userxattr: bool) -> int:
    """A directory fd of a read-only overlay of `lowerdirs` (topmost first).

    `empty_dir` (an empty directory that stays empty while the view is open) is stacked at the
    bottom: overlay needs two layers when there is no upper one."""
    layers = ":".join(_escape_layer(layer) for layer in (*lowerdirs, empty_dir))
    fs_fd = _check(_syscall(SYS_FSOPEN, b"overlay", FSOPEN_CLOEXEC), "fsopen(overlay)")
    try:
        _fsconfig(fs_fd, FSCONFIG_SET_STRING, b"lowerdir", os.fsencode(layers))
        if userxattr:
            _fsconfig(fs_fd, FSCONFIG_SET_FLAG, b"userxattr", None)
        _fsconfig(fs_fd, FSCONFIG_CMD_CREATE, None, None)
        attributes = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        return _check(_syscall(SYS_FSMOUNT, fs_fd, FSMOUNT_CLOEXEC, attributes), "fsmount")
    finally:
        os.close(fs_fd)


def _escape_layer(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _fsconfig(fs_fd: int, command: int, key: bytes | None, value: bytes | None) -> None:
    _check(_syscall(SYS_FSCONFIG, fs_fd, command, key, value, 0),
           f"fsconfig({(key or b'create').decode()})")


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise LayerError(f"cannot open the lower layers on their own: {what}: "
                         f"{os.strerror(code)}")
    return result


def lower_stat(walker: DirectoryWalker, parts: tuple[str, ...]) -> os.stat_result | None:
    """The lower layers' node at `parts`, or None when they have none there."""
    if not parts:
        return os.fstat(walker.fd_at(0))
    try:
        parent_fd = walker.open(parts[:-1])
    except LayerError:  # a non-directory on the way: nothing below it
        return None
    return None if parent_fd is None else lstat_at(parent_fd, parts[-1])


class TreeCopier:
    """Copies nodes (whole subtrees) from the lower view into the rootfs, with their owner,
    mode, xattrs and times; hard links among the copied nodes stay hard links."""

    def __init__(self) -> None:
        self._first_links: dict[tuple[int, int], tuple[int, str]] = {}

    def copy(self, source_parent_fd: int, target_parent_fd: int, name: str) -> int:
        """Copy `name` from source to target (where it must not exist); the bytes copied."""
        try:
            return self._copy(source_parent_fd, target_parent_fd, name)
        finally:
            for parent_fd, _ in self._first_links.values():
                os.close(parent_fd)
            self._first_links.clear()

    def _copy(self, source_parent_fd: int, target_parent_fd: int, name: str) -> int:
        node_stat = os.stat(name, dir_fd=source_parent_fd, follow_symlinks=False)
        mode = node_stat.st_mode
        if stat.S_ISDIR(mode):
            return self._copy_directory(source_parent_fd, target_parent_fd, name)
        key = (node_stat.st_dev, node_stat.st_ino)
        if node_stat.st_nlink > 1 and key in self._first_links:
            link_parent_fd, link_name = self._first_links[key]
            os.link(link_name, name, src_dir_fd=link_parent_fd, dst_dir_fd=target_parent_fd,
                    follow_symlinks=False)
            return 0
        copied = 0
        if stat.S_ISREG(mode):
            copied = self._copy_file(source_parent_fd, target_parent_fd, name)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=source_parent_fd), name, dir_fd=target_parent_fd)
            set_special_metadata(target_parent_fd, name,
                                 node_metadata(node_path(source_parent_fd, name), node_stat), name,
                                 symlink=True)
        elif stat.S_ISSOCK(mode):
            return 0  # a socket in an image layer is meaningless without its listener
        else:
            os.mknod(name, stat.S_IFMT(mode) | PRIVATE_MODE, node_stat.st_rdev,
                     dir_fd=target_parent_fd)
            set_special_metadata(target_parent_fd, name,
                                 node_metadata(node_path(source_parent_fd, name), node_stat), name,
                                 symlink=False)
        if node_stat.st_nlink > 1:
            self._first_links[key] = (os.dup(target_parent_fd), name)
        return copied

    def _copy_file(self, source_parent_fd: int, target_parent_fd: int, name: str) -> int:
        source_fd = os.open(name, FILE_READ_FLAGS, dir_fd=source_parent_fd)
        try:
            source_stat = os.fstat(source_fd)
            target_fd = os.open(name, NEW_FILE_FLAGS, PRIVATE_MODE, dir_fd=target_parent_fd)
            try:
                copy_range(source_fd, 0, target_fd, source_stat.st_size)
                set_fd_metadata(target_fd, node_metadata(source_fd, source_stat), name)
            finally:
                os.close(target_fd)
        finally:
            os.close(source_fd)
        return source_stat.st_size

    def _copy_directory(self, source_parent_fd: int, target_parent_fd: int, name: str) -> int:
        source_fd = os.open(name, DIR_OPEN_FLAGS, dir_fd=source_parent_fd)
        try:
            os.mkdir(name, PRIVATE_DIR_MODE, dir_fd=target_parent_fd)
            target_fd = os.open(name, DIR_OPEN_FLAGS, dir_fd=target_parent_fd)
            try:
                copied = sum(self._copy(source_fd, target_fd, child)
                             for child in sorted(os.listdir(source_fd)))
                set_fd_metadata(target_fd, node_metadata(source_fd, os.fstat(source_fd)), name)
            finally:
                os.close(target_fd)
        finally:
            os.close(source_fd)
        return copied
