"""A kept writable layer brought back to what the image recorded, and the space a rollback needs.

When the same container is restarted in place (`ctr task start` again, a Docker restart policy,
ECS restarting a container) its overlay's upper layer still holds every change made since the
checkpoint. Before the layer archive is applied, each change of that upper layer which the
archive does not decide by itself is undone through the merged view (never in the upperdir
behind the mounted overlay's back: overlay caches what it looked up, so direct changes would
show stale files), so that the archive then produces exactly "lower layers + archive":
- a path the archive deletes, replaces by a non-directory, or makes opaque (or anything below
  those) is left to the archive;
- a directory of both the upper and the lower layers (not opaque, not redirected) gets the lower
  layers' owner, mode, xattrs and times, and its upper children are looked at one by one;
- anything else (a file or symlink the upper layer changed or added, a whiteout, an opaque or
  redirected directory, a directory the lower layers do not have) is removed and the lower
  layers' node, if any, is copied back in its place.
Every step goes through the apply's journal, so a rollback returns to the kept layer exactly.
A fresh overlay (empty upper layer, the common case) is recognised by one directory read and
skips all of this.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from arch.checkpoint.layer.common import (
    DIR_OPEN_FLAGS,
    INCOMPLETE_NODE_XATTRS,
    OPAQUE,
    DirectoryWalker,
    LayerError,
    OverlayMarkers,
    lstat_at,
    node_metadata,
    read_xattrs,
)
from arch.checkpoint.layer.journal import Journal, replace_xattrs
from arch.checkpoint.layer.lower import TreeCopier, lower_stat
from arch.checkpoint.layer.members import Kind, Member

SPACE_ROUNDING = 4096
SPACE_MARGIN = 1 << 20  # directories, symlinks and metadata written back besides file data


class Step(enum.Enum):
    REVERT = "revert"  # remove the merged node, copy the lower layers' one back
    DIRECTORY = "directory"  # a directory of both layers: lower metadata, children one by one


@dataclass(frozen=True)
class ResetStep:
    step: Step
    parts: tuple[str, ...]


class Coverage:
    """The paths whose whole state an archive decides by itself."""

    def __init__(self, members: Iterable[Member]) -> None:
        # deletions, opaque markers and non-directories: a directory member alone leaves the
        # lower layers' children of that directory visible
        self._decided = {member.parts for member in members if member.kind != Kind.DIRECTORY}

    def covers(self, parts: tuple[str, ...]) -> bool:
        return any(parts[:depth] in self._decided for depth in range(len(parts) + 1))


def is_empty_directory(dir_fd: int) -> bool:
    with os.scandir(dir_fd) as entries:
        return next(entries, None) is None


def plan_reset(upper_fd: int, lower: DirectoryWalker, markers: OverlayMarkers,
               coverage: Coverage) -> list[ResetStep]:
    """The steps that bring the merged view back to the lower layers wherever the archive does
    not decide; pre-order (a directory before what is inside it)."""
    steps: list[ResetStep] = []
    _plan_directory(upper_fd, (), lower, markers, coverage, steps)
    return steps


def _plan_directory(dir_fd: int, parts: tuple[str, ...], lower: DirectoryWalker,
                    markers: OverlayMarkers, coverage: Coverage, steps: list[ResetStep]) -> None:
    for name in sorted(os.listdir(dir_fd)):
        child = (*parts, name)
        if coverage.covers(child):
            continue
        child_stat = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(child_stat.st_mode):
            child_fd = os.open(name, DIR_OPEN_FLAGS, dir_fd=dir_fd)
            try:
                child_xattrs = read_xattrs(child_fd)
                lower_node = lower_stat(lower, child)
                if (lower_node is not None and stat.S_ISDIR(lower_node.st_mode)
                        and markers.opaque_state(child_xattrs) != OPAQUE
                        and not any(key in child_xattrs for key in INCOMPLETE_NODE_XATTRS)):
                    steps.append(ResetStep(Step.DIRECTORY, child))
                    _plan_directory(child_fd, child, lower, markers, coverage, steps)
                    continue
            finally:
                os.close(child_fd)
        steps.append(ResetStep(Step.REVERT, child))


def run_reset(steps: Sequence[ResetStep], merged: DirectoryWalker, lower: DirectoryWalker,
              journal: Journal) -> None:
    """Carry out plan_reset's steps through the merged view, journaled."""
    for reset_step in steps:
        if reset_step.step == Step.REVERT:
            _revert(reset_step.parts, merged, lower, journal)
        else:
            _directory_metadata(reset_step.parts, merged, lower, journal)
    for reset_step in reversed(steps):  # deepest first: their entries are final now
        if reset_step.step == Step.DIRECTORY:
            lower_node = lower_stat(lower, reset_step.parts)
            dir_fd = _open_merged_directory(merged, reset_step.parts)
            if lower_node is not None:
                os.utime(dir_fd, ns=(lower_node.st_atime_ns, lower_node.st_mtime_ns))


def _revert(parts: tuple[str, ...], merged: DirectoryWalker, lower: DirectoryWalker,
            journal: Journal) -> None:
    parent_fd = _open_merged_directory(merged, parts[:-1])
    name = parts[-1]
    journal.directory_touched(parent_fd, parts[:-1])
    if lstat_at(parent_fd, name) is not None:
        journal.remove(parent_fd, parts)
    if lower_stat(lower, parts) is not None:
        lower_parent_fd = lower.open(parts[:-1])
        assert lower_parent_fd is not None
        journal.created(parts)
        TreeCopier().copy(lower_parent_fd, parent_fd, name)


def _directory_metadata(parts: tuple[str, ...], merged: DirectoryWalker,
                        lower: DirectoryWalker, journal: Journal) -> None:
    dir_fd = _open_merged_directory(merged, parts)
    lower_parent_fd = lower.open(parts[:-1])
    assert lower_parent_fd is not None
    lower_fd = os.open(parts[-1], DIR_OPEN_FLAGS, dir_fd=lower_parent_fd)
    try:
        wanted = node_metadata(lower_fd, os.fstat(lower_fd))
    finally:
        os.close(lower_fd)
    journal.directory_metadata_changing(dir_fd, parts)
    os.fchown(dir_fd, wanted.uid, wanted.gid)
    os.fchmod(dir_fd, stat.S_IMODE(wanted.mode))
    replace_xattrs(dir_fd, wanted.xattrs, "/".join(parts))


def _open_merged_directory(merged: DirectoryWalker, parts: tuple[str, ...]) -> int:
    dir_fd = merged.open(parts)
    if dir_fd is None:
        raise LayerError(f"{'/'.join(parts) or '.'}: directory vanished from the rootfs")
    return dir_fd


# the space a rollback needs -------------------------------------------------------------

def rollback_space_needed(members: Sequence[Member], steps: Sequence[ResetStep],
                          merged: DirectoryWalker) -> int:
    """Bytes a rollback of this application may have to write back: the data of every regular
    file that exists now and that the reset or the archive will remove or replace."""
    reverted = [reset_step.parts for reset_step in steps if reset_step.step == Step.REVERT]
    roots: list[tuple[str, ...]] = list(reverted)
    for member in members:
        if any(member.parts[:len(path)] == path for path in reverted):
            continue  # it acts on the reset's fresh copy of the lower layers, not on data now
        if member.kind == Kind.OPAQUE:
            roots.extend((*member.parts, name) for name in _merged_children(merged, member.parts))
        elif member.kind != Kind.DIRECTORY:
            roots.append(member.parts)
        elif member.parts:
            existing = _merged_stat(merged, member.parts)
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                roots.append(member.parts)
    counter = _DataCounter()
    for parts in roots:
        parent_fd = _existing_directory(merged, parts[:-1])
        if parent_fd is not None:
            counter.add(parent_fd, parts[-1])
    return counter.total


def check_rollback_space(where: str, needed: int) -> None:
    """Refuse up front when the filesystem at `where` cannot take what a rollback writes."""
    if needed == 0:
        return
    fs = os.statvfs(where)
    free = fs.f_bavail * fs.f_frsize
    if free < needed + SPACE_MARGIN:
        raise LayerError(
            f"not enough space for a rollback on the filesystem of {where}: undoing this "
            f"restore may have to write back {_mib(needed)} of files it replaces or deletes, "
            f"{_mib(free)} are free; refusing before changing anything")


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _existing_directory(merged: DirectoryWalker, parts: tuple[str, ...]) -> int | None:
    try:
        return merged.open(parts)
    except LayerError:  # a symlink or file on the way: nothing below it is removed
        return None


def _merged_stat(merged: DirectoryWalker, parts: tuple[str, ...]) -> os.stat_result | None:
    parent_fd = _existing_directory(merged, parts[:-1])
    return None if parent_fd is None else lstat_at(parent_fd, parts[-1])


def _merged_children(merged: DirectoryWalker, parts: tuple[str, ...]) -> list[str]:
    dir_fd = _existing_directory(merged, parts)
    return [] if dir_fd is None else sorted(os.listdir(dir_fd))


class _DataCounter:
    """Sums the data of regular files below some nodes, each inode once."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()
        self.total = 0

    def add(self, parent_fd: int, name: str) -> None:
        node_stat = lstat_at(parent_fd, name)
        if node_stat is None:
            return
        if stat.S_ISDIR(node_stat.st_mode):
            dir_fd = os.open(name, DIR_OPEN_FLAGS, dir_fd=parent_fd)
            try:
                for child in os.listdir(dir_fd):
                    self.add(dir_fd, child)
            finally:
                os.close(dir_fd)
        elif stat.S_ISREG(node_stat.st_mode):
            key = (node_stat.st_dev, node_stat.st_ino)
            if key not in self._seen:
                self._seen.add(key)
                self.total += -(-node_stat.st_size // SPACE_ROUNDING) * SPACE_ROUNDING
