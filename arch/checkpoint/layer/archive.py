"""The untrusted OCI layer archive, read before anything is applied: its size and sha256 against
the image's metadata (one streaming read), and every member header parsed and validated: names
(relative, no `..`, no NUL, bounded), types (file, dir, symlink, hard link, FIFO, devices),
whiteout names, hard-link targets (an earlier member of the same archive), xattr names, and that
no member lies below a symlink or file created by the archive itself; escaped whiteout-like
names (common.py) are unescaped, so such a member is a file, never a deletion. Bounds
(ArchiveLimits) keep a hostile archive from exhausting memory or time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from arch.checkpoint.layer.common import (
    COPY_CHUNK_SIZE,
    NANOSECONDS,
    OPAQUE_MARKER,
    PAX_ESCAPED,
    PAX_ESCAPED_VALUE,
    PAX_MTIME,
    PAX_XATTR_PREFIX,
    WHITEOUT_DEVICE,
    WHITEOUT_PREFIX,
    LayerError,
    display_name,
    is_overlay_private_xattr,
    parse_pax_time,
    unescape_component,
)
from arch.checkpoint.layer.members import DELETIONS, Kind, Member

if TYPE_CHECKING:

    pass

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

# verification ---------------------------------------------------------------------------

def file_identity(fd: int) -> tuple[int, ...]:
    file_stat = os.fstat(fd)
    return (file_stat.st_dev, file_stat.st_ino, file_stat.st_size, file_stat.st_mtime_ns,
            file_stat.st_ctime_ns)


def check_file(fd: int, tar_path: str, expected_size: int) -> None:
    file_stat = os.fstat(fd)
    if not stat.S_ISREG(file_stat.st_mode):
        raise LayerError(f"{tar_path}: not a regular file")
    if file_stat.st_size != expected_size:
        raise LayerError(f"{tar_path}: size {file_stat.st_size} != expected {expected_size}")


def verify_digest(fd: int, tar_path: str, expected_sha256: str, expected_size: int
                   ) -> tuple[int, ...]:
    """Hash the whole file with preadv (the shared file offset is left alone); its identity."""
    check_file(fd, tar_path, expected_size)
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
    return file_identity(fd)


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
