"""The image store: atomic publication, removal, recovery and cleanup of checkpoint images.

Publication: an image is assembled in a staging directory next to its final path
(`<parent>/.staging-<id>-<random>`, same filesystem), sealed (files 0600, directory 0700, owned
by root when running as root, everything fsynced), checked with the same checks as `validate`,
then renamed into place. When an image already exists at the final path (A -> B -> A
migration), the two directories are swapped with renameat2(RENAME_EXCHANGE) where the
filesystem supports it (the final path then always holds a complete image); elsewhere (NFS) the
old image is renamed aside to `.old-<id>-<random>` first, so the final path is briefly absent
but never holds a partial image, and `recover` puts the old image back after a crash in that
window. Leftovers (`.staging-`, `.old-`, `.removing-`) are removed by `cleanup_stale`.

Every operation takes a descriptor of the root that holds the image and the image's path
relative to it, and resolves that path beneath the root at the moment of use, following no
symlink (arch.checkpoint.storage.beneath). Which root holds an image is the caller's decision.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from arch import failpoints
from arch.checkpoint.image import compression
from arch.checkpoint.image.errors import InvalidImage
from arch.checkpoint.image.metadata import (
    COMPRESSED_SUFFIX,
    METADATA_FILE,
    ROOTFS_TAR,
    SIGNATURE_FILE,
    CriuFile,
)
from arch.checkpoint.image.signing import Trust, file_sha256, signature
from arch.checkpoint.image.validation import (
    OPEN_DIR,
    read_metadata_at,
    regular_entries,
    validate_contents,
    validate_entry,
)
from arch.checkpoint.storage.beneath import (
    NotBeneath,
    components,
    fd_path,
    make_dirs_beneath,
    open_beneath,
    remove_tree_at,
    same_file,
)
from arch.checkpoint.storage.lease import LEASE_FILE, Lease, is_held, lease_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from types import TracebackType

    from arch.checkpoint.image.metadata import ImageMetadata

STAGING_PREFIX = ".staging-"
OLD_PREFIX = ".old-"
REMOVING_PREFIX = ".removing-"
LEFTOVER_PREFIXES = (STAGING_PREFIX, OLD_PREFIX, REMOVING_PREFIX)
RANDOM_HEX_CHARS = 12
TAR_NAMES = (ROOTFS_TAR, ROOTFS_TAR + COMPRESSED_SUFFIX)
# CRIU's memory pages (pages-<id>.img): the bulk of an image, and what compression is for.
PAGES_PREFIX = "pages-"
PAGES_SUFFIX = ".img"
# A leftover untouched for this long is not an operation in progress.
STALE_AFTER_SECONDS = 3600.0
# A same-id removal leaves another writer's staging without a (readable) lease alone while it
# changed within this long (host clocks may differ by a minute; leases are refreshed each 30 s).
UNLEASED_GRACE_SECONDS = 300.0

DIR_MODE = 0o700
FILE_MODE = 0o600
PUBLISH_ATTEMPTS = 5
IDENTITY_READ_BYTES = 4 * 1024 * 1024

_RENAME_EXCHANGE = 2


class PublishError(Exception):
    """The staging directory could not be put at the final path."""


class LeftoverAction(NamedTuple):
    name: str
    action: str  # "removed" or "restored"


class ImageStaging:
    """An image being assembled next to its final path; use as a context manager.

    The final path is `relative` beneath the root `root_fd` (see arch.checkpoint.storage.beneath);
    `path` names the staging directory through its descriptor (for runc and CRIU), so writes
    land in the directory created here whatever happens to the path meanwhile. Leaving the
    `with` block without `publish()` having succeeded removes the staging dir.
    """

    def __init__(
        self, root_fd: int, relative: str, parent_fd: int, name: str, lock_fd: int
    ) -> None:
        self.relative = relative
        self.name = name
        self.path = fd_path(lock_fd)
        self._root_fd = root_fd
        self._parent_fd = parent_fd
        self._lock_fd = lock_fd
        self._tar_fd: int | None = None
        self._sealed: set[str] = set()  # files already owned, 0600 and fsynced
        self._content_sizes: dict[str, int] = {}  # compressed file -> its size uncompressed
        self._finished = False
        # While it is written, cleanup_stale on any host leaves it alone (storage/lease.py).
        self._lease = Lease(self.path).start()

    @staticmethod
    def new_name(relative: str) -> str:
        """A fresh staging directory name for the image `relative` (beside it)."""
        return f"{STAGING_PREFIX}{_split(relative)[1]}-{random_hex()}"

    @classmethod
    def begin(cls, root_fd: int, relative: str, name: str | None = None) -> ImageStaging:
        """Create the staging directory `name` (default: a new_name) and missing parents (0700)
        for `relative`. A caller that must clean up after its own death records `name` first.

        NotBeneath (an OSError) when the parent does not resolve beneath the root.
        """
        parent, _ = _split(relative)
        name = name or cls.new_name(relative)
        if not name.startswith(STAGING_PREFIX) or "/" in name:
            raise ValueError(f"not a staging directory name: {name!r}")
        own_root_fd = os.dup(root_fd)
        try:
            parent_fd = make_dirs_beneath(own_root_fd, parent, DIR_MODE)
        except BaseException:
            os.close(own_root_fd)
            raise
        try:
            os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
            lock_fd = os.open(name, OPEN_DIR, dir_fd=parent_fd)
        except BaseException:
            os.close(parent_fd)
            os.close(own_root_fd)
            raise
        # Shared lock: tells cleanup_stale the directory is in use. Where the filesystem has no
        # flock (some network filesystems) only the age check protects it.
        with contextlib.suppress(OSError):
            fcntl.flock(lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return cls(own_root_fd, relative, parent_fd, name, lock_fd)

    def create_tar(self, compressed: bool = False) -> str:
        """Create the (empty) filesystem tar here (its compressed name when `compressed`); a
        path that names this very file."""
        if self._tar_fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            name = TAR_NAMES[1] if compressed else TAR_NAMES[0]
            self._tar_fd = os.open(name, flags, FILE_MODE, dir_fd=self._lock_fd)
        return fd_path(self._tar_fd)

    def compress_pages(self) -> int:
        """Compress CRIU's memory pages where it pays (arch.checkpoint.image.compression),
        before they are synced: an uncompressed copy is then mostly never written to the
        storage at all. The bytes of pages left to store."""
        stored = 0
        for entry in os.scandir(self._lock_fd):
            if not (entry.name.startswith(PAGES_PREFIX) and entry.name.endswith(PAGES_SUFFIX)):
                continue
            if entry.name in self._sealed or not entry.is_file(follow_symlinks=False):
                continue
            done = compression.compress_file(self._lock_fd, entry.name, FILE_MODE)
            if done is None:
                stored += entry.stat(follow_symlinks=False).st_size
                continue
            stored_name, content_size = done
            self._content_sizes[stored_name] = content_size
            stored += os.stat(stored_name, dir_fd=self._lock_fd, follow_symlinks=False).st_size
        return stored

    def add_file(self, name: str, data: bytes) -> None:
        """Write the image file `name` (0600, fsynced) into the staging directory."""
        _write_file(self._lock_fd, name, data)
        self._sealed.add(name)

    def seal_dump(self) -> None:
        """Seal the files runc and CRIU dumped (see _seal_files), once the dump has ended: the
        filesystem capture may still be running, and publication then finds them on disk."""
        self._sealed.update(_seal_files(
            self._lock_fd,
            lambda name: name not in self._sealed and name not in TAR_NAMES
            and not name.startswith(LEASE_FILE),  # the lease is being refreshed meanwhile
        ))  # fmt: skip

    def describe_criu_files(
        self, digests: bool = False, known: Mapping[str, str] | None = None
    ) -> tuple[CriuFile, ...]:
        """The CRIU files in the staging dir: every file but the metadata and the tar; with
        `digests`, each with its sha256 (for signed images), taken from `known` (see
        criu_file_digests) where it has the file."""
        known = known or {}

        def digest(name: str) -> str | None:
            return (known.get(name) or file_sha256(self._lock_fd, name)) if digests else None

        return tuple(
            CriuFile(
                name, size, digest(name),
                compression.ZSTD if name in self._content_sizes else None,
                self._content_sizes.get(name),
            )
            for name, size in sorted(self._criu_entries().items())
        )  # fmt: skip

    def criu_file_digests(self) -> dict[str, str]:
        """The sha256 of every sealed CRIU file (complete, never changed again): taken once the
        dump is sealed, while the filesystem capture still runs. A file still being written
        (not sealed yet) is left to describe_criu_files."""
        sealed = frozenset(self._sealed)  # one C-level copy: other threads may add meanwhile
        return {name: file_sha256(self._lock_fd, name)
                for name in self._criu_entries() if name in sealed}  # fmt: skip

    def _criu_entries(self) -> dict[str, int]:
        return {
            name: size
            for name, size in regular_entries(self._lock_fd).items()
            if name not in (METADATA_FILE, SIGNATURE_FILE, *TAR_NAMES)
            and not name.startswith(LEASE_FILE)
        }

    def publish(self, metadata: ImageMetadata, key: bytes | None = None) -> str:
        """seal() and commit(): the published image's identity."""
        sealed = self.seal(metadata, key)
        self.commit()
        return sealed

    def seal(self, metadata: ImageMetadata, key: bytes | None = None) -> str:
        """Seal the staging dir (signed with `key`, if given) and check it like `validate`;
        the identity (see `identity`) the image will have once published."""
        if self._finished:
            raise PublishError(f"{self.relative}: already published or aborted")
        dir_fd = self._lock_fd
        _seal_files(dir_fd, lambda name: name not in self._sealed
                    and not name.startswith(LEASE_FILE))  # fmt: skip
        document = metadata.to_json()
        _write_file(dir_fd, METADATA_FILE, document)
        trust = None
        if key is not None:
            place = (metadata.namespace, metadata.checkpoint_id)
            _write_file(dir_fd, SIGNATURE_FILE, signature(key, document, *place))
            trust = Trust((key,), False, *place)
        os.fsync(dir_fd)
        validate_contents(dir_fd, trust, ignore=_is_lease_file)
        return identity_of_document(document)

    def commit(self) -> None:
        """Put the sealed staging dir at the final path. The lease is held until just before
        the rename (its file is not part of the image): a same-id removal on another host
        never takes the directory for abandoned while it is still on its way.

        The parent is resolved beneath the root again: it must still be the directory the
        image was staged in.
        """
        if self._finished:
            raise PublishError(f"{self.relative}: already published or aborted")
        parent, final_name = _split(self.relative)
        parent_fd = open_beneath(self._root_fd, parent)
        try:
            if not same_file(parent_fd, self._parent_fd):
                raise PublishError(
                    f"{parent!r} is no longer the directory the image was staged in"
                )
            self._lease.stop()
            _swap_into_place(parent_fd, self.name, final_name)
        finally:
            os.close(parent_fd)
        self._finish()

    def abort(self) -> None:
        """Remove the staging directory (nothing was published)."""
        if self._finished:
            return
        self._lease.stop()
        try:
            _remove_entry(self._parent_fd, self.name)
        finally:
            self._finish()

    def _finish(self) -> None:
        self._finished = True
        self._lease.stop()
        for fd in (self._tar_fd, self._lock_fd, self._parent_fd, self._root_fd):
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> ImageStaging:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.abort()


def remove(root_fd: int, relative: str, expected: str | None = None) -> bool:
    """Delete the image `relative` beneath `root_fd` without following symlinks; False when
    absent. NotBeneath (an OSError) when its parent does not resolve beneath the root. With
    `expected` (an `identity`), only while it is still that image: another container may have
    published a newer one there meanwhile, which stays.

    The image is first renamed to a `.removing-` name, so that a crash midway never leaves a
    half-deleted image at the final path. Abandoned leftovers of interrupted publications of
    the same image are removed too, so that `recover` cannot bring an older image back later.
    """
    if expected is not None and identity(root_fd, relative) != expected:
        return False
    parent, name = _split(relative)
    try:
        parent_fd = open_beneath(root_fd, parent)
    except FileNotFoundError:
        return False
    try:
        _remove_old_copies_at(parent_fd, name)
        for leftover in _leftovers_of(parent_fd, name, prefixes=(STAGING_PREFIX,)):
            # Another writer's staging stays while its lease is live or (without one) while
            # it changed lately: it may be published yet, on this host or another.
            if _abandoned(parent_fd, leftover, UNLEASED_GRACE_SECONDS, time.time()):
                _remove_entry(parent_fd, leftover)
        doomed = f"{REMOVING_PREFIX}{name}-{random_hex()}"
        try:
            os.rename(name, doomed, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except FileNotFoundError:
            return False
        if expected is not None and not _still_expected(parent_fd, doomed, name, expected):
            return False
        os.fsync(parent_fd)
        _remove_entry(parent_fd, doomed)
        return True
    finally:
        os.close(parent_fd)


def remove_old_copies(root_fd: int, relative: str) -> list[str]:
    """Remove the swapped-out `.old-` copies of the image `relative` (beneath `root_fd`); the
    names removed. Whoever empties an image path calls this first: `recover` would otherwise
    bring such an older state back as the job's image."""
    parent, name = _split(relative)
    try:
        parent_fd = open_beneath(root_fd, parent)
    except FileNotFoundError:
        return []
    try:
        return _remove_old_copies_at(parent_fd, name)
    finally:
        os.close(parent_fd)


def _remove_old_copies_at(parent_fd: int, name: str) -> list[str]:
    removed = []
    for old in list(_leftovers_of(parent_fd, name, prefixes=(OLD_PREFIX,))):
        _retire(parent_fd, old)
        removed.append(old)
    return removed


def _retire(parent_fd: int, name: str) -> None:
    """Remove an image directory, its metadata.json first: from the first step on it is no
    longer a complete image that `recover` or a restore could take."""
    try:
        dir_fd = os.open(name, OPEN_DIR, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    except OSError:
        dir_fd = -1  # not a directory: _remove_entry unlinks it
    if dir_fd >= 0:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(METADATA_FILE, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    _remove_entry(parent_fd, name)


def _still_expected(parent_fd: int, doomed: str, name: str, expected: str) -> bool:
    """After renaming `name` to `doomed`: whether it is the expected image. If another was
    published between the check and the rename, it goes back, unless an even newer one took
    the path since (then the one taken is older than that and may go)."""
    import hashlib

    doomed_fd = os.open(doomed, OPEN_DIR, dir_fd=parent_fd)
    try:
        if _identity_of(doomed_fd, hashlib.sha256) == expected:
            return True
    finally:
        os.close(doomed_fd)
    try:
        os.rename(doomed, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        return True
    os.fsync(parent_fd)
    return False


def identity_of_document(document: bytes) -> str:
    """The identity of an image whose metadata.json holds `document`."""
    import hashlib

    return "metadata:" + hashlib.sha256(document).hexdigest()


def _is_lease_file(name: str) -> bool:
    return name.startswith(LEASE_FILE)


def identity(root_fd: int, relative: str) -> str | None:
    """What tells the image `relative` (beneath `root_fd`) from any other published at the same
    path: the sha256 of its metadata.json (which names the time, host, container and tar
    digest), else the directory's inode. None when nothing is there; NotBeneath when the path
    no longer resolves beneath the root."""
    import hashlib

    try:
        dir_fd = open_beneath(root_fd, relative)
    except FileNotFoundError:
        return None
    except NotBeneath:
        raise  # not an unreadable image: the path left its root, which the caller reports
    except OSError:
        return "unreadable"
    try:
        return _identity_of(dir_fd, hashlib.sha256)
    finally:
        os.close(dir_fd)


def _identity_of(dir_fd: int, sha256: Any) -> str:
    info = os.fstat(dir_fd)
    try:
        # Never blocking on a FIFO planted under the name (O_NONBLOCK), never a symlink.
        fd = os.open(METADATA_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)  # fmt: skip
    except OSError:
        return f"inode:{info.st_dev}:{info.st_ino}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"inode:{info.st_dev}:{info.st_ino}"
        return "metadata:" + str(sha256(os.read(fd, IDENTITY_READ_BYTES)).hexdigest())
    except OSError:
        return f"inode:{info.st_dev}:{info.st_ino}"
    finally:
        os.close(fd)


def recover(root_fd: int, relative: str) -> bool:
    """After a crash between the two renames of a publication: put the old image back.

    Only acts when nothing is at `relative` (beneath `root_fd`) and a complete `.old-<id>-*`
    image of the same checkpoint id exists (the newest one, by metadata `created`). Returns
    True when it did. Called before deciding whether a `create` restores.
    """
    parent, name = _split(relative)
    try:
        parent_fd = open_beneath(root_fd, parent)
    except FileNotFoundError:
        return False
    try:
        if lexists(parent_fd, name):
            return False
        candidates = []
        for leftover in _leftovers_of(parent_fd, name, prefixes=(OLD_PREFIX,)):
            try:
                metadata = validate_entry(parent_fd, leftover)
            except InvalidImage:
                continue
            if metadata.checkpoint_id == name:
                candidates.append((metadata.generation, metadata.created, leftover))
        if not candidates:
            return False
        try:
            os.rename(max(candidates)[2], name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                return False  # a publication or another recovery got there first
            raise
        os.fsync(parent_fd)
        return True
    finally:
        os.close(parent_fd)


def cleanup_stale(
    root_fd: int,
    parent: str,
    min_age: float = STALE_AFTER_SECONDS,
    now: float | None = None,
    image_name: str | None = None,
) -> list[LeftoverAction]:
    """Remove leftovers of interrupted publications and removals in `parent` (a namespace or
    pool dir beneath `root_fd`; with `image_name`, only that image's).

    A leftover is removed when its name has a leftover prefix, it is not held (a staging dir's
    lease names a live writer on this host, or one on another host that has not expired; see
    arch.checkpoint.storage.lease), and it is not itself an image whose metadata names it (a
    checkpoint id may begin with ".staging-"). One without a lease (`.old-`, `.removing-`,
    staging dirs of older versions) must also be unchanged for `min_age` seconds and unlocked.
    A complete swapped-out old image whose image path is empty is left for `recover`. Never
    touches other entries.
    """
    now = time.time() if now is None else now
    try:
        parent_fd = open_beneath(root_fd, parent)
    except FileNotFoundError:
        return []
    actions = []
    try:
        names = (
            [entry.name for entry in os.scandir(parent_fd)]
            if image_name is None
            else list(_leftovers_of(parent_fd, image_name, LEFTOVER_PREFIXES))
        )
        for name in names:
            if not name.startswith(LEFTOVER_PREFIXES) or not _has_random_suffix(name):
                continue
            if not _abandoned(parent_fd, name, min_age, now):
                continue
            if name.startswith(OLD_PREFIX) and _recoverable(parent_fd, name):
                continue
            if _is_image_named(parent_fd, name):
                continue
            _remove_entry(parent_fd, name)
            actions.append(LeftoverAction(name, "removed"))
    finally:
        os.close(parent_fd)
    return actions


def cleanup_leftovers_of(root_fd: int, relative: str) -> list[LeftoverAction]:
    """cleanup_stale for the leftovers of one image: run before each operation on it."""
    parent, name = _split(relative)
    return cleanup_stale(root_fd, parent, image_name=name)


def _split(relative: str) -> tuple[str, str]:
    """(parent, name) of an image's relative path; the name must be a single component."""
    parts = components(relative)
    if not parts:
        raise ValueError("an image needs a relative path below its root")
    return "/".join(parts[:-1]), parts[-1]


def _seal_files(dir_fd: int, wanted: Callable[[str], bool]) -> list[str]:
    """The `wanted` files 0600 (root-owned when running as root) and their contents fsynced;
    their names. The directory itself: 0700 (root-owned)."""
    as_root = os.geteuid() == 0
    os.fchmod(dir_fd, DIR_MODE)
    if as_root:
        os.fchown(dir_fd, 0, 0)
    names = [name for name in regular_entries(dir_fd) if wanted(name)]
    for name in names:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if as_root:
                os.fchown(fd, 0, 0)
            os.fchmod(fd, FILE_MODE)  # after fchown, which may clear mode bits
            os.fsync(fd)
        finally:
            os.close(fd)
    return names


def _write_file(dir_fd: int, name: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, FILE_MODE, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, FILE_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(parent_fd: int, staging: str, final: str) -> None:
    """Put the complete directory `staging` at `final`, replacing an image already there."""
    for _ in range(PUBLISH_ATTEMPTS):
        try:
            os.rename(staging, final, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        else:
            failpoints.hit("checkpoint.after-publish-rename")
            os.fsync(parent_fd)
            return
        try:
            exchanged = _rename_exchange(parent_fd, staging, final)
        except FileNotFoundError:
            continue  # removed meanwhile: try the plain rename again
        if exchanged:
            failpoints.hit("checkpoint.after-publish-rename")
            os.fsync(parent_fd)
            _retire(parent_fd, staging)  # now the previous image
            return
        old = f"{OLD_PREFIX}{final}-{random_hex()}"
        try:
            os.rename(final, old, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except FileNotFoundError:
            continue  # removed meanwhile: try the plain rename again
        try:
            os.rename(staging, final, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            continue  # `recover` put the old image back meanwhile; start over
        failpoints.hit("checkpoint.after-publish-rename")
        os.fsync(parent_fd)
        _retire(parent_fd, old)
        return
    raise PublishError(f"could not publish {staging} as {final}: the final path kept changing")


def _rename_exchange(parent_fd: int, first: str, second: str) -> bool:
    """Swap two directory entries atomically; False where renameat2 or the flag is missing."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    result = renameat2(
        parent_fd, os.fsencode(first), parent_fd, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), second)


def _remove_entry(parent_fd: int, name: str) -> None:
    """Remove a file, symlink or directory tree in the parent, never following symlinks."""
    remove_tree_at(parent_fd, name)


def lexists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def random_hex() -> str:
    return os.urandom(RANDOM_HEX_CHARS // 2).hex()


def _has_random_suffix(name: str) -> bool:
    suffix = name[-RANDOM_HEX_CHARS - 1 :]
    return (
        len(name) > RANDOM_HEX_CHARS + 1
        and suffix[0] == "-"
        and all(c in "0123456789abcdef" for c in suffix[1:])
    )


def _leftovers_of(
    parent_fd: int, image_name: str, prefixes: tuple[str, ...] = (STAGING_PREFIX, OLD_PREFIX)
) -> Iterator[str]:
    """Names of leftovers (with the given prefixes) that belong to the image `image_name`."""
    names = [entry.name for entry in os.scandir(parent_fd)]
    for name in names:
        for prefix in prefixes:
            if (
                name.startswith(prefix)
                and _has_random_suffix(name)
                and name[len(prefix) : -RANDOM_HEX_CHARS - 1] == image_name
            ):
                yield name


def _last_change(parent_fd: int, name: str) -> float:
    """The newest mtime/ctime of the entry and, for a directory, of its direct entries."""
    try:
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return time.time()
    newest = max(info.st_mtime, info.st_ctime)
    if not stat.S_ISDIR(info.st_mode):
        return newest
    dir_fd = os.open(name, OPEN_DIR, dir_fd=parent_fd)
    try:
        for entry in os.scandir(dir_fd):
            try:
                child = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            newest = max(newest, child.st_mtime, child.st_ctime)
    finally:
        os.close(dir_fd)
    return newest


def _abandoned(parent_fd: int, name: str, min_age: float, now: float) -> bool:
    """Whether nobody writes the leftover `name` any more (see cleanup_stale)."""
    lease = lease_of(parent_fd, name)
    if lease is not None:
        return not is_held(lease, now)
    return now - _last_change(parent_fd, name) >= min_age and not _in_use(parent_fd, name)


def _recoverable(parent_fd: int, old: str) -> bool:
    """Whether `recover` would put this swapped-out image back (its image path is empty)."""
    if lexists(parent_fd, _image_name_of(old)):
        return False
    try:
        validate_entry(parent_fd, old)
    except InvalidImage:
        return False
    return True


def _image_name_of(leftover: str) -> str:
    """The image a `<prefix><image>-<random>` leftover belongs to."""
    prefix = next(p for p in LEFTOVER_PREFIXES if leftover.startswith(p))
    return leftover[len(prefix) : -RANDOM_HEX_CHARS - 1]


def _in_use(parent_fd: int, name: str) -> bool:
    """Whether a process holds the lock of this (staging) directory."""
    try:
        fd = os.open(name, OPEN_DIR, dir_fd=parent_fd)
    except OSError:
        return False  # gone, or not a directory: nobody is writing into it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no flock here; the age check alone decides
    finally:
        os.close(fd)
    return False


def _is_image_named(parent_fd: int, name: str) -> bool:
    """Whether `name` is a published image whose checkpoint id happens to look like garbage."""
    try:
        dir_fd = os.open(name, OPEN_DIR, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        return read_metadata_at(dir_fd).checkpoint_id == name
    except InvalidImage:
        return False
    finally:
        os.close(dir_fd)
