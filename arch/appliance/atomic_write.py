"""Atomic file replacement and the one-time backup of files the installer edits.

Shared by the containerd config.toml and Docker daemon.json editors. A file is replaced by
writing a temporary file in the same directory, fsyncing it and renaming it over the target,
so a reader (or a crash) sees either the old or the new content, never a mix. The new file
keeps the mode and owner of the file it replaces.

Backups: before the first change ARCH ever makes to a file, its original bytes are saved at a
path chosen by the caller; a file that did not exist is recorded by a marker `BACKUP.absent`.
An existing backup is never overwritten: it holds the pre-ARCH original.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FILE_MODE = 0o644
BACKUP_DIR_MODE = 0o700
ABSENT_MARKER_SUFFIX = ".absent"
ABSENT_MARKER_TEXT = b"The edited file did not exist before ARCH changed it; restore deletes it.\n"


class FileEditError(Exception):
    """An edit that was refused or could not be made; the message is meant for the operator."""


@dataclass(frozen=True)
class EditResult:
    """What an editor did, in the shape Ansible's `changed_when` reads."""

    changed: bool
    msg: str

    def to_json(self) -> str:
        return json.dumps({"changed": self.changed, "msg": self.msg})


def read_optional(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def atomic_write(path: Path, data: bytes, *, like: Path | None = None) -> None:
    """Replace `path` (following a symlink to its target) with `data`, atomically.

    Mode and owner are taken from `like` when given, else from the file being replaced,
    else the mode is 0644 and the owner the caller.
    """
    target = Path(os.path.realpath(path))
    reference = _existing_stat(like if like is not None else target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            _copy_mode_and_owner(tmp.fileno(), reference)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        _remove_if_present(Path(tmp_name))
        raise
    _fsync_directory(target.parent)


def remove_file(path: Path) -> bool:
    """Delete `path` durably; False when it was already absent."""
    if not _remove_if_present(path):
        return False
    _fsync_directory(path.parent)
    return True


def absent_marker(backup: Path) -> Path:
    """Where the fact "the file did not exist before ARCH" is recorded."""
    return backup.with_name(backup.name + ABSENT_MARKER_SUFFIX)


def has_backup(backup: Path) -> bool:
    return backup.exists() or absent_marker(backup).exists()


def save_backup_once(config: Path, original: bytes | None, backup: Path) -> bool:
    """Record the pre-ARCH state of `config` unless a backup already exists.

    `original` is the file's current content (None: it does not exist). Returns True when a
    backup was written now.
    """
    if has_backup(backup):
        return False
    backup.parent.mkdir(mode=BACKUP_DIR_MODE, parents=True, exist_ok=True)
    if original is None:
        atomic_write(absent_marker(backup), ABSENT_MARKER_TEXT)
    else:
        atomic_write(backup, original, like=config)
    return True


def restore_backup(config: Path, backup: Path) -> EditResult:
    """Put the pre-ARCH state of `config` back and remove the backup.

    Without any backup there is nothing to do (changed is False).
    """
    marker = absent_marker(backup)
    backup_exists = backup.exists()
    marker_exists = marker.exists()
    if backup_exists and marker_exists:
        raise FileEditError(
            f"both {backup} and {marker} exist: cannot tell which is the original state of "
            f"{config}; remove the wrong one by hand"
        )
    if backup_exists:
        original = backup.read_bytes()
        if read_optional(config) != original:
            atomic_write(config, original, like=backup)
        remove_file(backup)
        return EditResult(True, f"restored {config} from {backup}")
    if marker_exists:
        removed = remove_file(config)
        remove_file(marker)
        action = "removed" if removed else "kept absent"
        return EditResult(True, f"{action} {config}: it did not exist before ARCH ({marker})")
    return EditResult(False, f"no backup at {backup}: nothing to restore for {config}")


def _existing_stat(path: Path) -> os.stat_result | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise FileEditError(f"{path} exists but is not a regular file")
    return info


def _copy_mode_and_owner(fd: int, reference: os.stat_result | None) -> None:
    if reference is None:
        os.fchmod(fd, DEFAULT_FILE_MODE)
        return
    current = os.fstat(fd)
    if (current.st_uid, current.st_gid) != (reference.st_uid, reference.st_gid):
        os.fchown(fd, reference.st_uid, reference.st_gid)
    # After fchown, which may clear set-id bits.
    os.fchmod(fd, stat.S_IMODE(reference.st_mode))


def _remove_if_present(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
