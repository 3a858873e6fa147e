"""CRIU's logs where runc's caller looks for them: its `--work-path`.

runc has CRIU write its log (and stats) into the work path; containerd reads `<work>/dump.log`
after a failed checkpoint and copies it to the bundle's `criu-dump.log`, the file its error
names (containerd's pkg/process/init.go, `checkpoint`), and runc's own tests read the work path
too. ARCH's dump writes into its staging directory instead, so it copies the log there: under
the name CRIU gave it (dump.log unless a CRIU configuration renames it), as runc leaves it.
"""

from __future__ import annotations

import os

from arch.checkpoint.criu_log import open_regular_file
from arch.checkpoint.image.metadata import CRIU_DUMP_LOG, ROOTFS_TAR

DIR_MODE = 0o700
FILE_MODE = 0o600
# A log is kept whole up to this size (CRIU writes a few MiB at most at its default level).
LOG_COPY_MAX_BYTES = 64 << 20
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
# What an image may call its copy of CRIU's log (metadata's file name rules, no dot first).
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:+-")
_RESERVED = frozenset({"metadata.json", "metadata.sig", ROOTFS_TAR, "descriptors.json",
                       "stats-dump", "stats-restore"})  # fmt: skip


def copy_log(log_path: str, work_path: str, name: str | None = None) -> str:
    """Copy CRIU's log at `log_path` into the directory `work_path` (made 0700 if missing, as
    runc makes it) under `name`, by default the log's own; the copy's path. OSError when either
    fails."""
    os.makedirs(work_path, DIR_MODE, exist_ok=True)
    target = os.path.join(work_path, name or os.path.basename(log_path))
    source_fd = open_regular_file(log_path, follow_symlinks=False)
    try:
        target_fd = os.open(target, _WRITE_FLAGS, FILE_MODE)
        with open(source_fd, "rb", closefd=False) as source, open(target_fd, "wb") as copy:
            copy.write(source.read(LOG_COPY_MAX_BYTES))
    finally:
        os.close(source_fd)
    return target


def image_log_name(log_name: str) -> str:
    """The name an image keeps CRIU's dump log under: the name CRIU wrote (its base name) when
    it is a usable image file name that no CRIU image or ARCH file can have, else dump.log."""
    name = os.path.basename(log_name)
    usable = (
        1 <= len(name) <= 255
        and not name.startswith(".")
        and _NAME_CHARS.issuperset(name)
        and not name.endswith(".img")
        and name not in _RESERVED
    )
    return name if usable else CRIU_DUMP_LOG
