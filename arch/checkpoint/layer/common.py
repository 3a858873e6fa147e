"""Names, errors and small filesystem helpers shared by layer capture, apply and rollback.

Layer archives follow the OCI image-layer conventions: a deleted path `dir/name` is an empty
regular file `dir/.wh.name`; a directory whose lower-layer contents are hidden ("opaque") is
followed by an empty regular file `dir/.wh..wh..opq`. Extended attributes travel as PAX
records `SCHILY.xattr.<name>`; sub-second modification times as the PAX record `mtime`.

Whiteout-like names of real files. A container may hold real files and directories whose
names start with `.wh.` (fuse-overlayfs, buildah and unpacked image layers create them). Such
a member cannot keep its name without being read as a deletion, so its archived path is
escaped, one component at a time: a component that starts with `.wh.` or with `.arch.` is
archived as `.arch.` + the component (`.wh.config` -> `.arch..wh.config`,
`.wh..wh..opq` -> `.arch..wh..wh..opq`); every other component is archived unchanged. A member
whose name (or hard-link target) holds an escaped component carries the PAX record
`ARCH.escaped=1`, and only then are its components unescaped when read. A whiteout of a
whiteout-like name is `.wh.` + the escaped name (`.wh..arch..wh.config` deletes `.wh.config`),
with the record. Tools that do not know the record see plain files with `.arch.` names:
nothing is deleted because of a real file's name, and every other member is standard OCI.
Archives without any record (all images written before this encoding) read as before: an
empty regular `.wh.NAME` is a deletion; a `.wh.` member with data, any other `.wh..wh.` name and
a `.wh.` directory are refused (a real file the old capture could not encode; the image is not
restored and the container starts fresh, with the reason logged).

Paths inside the rootfs are always reached one component at a time through directory file
descriptors opened with O_NOFOLLOW, so no operation ever resolves a symlink inside the tree.
Nodes that cannot be opened (symlinks, FIFOs, devices) are addressed as `/proc/self/fd/<dir>/name`
with the *-at(AT_SYMLINK_NOFOLLOW) family: the magic link resolves to the opened directory
itself and the final component is not followed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    # Creates the missing directory `parts[-1]` in `parent_fd` (and records that it did).
    MissingDirHandler = Callable[[int, tuple[str, ...]], None]

logger = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
ESCAPE_PREFIX = ".arch."
PAX_ESCAPED = "ARCH.escaped"  # "1": the member's name and link target are escaped
PAX_ESCAPED_VALUE = "1"
PAX_XATTR_PREFIX = "SCHILY.xattr."
PAX_MTIME = "mtime"
# Overlayfs keeps its bookkeeping (origin, impure, redirect, opaque, ...) in these namespaces;
# they describe the upperdir, not the container's files, and never travel in a layer.
OVERLAY_PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
TRUSTED_OVERLAY_PREFIX = "trusted.overlay."
USER_OVERLAY_PREFIX = "user.overlay."
# Overlay renders a deleted path in the upperdir as a character device 0:0.
WHITEOUT_DEVICE = 0
OPAQUE = b"y"
HAS_XWHITEOUTS = b"x"  # kernel >= 6.7: "not opaque, but some children are xattr whiteouts"
DEFAULT_OPAQUE_XATTR_NAMES = (TRUSTED_OVERLAY_PREFIX + "opaque",)
# overlay xattrs meaning "part of this node lives in a lower layer"
INCOMPLETE_NODE_XATTRS = tuple(prefix + suffix
                               for prefix in OVERLAY_PRIVATE_XATTR_PREFIXES
                               for suffix in ("redirect", "metacopy"))

NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
PRIVATE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
DIR_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
COPY_CHUNK_SIZE = 1 << 20
NANOSECONDS = 1_000_000_000

# errnos a filesystem answers when it does not support an extended attribute (or its
# namespace, e.g. user.* on a symlink or security.selinux without SELinux)
UNSUPPORTED_XATTR_ERRNOS = frozenset(
    {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL, errno.ERANGE}
)

_PAX_TIME = re.compile(r"(-?)(\d{1,20})(?:\.(\d{1,9})\d*)?")


class LayerError(Exception):
    """A layer could not be captured or applied; the message names the member and the reason."""


class UnsafePathError(LayerError):
    """Reaching a path would mean going through a symlink or a non-directory."""


def needs_escape(component: str) -> bool:
    return component.startswith((WHITEOUT_PREFIX, ESCAPE_PREFIX))


def escape_component(component: str) -> str:
    return ESCAPE_PREFIX + component if needs_escape(component) else component


def unescape_component(component: str) -> str:
    """The real name of one component of an escaped member; refuses non-canonical forms."""
    if component.startswith(ESCAPE_PREFIX):
        real = component[len(ESCAPE_PREFIX):]
        if not needs_escape(real):
            raise LayerError(f"{component!r} is not an escaped name")
        return real
    if needs_escape(component):
        raise LayerError(f"unescaped whiteout-like component {component!r} in an escaped member")
    return component


def escape_path(parts: Sequence[str]) -> tuple[str, bool]:
    """The archive name of the real path `parts` ("." for the root), and whether it changed."""
    escaped = [escape_component(part) for part in parts]
    return ("/".join(escaped) if escaped else "."), escaped != list(parts)


def is_overlay_private_xattr(name: str) -> bool:
    return name.startswith(OVERLAY_PRIVATE_XATTR_PREFIXES)


def format_pax_time(nanoseconds: int) -> str:
    """An exact decimal PAX time for a nanosecond timestamp (negative ones included)."""
    sign = "-" if nanoseconds < 0 else ""
    seconds, fraction = divmod(abs(nanoseconds), NANOSECONDS)
    return f"{sign}{seconds}.{fraction:09d}"


def parse_pax_time(text: str) -> int:
    """Nanoseconds from a PAX time record; raises ValueError on anything else."""
    match = _PAX_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid PAX time {text!r}")
    sign, seconds, fraction = match.groups()
    nanoseconds = int(seconds) * NANOSECONDS + int((fraction or "").ljust(9, "0"))
    return -nanoseconds if sign else nanoseconds


def node_path(dir_fd: int, name: str) -> str:
    """A path naming `name` inside the directory open as `dir_fd`, for *-at-less syscalls."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def read_xattrs(target: int | str) -> dict[str, bytes]:
    """All extended attributes of an open fd, or of a path without following a final symlink."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    values: dict[str, bytes] = {}
    for name in sorted(names):
        try:
            values[name] = os.getxattr(target, name, follow_symlinks=follow)
        except OSError as error:
            if error.errno != errno.ENODATA:  # removed between list and get
                raise
    return values


def write_xattrs(target: int | str, xattrs: dict[str, bytes], *, what: str) -> None:
    """Set extended attributes; ones the filesystem refuses as unsupported are logged, skipped."""
    follow = isinstance(target, int)
    for name, value in xattrs.items():
        try:
            os.setxattr(target, name, value, follow_symlinks=follow)
        except OSError as error:
            if error.errno not in UNSUPPORTED_XATTR_ERRNOS:
                raise
            logger.warning("%s: extended attribute %s not set: %s", what, name, error.strerror)


def remove_xattrs(target: int | str, names: Sequence[str], *, what: str) -> None:
    follow = isinstance(target, int)
    for name in names:
        try:
            os.removexattr(target, name, follow_symlinks=follow)
        except OSError as error:
            if error.errno not in UNSUPPORTED_XATTR_ERRNOS and error.errno != errno.ENODATA:
                raise
            logger.warning("%s: extended attribute %s not removed: %s", what, name,
                           error.strerror)


def copy_range(source_fd: int, source_offset: int, target_fd: int, count: int) -> None:
    """Copy `count` bytes from `source_fd` at `source_offset` to `target_fd`'s position."""
    remaining = count
    offset = source_offset
    while remaining > 0:
        try:
            sent = os.sendfile(target_fd, source_fd, offset, min(remaining, 1 << 30))
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            _copy_range_by_reads(source_fd, offset, target_fd, remaining)
            return
        if sent == 0:
            raise LayerError(f"source ended {remaining} bytes early")
        offset += sent
        remaining -= sent


def _copy_range_by_reads(source_fd: int, offset: int, target_fd: int, count: int) -> None:
    remaining = count
    while remaining > 0:
        chunk = os.pread(source_fd, min(remaining, COPY_CHUNK_SIZE), offset)
        if not chunk:
            raise LayerError(f"source ended {remaining} bytes early")
        write_all(target_fd, chunk)
        offset += len(chunk)
        remaining -= len(chunk)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def is_unsafe_component_error(error: OSError) -> bool:
    """True when an O_NOFOLLOW|O_DIRECTORY open failed because the node is a symlink/non-dir."""
    return error.errno in (errno.ELOOP, errno.ENOTDIR)


class OverlayMarkers:
    """How overlay marks opaque directories and deleted paths inside an upper layer.

    `opaque_xattr_names`: `trusted.overlay.opaque`, or `user.overlay.opaque` for a mount with
    `userxattr` (OverlayMount.opaque_xattr_names)."""

    def __init__(self, opaque_xattr_names: Sequence[str] = DEFAULT_OPAQUE_XATTR_NAMES) -> None:
        self._opaque_xattr_names = tuple(opaque_xattr_names)
        self._whiteout_xattr_names = tuple(
            name[: -len("opaque")] + "whiteout" for name in self._opaque_xattr_names)

    def opaque_state(self, xattrs: dict[str, bytes]) -> bytes | None:
        """OPAQUE, HAS_XWHITEOUTS or None, from a directory's xattrs."""
        for name in self._opaque_xattr_names:
            if name in xattrs:
                return xattrs[name]
        return None

    def is_whiteout(self, dir_fd: int, name: str, child_stat: os.stat_result,
                    opaque_state: bytes | None) -> bool:
        """Whether `name` in the upper directory `dir_fd` (whose opaque_state is given) is
        overlay's mark of a deleted path: a character device 0:0, or an empty file carrying
        `<prefix>whiteout` in a directory marked `<prefix>opaque=x`."""
        if stat.S_ISCHR(child_stat.st_mode):
            return child_stat.st_rdev == WHITEOUT_DEVICE
        if opaque_state != HAS_XWHITEOUTS or not stat.S_ISREG(child_stat.st_mode):
            return False
        if child_stat.st_size != 0:
            return False
        xattr_names = os.listxattr(node_path(dir_fd, name), follow_symlinks=False)
        return any(marker in xattr_names for marker in self._whiteout_xattr_names)


def lstat_at(parent_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class DirectoryWalker:
    """Opens directories under a root fd one component at a time, never following a symlink.

    Keeps the chain of the most recently opened path open, so consecutive members of a
    depth-first archive reuse their parents' descriptors instead of re-walking from the root.
    """

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._chain: list[tuple[str, int]] = []

    def open(self, parts: Sequence[str], *, create_missing: MissingDirHandler | None = None
             ) -> int | None:
        """The fd of directory `parts` (relative to the root); None when a component is missing
        and `create_missing` is None. Raises UnsafePathError at a symlink or non-directory."""
        common = 0
        while (common < len(self._chain) and common < len(parts)
               and self._chain[common][0] == parts[common]):
            common += 1
        self._close_from(common)
        for index in range(common, len(parts)):
            fd = self._open_component(self.fd_at(index), parts, index, create_missing)
            if fd is None:
                return None
            self._chain.append((parts[index], fd))
        return self.fd_at(len(parts))

    def fd_at(self, depth: int) -> int:
        return self._root_fd if depth == 0 else self._chain[depth - 1][1]

    def close(self) -> None:
        self._close_from(0)

    def _open_component(self, parent_fd: int, parts: Sequence[str], index: int,
                        create_missing: MissingDirHandler | None) -> int | None:
        name = parts[index]
        try:
            return os.open(name, DIR_OPEN_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if create_missing is None:
                return None
        except OSError as error:
            if is_unsafe_component_error(error):
                raise UnsafePathError(
                    f"{'/'.join(parts[:index + 1])!r} is a symlink or not a directory; "
                    "refusing to go through it") from error
            raise
        create_missing(parent_fd, tuple(parts[:index + 1]))
        return os.open(name, DIR_OPEN_FLAGS, dir_fd=parent_fd)

    def _close_from(self, depth: int) -> None:
        for _name, fd in self._chain[depth:]:
            os.close(fd)
        del self._chain[depth:]


def display_name(parts: Sequence[str]) -> str:
    return "/".join(parts) if parts else "."


@dataclass(frozen=True)
class NodeMetadata:
    mode: int  # st_mode, file type included
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    xattrs: dict[str, bytes]


def node_metadata(target: int | str, node_stat: os.stat_result) -> NodeMetadata:
    """The metadata of a node: `target` is its open fd, or a path not followed at its end."""
    return NodeMetadata(node_stat.st_mode, node_stat.st_uid, node_stat.st_gid,
                        node_stat.st_atime_ns, node_stat.st_mtime_ns, read_xattrs(target))


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
