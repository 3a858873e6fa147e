"""One validated member of a layer archive: its kind, the path it acts on, and what it sets."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from arch.checkpoint.layer.common import NodeMetadata


class Kind(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hard link"
    FIFO = "fifo"
    CHAR_DEVICE = "character device"
    BLOCK_DEVICE = "block device"
    WHITEOUT = "whiteout"
    OPAQUE = "opaque marker"


DELETIONS = (Kind.WHITEOUT, Kind.OPAQUE)


@dataclass(frozen=True)
class Member:
    """One validated archive member, with everything needed to apply it."""

    name: str  # as in the archive, for messages
    kind: Kind
    parts: tuple[str, ...]  # the path it creates; for deletions, the path it deletes
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, bytes]
    size: int = 0
    data_offset: int = 0
    symlink_target: str = ""
    link_parts: tuple[str, ...] = ()
    rdev: int = 0

    @property
    def metadata(self) -> NodeMetadata:
        return NodeMetadata(self.mode, self.uid, self.gid, self.mtime_ns, self.mtime_ns,
                            self.xattrs)
