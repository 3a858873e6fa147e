"""A FUSE view of a shared directory that behaves like an NFS/EFS client mount, for tests.

Each "host" mounts its own instance over the same backing directory, so that:
- RENAME_EXCHANGE fails with EINVAL (libfuse 2's protocol has no rename flags, as NFSv4 has
  none): ARCH must take its rename-aside path;
- flock is the mount's own (the kernel keeps FUSE flocks per mount): not shared between hosts;
- unlinking or renaming over an open file leaves a `.fuse_hidden*` file until it is closed (the
  high-level libfuse's "hide", NFS's silly rename `.nfsXXXX`);
- attributes and names are cached for ATTR_TIMEOUT seconds (NFS's actimeo).

Run: python -m harness.nfs_like BACKING MOUNTPOINT (foreground; unmount with fusermount -u).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

from fuse import FUSE, FuseOSError, Operations  # fusepy

ATTR_TIMEOUT = 1.0


class NfsLike(Operations):  # type: ignore[misc]
    """Path operations passed to the backing directory."""

    def __init__(self, backing: str) -> None:
        self.backing = os.path.realpath(backing)

    def _path(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def __call__(self, op: str, *args: Any) -> Any:
        try:
            return super().__call__(op, *args)
        except OSError as error:
            raise FuseOSError(error.errno or errno.EIO) from error

    def access(self, path: str, mode: int) -> None:
        if not os.access(self._path(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._path(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.lchown(self._path(path), uid, gid)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def flush(self, path: str, fh: int) -> None:
        return None

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        os.fsync(fh)

    def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
        return None

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._path(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
                "st_uid", "st_ino")  # fmt: skip
        return {key: getattr(st, key) for key in keys}

    def link(self, target: str, source: str) -> None:
        os.link(self._path(source), self._path(target))

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._path(path), mode)

    def mknod(self, path: str, mode: int, dev: int) -> None:
        os.mknod(self._path(path), mode, dev)

    def open(self, path: str, flags: int) -> int:
        return os.open(self._path(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._path(path))

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def rename(self, old: str, new: str) -> None:
        os.rename(self._path(old), self._path(new))

    def rmdir(self, path: str) -> None:
        os.rmdir(self._path(path))

    def statfs(self, path: str) -> dict[str, Any]:
        stv = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")  # fmt: skip
        return {key: getattr(stv, key) for key in keys}

    def symlink(self, target: str, source: str) -> None:
        os.symlink(source, self._path(target))

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._path(path), length)

    def unlink(self, path: str) -> None:
        os.unlink(self._path(path))

    def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
        os.utime(self._path(path), times, follow_symlinks=False)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)


def main(argv: list[str]) -> None:
    backing, mountpoint = argv
    FUSE(NfsLike(backing), mountpoint, foreground=True, nothreads=False, allow_other=True,
         attr_timeout=ATTR_TIMEOUT, entry_timeout=ATTR_TIMEOUT, use_ino=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
