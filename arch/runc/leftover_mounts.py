"""Mounts that runc and CRIU leave when they are stopped midway, and the removal of directories
that may hold them.

A restore that is cut off or killed leaves what CRIU and runc mounted for it: runc bind-mounts
the rootfs at `<runc state dir>/<id>/criu-root`, CRIU mounts its cgroup yard (a tmpfs at
`.criu.cgyard.XXXXXX` in its work directory, with one cgroup mount per hierarchy under it) and
unmounts both only when it ends on its own. Those mounts are in the host's mount namespace.
`shutil.rmtree` of such a directory fails on them (EBUSY, EPERM), or worse, descends into them:
rmdir in a mounted cgroup hierarchy removes the host's empty cgroups. So every removal of a
directory runc or CRIU worked in detaches the mounts below it first and never crosses into one.

Imported on arch-runc's create path: module-level imports stay cheap.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

MNT_DETACH = 2
CGROUP_YARD_PREFIX = ".criu.cgyard."  # CRIU's mkdtemp(".criu.cgyard.XXXXXX"), criu/cgroup.c
MOUNTINFO = "/proc/self/mountinfo"

logger = logging.getLogger("arch")


class MountsLeft(OSError):
    """Mounts below a directory could not be detached; the directory was not removed."""


def mounts_under(directory: str) -> list[str]:
    """Mount points at or below `directory`, deepest first (the order to detach them)."""
    prefix = os.path.normpath(directory)
    found = []
    with open(MOUNTINFO, encoding="utf-8", errors="replace") as mountinfo:
        for line in mountinfo:
            point = _unescape(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=lambda point: point.count("/"), reverse=True)


def _unescape(field: str) -> str:
    for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, char)
    return field


def detach_mount(mount_point: str) -> None:
    """umount2(MNT_DETACH): the mount goes at once, its users keep what they hold."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(mount_point), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), mount_point)


def unmount_under(directory: str) -> list[str]:
    """Detach every mount at or below `directory` (call once no process works there any more).
    Returns the mount points detached; MountsLeft when any stays mounted."""
    detached = _detach_matching(directory, lambda mount_point: True)
    if detached:
        logger.info("unmounted what runc/CRIU left under %s: %s", directory, " ".join(detached))
    return detached


def unmount_cgroup_yards(directory: str) -> list[str]:
    """Detach CRIU's cgroup yards (`.criu.cgyard.*` and what is mounted in them) directly in
    `directory`, a work directory ARCH does not own (one a CRIU configuration file names):
    nothing else mounted there is touched. MountsLeft when one stays mounted."""
    prefix = os.path.join(os.path.normpath(directory), CGROUP_YARD_PREFIX)
    detached = _detach_matching(directory, lambda mount_point: mount_point.startswith(prefix))
    if detached:
        logger.info("unmounted CRIU's cgroup yard under %s: %s", directory, " ".join(detached))
    return detached


def _detach_matching(directory: str, wanted: Callable[[str], bool]) -> list[str]:
    """Detach the mounts at or below `directory` that `wanted` picks, deepest first; those
    detached. MountsLeft when mountinfo cannot be read or a picked mount stays."""
    detached = []
    try:
        candidates = [point for point in mounts_under(directory) if wanted(point)]
        for mount_point in candidates:
            try:
                detach_mount(mount_point)
            except OSError as error:
                if mount_point in mounts_under(directory):  # not only gone with its parent
                    raise MountsLeft(error.errno, f"cannot unmount {mount_point}: "
                                     f"{error.strerror}") from error  # fmt: skip
                continue
            detached.append(mount_point)
    except MountsLeft:
        raise
    except OSError as error:
        raise MountsLeft(error.errno, f"cannot read {MOUNTINFO}: {error.strerror}") from error
    return detached


def remove_tree(path: str) -> list[str]:
    """Remove a directory runc or CRIU worked in: detach the mounts below it, then delete it
    without crossing into any filesystem but its own. Returns the mount points detached;
    MountsLeft (the tree stays) when one cannot be."""
    if not os.path.isabs(path) or not os.path.lexists(path):
        return []
    detached = unmount_under(path)
    _remove_on_one_filesystem(path)
    return detached


def _remove_on_one_filesystem(path: str) -> None:
    """rmtree that never enters a directory on another device than `path`'s (a mount that
    appeared meanwhile); what cannot be removed stays, logged at debug level."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        _remove_entry(os.unlink, path)
        return
    _empty_directory(path, top.st_dev)
    _remove_entry(os.rmdir, path)


def _empty_directory(directory: str, device: int) -> None:
    try:
        entries = list(os.scandir(directory))
    except OSError as error:
        logger.debug("cannot list %s: %s", directory, error)
        return
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            _remove_entry(os.unlink, entry.path)
        elif info.st_dev == device:
            _empty_directory(entry.path, device)
            _remove_entry(os.rmdir, entry.path)


def _remove_entry(remove: Callable[[str], None], path: str) -> None:
    try:
        remove(path)
    except OSError as error:
        logger.debug("cannot remove %s: %s", path, error)
