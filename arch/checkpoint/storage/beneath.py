"""Paths resolved beneath a directory descriptor at the moment of use, following no symlink.

ARCH acts as root on directories that containers and other hosts can write (a team directory on
shared storage, bind-mounted into a container, that holds its checkpoint images). A path checked
once and used later can meanwhile have a component replaced by a symlink to anywhere on the
host. So every directory creation, write, rename and removal under an image location starts
from a descriptor of the trusted root that holds it and resolves the rest here:

- `openat2(2)` with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS (Linux >= 5.6) in one call;
- where that system call is missing, an equivalent walk: one `openat` per component with
  O_NOFOLLOW | O_DIRECTORY. Relative paths never hold `..` or `.` (refused before use), so the
  walk cannot leave the root either.

A symlink anywhere below the root raises NotBeneath (an OSError): nothing is opened or created
past it. The root itself comes from the host's configuration and is opened normally.

Whoever runs a child process on such a directory (runc, CRIU) hands it `fd_path(fd)`, the
`/proc/<pid>/fd/<n>` link of the descriptor: it names the directory that was resolved, whatever
happens to the path afterwards.

No policy here: which root holds a location is the caller's business.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
# openat2 has the same number on every Linux architecture (the unified syscall table, 5.6+).
SYS_OPENAT2 = 437
# openat2 with RESOLVE_BENEATH fails with EAGAIN when a rename raced the lookup.
OPENAT2_ATTEMPTS = 8
# Directory descriptors remove_tree_at holds at most (a deeper tree is flattened as it goes).
REMOVAL_OPEN_DIRS = 64

_openat2_function: Callable[[int, bytes, int, int, int], int] | None = None
_openat2_missing = False


class NotBeneath(OSError):
    """A path does not resolve beneath its root without following a symlink (or leaving it)."""

    def __init__(self, relative: str, detail: str) -> None:
        super().__init__(errno.ELOOP, f"{relative!r} does not resolve beneath its root: {detail}")
        self.relative = relative


def components(relative: str) -> list[str]:
    """The components of a relative path; NotBeneath for an absolute path, `.`, `..` or `//`."""
    if relative == "":
        return []
    parts = relative.split("/")
    if "\0" in relative or any(part in ("", ".", "..") for part in parts):
        raise NotBeneath(relative, "not a plain relative path")
    return parts


def open_root(path: str) -> int:
    """A descriptor of a trusted root directory (from the host configuration)."""
    return os.open(path, DIRECTORY_FLAGS)


@contextlib.contextmanager
def opened_root(path: str) -> Iterator[int]:
    """open_root as a context manager."""
    fd = open_root(path)
    try:
        yield fd
    finally:
        os.close(fd)


def open_beneath(root_fd: int, relative: str, flags: int = DIRECTORY_FLAGS, mode: int = 0) -> int:
    """Open `relative` beneath `root_fd`, following no symlink on the way or at the end.

    FileNotFoundError when a component is missing; NotBeneath when one is a symlink.
    """
    parts = components(relative)
    if not parts:
        return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=root_fd)
    openat2 = _openat2()
    if openat2 is not None:
        path = os.fsencode("/".join(parts))
        for _ in range(OPENAT2_ATTEMPTS):
            try:
                return openat2(root_fd, path, flags | os.O_CLOEXEC, mode,
                               RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)  # fmt: skip
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.EXDEV):
                    raise NotBeneath(relative, "a component is a symlink") from error
                if error.errno != errno.EAGAIN:
                    raise
        raise OSError(errno.EAGAIN, f"{relative!r}: kept being renamed during the lookup")
    return _walk(root_fd, parts, relative, flags, mode)


def make_dirs_beneath(root_fd: int, relative: str, mode: int) -> int:
    """Open the directory `relative` beneath `root_fd`, creating missing components (`mode`).

    Walks one component at a time (mkdirat, then openat with O_NOFOLLOW), so that nothing is
    created past a symlink. Returns a descriptor of the last directory.
    """
    parts = components(relative)
    fd = os.open(".", DIRECTORY_FLAGS, dir_fd=root_fd)
    try:
        for index, part in enumerate(parts):
            with contextlib.suppress(FileExistsError):  # a symlink too: refused just below
                os.mkdir(part, mode, dir_fd=fd)
            next_fd = _open_component(fd, part, "/".join(parts[: index + 1]), DIRECTORY_FLAGS, 0)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_tree_at(parent_fd: int, name: str) -> None:
    """Remove `name` in the directory (a file, a symlink, or a directory with everything in
    it), never following a symlink; nothing when it is absent.

    Iterative, so a tree of any depth goes (a recursive removal of a planted chain of nested
    directories ends in RecursionError): at most REMOVAL_OPEN_DIRS descriptors are held, and a
    directory met deeper than that is first moved up into the top directory being removed
    (a rename within the tree), never reached through `..`.
    """
    try:
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)
        return
    try:
        top_fd = os.open(name, DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    try:
        _empty_tree(top_fd)
    finally:
        os.close(top_fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=parent_fd)


def _empty_tree(top_fd: int) -> None:
    """Remove everything in the directory `top_fd` (see remove_tree_at)."""
    # Each frame: (descriptor, its name in the frame below, subdirectories still to empty).
    frames: list[tuple[int, str, list[str]]] = [(top_fd, "", _unlink_files(top_fd))]
    try:
        while frames:
            fd, name, pending = frames[-1]
            if pending:
                child = pending.pop()
                if len(frames) >= REMOVAL_OPEN_DIRS:
                    moved = f".arch-removing-{os.urandom(6).hex()}"
                    os.rename(child, moved, src_dir_fd=fd, dst_dir_fd=top_fd)
                    frames[0][2].append(moved)
                    continue
                try:
                    child_fd = os.open(child, DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as error:
                    if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    with contextlib.suppress(FileNotFoundError):  # replaced meanwhile
                        os.unlink(child, dir_fd=fd)
                    continue
                frames.append((child_fd, child, _unlink_files(child_fd)))
                continue
            left = _unlink_files(fd)  # written meanwhile?
            if left:
                pending.extend(left)
                continue
            frames.pop()
            if not frames:
                return
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(name, dir_fd=frames[-1][0])
    finally:
        for fd, _, _ in frames[1:]:
            os.close(fd)


def _unlink_files(dir_fd: int) -> list[str]:
    """Unlink every entry of the directory that is not a directory; the subdirectories."""
    directories = []
    for name in os.listdir(dir_fd):
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            directories.append(name)
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
    return directories


def fd_path(fd: int) -> str:
    """A path naming what `fd` refers to, usable by this process and its children."""
    return f"/proc/{os.getpid()}/fd/{fd}"


def same_file(first_fd: int, second_fd: int) -> bool:
    first, second = os.fstat(first_fd), os.fstat(second_fd)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _walk(root_fd: int, parts: list[str], relative: str, flags: int, mode: int) -> int:
    fd = os.open(".", DIRECTORY_FLAGS, dir_fd=root_fd)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            next_fd = _open_component(
                fd, part, relative if last else "/".join(parts[: index + 1]),
                flags if last else DIRECTORY_FLAGS, mode,
            )  # fmt: skip
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_component(dir_fd: int, name: str, relative: str, flags: int, mode: int) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as error:
        # O_NOFOLLOW reports a symlink as ELOOP, or as ENOTDIR together with O_DIRECTORY.
        if error.errno == errno.ELOOP or (
            error.errno == errno.ENOTDIR and _is_symlink(dir_fd, name)
        ):
            raise NotBeneath(relative, f"{name!r} is a symlink") from error
        raise


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _openat2() -> Callable[[int, bytes, int, int, int], int] | None:
    """openat2 through libc's syscall(2), or None where the kernel or libc lacks it."""
    global _openat2_function, _openat2_missing
    if _openat2_function is not None or _openat2_missing:
        return _openat2_function
    import ctypes

    class OpenHow(ctypes.Structure):
        _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                    ("resolve", ctypes.c_uint64))  # fmt: skip

    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        _openat2_missing = True
        return None
    syscall.restype = ctypes.c_long

    def openat2(dir_fd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
        how = OpenHow(flags, mode if flags & (os.O_CREAT | os.O_TMPFILE) else 0, resolve)
        result = syscall(
            ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(path),
            ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)),
        )  # fmt: skip
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path.decode(errors="replace"))
        return int(result)

    # Probe once: ENOSYS (old kernel) or EPERM (a seccomp filter) mean "use the walk".
    try:
        os.close(openat2(-100, b"/", DIRECTORY_FLAGS, 0, 0))  # AT_FDCWD
    except OSError as error:
        if error.errno in (errno.ENOSYS, errno.EPERM):
            _openat2_missing = True
            return None
        raise
    _openat2_function = openat2
    return openat2

