"""Checkpoint images on disk: layout, metadata, atomic publication, validation and removal.

An image is one flat directory `<root>/<namespace>/<checkpoint id>/` holding
- the CRIU files exactly as `runc checkpoint` writes them (inventory.img, dump.log, ...),
- ROOTFS_TAR, the container's filesystem changes (written by arch.checkpoint.layer_*),
- METADATA_FILE, written last (see ImageMetadata).

Publication: an image is assembled in a staging directory next to its final path
(`<parent>/.staging-<id>-<random>`, same filesystem), sealed (files 0600, directory 0700, owned
by root when running as root, everything fsynced), checked with the same checks as `validate`,
then renamed into place. When an image already exists at the final path (A -> B -> A
migration), the two directories are swapped with renameat2(RENAME_EXCHANGE) where the
filesystem supports it (the final path then always holds a complete image); elsewhere (NFS) the
old image is renamed aside to `.old-<id>-<random>` first, so the final path is briefly absent
but never holds a partial image, and `recover` puts the old image back after a crash in that
window. Leftovers (`.staging-`, `.old-`, `.removing-`) are removed by `cleanup_stale`.

Images may sit on shared storage that other hosts write: validation accepts only regular files
(no symlinks, no subdirectories), exactly the files the metadata lists, with the listed sizes;
everything is opened relative to a directory descriptor with O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from types import TracebackType

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({FORMAT_VERSION})
METADATA_FILE = "metadata.json"
ROOTFS_TAR = "rootfs-diff.tar"
CRIU_INVENTORY = "inventory.img"
CRIU_DUMP_LOG = "dump.log"
# The last line CRIU's dump logs when it succeeded (criu/cr-dump.c, 3.x and 4.x).
CRIU_DUMP_SUCCESS = "Dumping finished successfully"
CRIU_ERROR_MARKERS = ("Error (", "Dumping FAILED")
FILESYSTEM_MODES = ("overlay", "none")

STAGING_PREFIX = ".staging-"
OLD_PREFIX = ".old-"
REMOVING_PREFIX = ".removing-"
LEFTOVER_PREFIXES = (STAGING_PREFIX, OLD_PREFIX, REMOVING_PREFIX)
RANDOM_HEX_CHARS = 12
# A leftover untouched for this long is not an operation in progress.
STALE_AFTER_SECONDS = 3600.0

DIR_MODE = 0o700
FILE_MODE = 0o600
METADATA_MAX_BYTES = 4 * 1024 * 1024
DUMP_LOG_TAIL_BYTES = 64 * 1024
COPY_CHUNK_BYTES = 1024 * 1024
PUBLISH_ATTEMPTS = 5

_RENAME_EXCHANGE = 2
_FILE_NAME_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:+-"
)
_SAFE_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class InvalidImage(Exception):
    """The image cannot be restored; `reason` says why (meant for the log and archctl)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ImageMissing(InvalidImage):
    """There is no image at the path (the normal case for a first start)."""


class PublishError(Exception):
    """The staging directory could not be put at the final path."""


@dataclass(frozen=True)
class CriuFile:
    name: str
    size: int


@dataclass(frozen=True)
class FilesystemInfo:
    """How the container's filesystem was captured: an overlay diff tar, or not at all."""

    mode: str
    tar: str | None = None
    sha256: str | None = None
    size: int | None = None

    @classmethod
    def overlay(cls, sha256: str, size: int) -> FilesystemInfo:
        return cls("overlay", ROOTFS_TAR, sha256, size)

    @classmethod
    def none(cls) -> FilesystemInfo:
        return cls("none")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class MountInfo:
    destination: str
    source: str | None
    type: str | None


@dataclass(frozen=True)
class ContainerEssentials:
    """What the bundle's config.json said about the process and its mounts."""

    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    cwd: str = "/"
    mounts: tuple[MountInfo, ...] = ()

    @classmethod
    def from_oci_config(cls, config: Mapping[str, Any]) -> ContainerEssentials:
        """Extract the essentials from a parsed OCI config.json (ValueError when malformed)."""
        process = config.get("process") or {}
        if not isinstance(process, dict):
            raise ValueError("config.json: process must be an object")
        mounts = config.get("mounts") or []
        if not isinstance(mounts, list) or not all(isinstance(m, dict) for m in mounts):
            raise ValueError("config.json: mounts must be a list of objects")
        return cls(
            args=_strings(process.get("args") or [], "config.json: process.args", ValueError),
            env=_strings(process.get("env") or [], "config.json: process.env", ValueError),
            cwd=_string(process.get("cwd", "/"), "config.json: process.cwd", ValueError),
            mounts=tuple(
                MountInfo(
                    _string(m.get("destination", ""), "config.json: mount destination", ValueError),
                    _optional_string(m.get("source"), "config.json: mount source", ValueError),
                    _optional_string(m.get("type"), "config.json: mount type", ValueError),
                )
                for m in mounts
            ),
        )


@dataclass(frozen=True)
class ImageMetadata:
    """The contents of metadata.json."""

    namespace: str
    container_id: str
    checkpoint_id: str
    created: str
    host: str
    kernel: str
    runc_version: str
    criu_version: str
    filesystem: FilesystemInfo
    criu_files: tuple[CriuFile, ...]
    container: ContainerEssentials = field(default_factory=ContainerEssentials)
    cpu: CpuInfo | None = None
    format_version: int = FORMAT_VERSION
    # CRIU options the dump used that the restore must repeat (arch.checkpoint.criu_options).
    criu_options: tuple[str, ...] = ()

    @classmethod
    def new(
        cls,
        *,
        namespace: str,
        container_id: str,
        checkpoint_id: str,
        runc_version: str,
        criu_version: str,
        filesystem: FilesystemInfo,
        criu_files: tuple[CriuFile, ...],
        container: ContainerEssentials,
        cpu: CpuInfo | None = None,
        criu_options: tuple[str, ...] = (),
    ) -> ImageMetadata:
        """Metadata for an image made now on this host (created, host and kernel filled in)."""
        uname = os.uname()
        return cls(
            namespace=namespace,
            container_id=container_id,
            checkpoint_id=checkpoint_id,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            host=uname.nodename,
            kernel=uname.release,
            runc_version=runc_version,
            criu_version=criu_version,
            filesystem=filesystem,
            criu_files=criu_files,
            container=container,
            cpu=cpu,
            criu_options=criu_options,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "namespace": self.namespace,
            "container_id": self.container_id,
            "checkpoint_id": self.checkpoint_id,
            "created": self.created,
            "host": self.host,
            "kernel": self.kernel,
            "runc_version": self.runc_version,
            "criu_version": self.criu_version,
            "cpu": None
            if self.cpu is None
            else {"model": self.cpu.model, "flags": list(self.cpu.flags)},
            "filesystem": {
                "mode": self.filesystem.mode,
                "tar": self.filesystem.tar,
                "sha256": self.filesystem.sha256,
                "size": self.filesystem.size,
            },
            "process": {
                "criu_files": [{"name": f.name, "size": f.size} for f in self.criu_files],
                "criu_options": list(self.criu_options),
            },
            "container": {
                "args": list(self.container.args),
                "env": list(self.container.env),
                "cwd": self.container.cwd,
                "mounts": [
                    {"destination": m.destination, "source": m.source, "type": m.type}
                    for m in self.container.mounts
                ],
            },
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> ImageMetadata:
        """Parse and validate metadata.json; InvalidImage names what is wrong."""
        try:
            document = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError) as error:
            raise InvalidImage(f"{METADATA_FILE} is not valid JSON: {error}") from error
        return cls.from_dict(document)

    @classmethod
    def from_dict(cls, document: object) -> ImageMetadata:
        """Validate a parsed metadata document. Keys this version does not know are ignored."""
        top = _object(document, "metadata")
        version = _integer(_required(top, "format_version", "metadata"), "format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise InvalidImage(
                f"{METADATA_FILE}: format_version {version} is not supported (this ARCH reads "
                f"{', '.join(str(v) for v in sorted(SUPPORTED_FORMAT_VERSIONS))})"
            )
        text = {
            key: _string(_required(top, key, "metadata"), key)
            for key in (
                "namespace", "container_id", "checkpoint_id", "created", "host", "kernel",
                "runc_version", "criu_version",
            )
        }
        _check_safe_id(text["namespace"], "namespace")
        _check_safe_id(text["checkpoint_id"], "checkpoint_id")
        if not text["container_id"]:
            raise InvalidImage(f"{METADATA_FILE}: container_id is empty")
        _check_rfc3339(text["created"])
        parse_criu_version(text["criu_version"], source="criu_version")
        filesystem = _filesystem_from(_required(top, "filesystem", "metadata"))
        criu_files = _criu_files_from(_required(top, "process", "metadata"), filesystem)
        criu_options = _criu_options_from(top["process"])
        return cls(
            namespace=text["namespace"],
            container_id=text["container_id"],
            checkpoint_id=text["checkpoint_id"],
            created=text["created"],
            host=text["host"],
            kernel=text["kernel"],
            runc_version=text["runc_version"],
            criu_version=text["criu_version"],
            filesystem=filesystem,
            criu_files=criu_files,
            container=_container_from(_required(top, "container", "metadata")),
            cpu=_cpu_from(top.get("cpu")),
            format_version=version,
            criu_options=criu_options,
        )


@dataclass(frozen=True)
class ValidImage:
    """An image that passed `validate`."""

    path: str
    metadata: ImageMetadata

    @property
    def tar_path(self) -> str | None:
        tar = self.metadata.filesystem.tar
        return None if tar is None else os.path.join(self.path, tar)


class LeftoverAction(NamedTuple):
    name: str
    action: str  # "removed" or "restored"


def parse_criu_version(text: str, source: str = "CRIU version") -> tuple[int, ...]:
    """(major, minor[, sublevel]) from "4.2.1" or `criu --version` output ("Version: 4.2")."""
    found = _VERSION.search(text)
    if found is None:
        raise InvalidImage(f"{source} {text!r}: no version number")
    return tuple(int(part) for part in found.groups() if part is not None)


def host_cpu_summary(cpuinfo_path: str = "/proc/cpuinfo") -> CpuInfo | None:
    """The first CPU's model name and flags, or None when /proc/cpuinfo does not say."""
    model = None
    flags: tuple[str, ...] | None = None
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and flags is None:
                    flags = tuple(value.split())
                if not line.strip() and (model is not None or flags is not None):
                    break  # end of the first processor's block
    except OSError:
        return None
    if model is None and flags is None:
        return None
    return CpuInfo(model or "", flags or ())


def read_metadata(image_dir: str) -> ImageMetadata:
    with _open_image_dir(image_dir) as dir_fd:
        return _read_metadata(dir_fd)


def validate(
    image_dir: str,
    criu_version: str | None = None,
    *,
    namespace: str | None = None,
    checkpoint_id: str | None = None,
) -> ValidImage:
    """Check that the image at `image_dir` is complete and usable; raise InvalidImage if not.

    `criu_version` is the restoring host's CRIU version: an image dumped by a newer CRIU major
    is refused. `namespace`/`checkpoint_id`, when given, must match the metadata. The tar's
    sha256 is not computed here (see verify_tar_checksum).
    """
    with _open_image_dir(image_dir) as dir_fd:
        metadata = _validate_contents(dir_fd)
    if namespace is not None and metadata.namespace != namespace:
        raise InvalidImage(f"image is for namespace {metadata.namespace!r}, not {namespace!r}")
    if checkpoint_id is not None and metadata.checkpoint_id != checkpoint_id:
        raise InvalidImage(
            f"image is for checkpoint id {metadata.checkpoint_id!r}, not {checkpoint_id!r}"
        )
    if criu_version is not None:
        _check_criu_compatible(metadata.criu_version, criu_version)
    return ValidImage(image_dir, metadata)


def verify_tar_checksum(image: ValidImage) -> None:
    """Stream the filesystem tar and compare its sha256 with the metadata's."""
    filesystem = image.metadata.filesystem
    if filesystem.tar is None:
        return
    digest = hashlib.sha256()
    with _open_image_dir(image.path) as dir_fd:
        fd = _open_regular(dir_fd, filesystem.tar)
        try:
            while True:
                chunk = os.read(fd, COPY_CHUNK_BYTES)
                if not chunk:
                    break
                digest.update(chunk)
        finally:
            os.close(fd)
    if digest.hexdigest() != filesystem.sha256:
        raise InvalidImage(
            f"{filesystem.tar}: sha256 {digest.hexdigest()} does not match the metadata's "
            f"{filesystem.sha256}"
        )


class ImageStaging:
    """An image being assembled next to its final path; use as a context manager.

    Leaving the `with` block without `publish()` having succeeded removes the staging dir.
    """

    def __init__(self, image_dir: str, parent_fd: int, name: str, lock_fd: int) -> None:
        self.image_dir = image_dir
        self.parent = os.path.dirname(image_dir)
        self.name = name
        self.path = os.path.join(self.parent, name)
        self._parent_fd = parent_fd
        self._lock_fd = lock_fd
        self._finished = False

    @classmethod
    def begin(cls, image_dir: str) -> ImageStaging:
        """Create the staging directory (and missing parents, 0700) for `image_dir`."""
        if not os.path.isabs(image_dir):
            raise ValueError(f"image directory must be absolute: {image_dir!r}")
        image_dir = os.path.normpath(image_dir)
        parent, final_name = os.path.split(image_dir)
        try:
            make_private_dirs(parent)
            parent_fd = _open_dir(parent)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PublishError(f"{parent} is not a directory (a symlink?)") from error
            raise
        try:
            name = f"{STAGING_PREFIX}{final_name}-{_random_hex()}"
            os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
            lock_fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
        except BaseException:
            os.close(parent_fd)
            raise
        # Shared lock: tells cleanup_stale the directory is in use. Where the filesystem has no
        # flock (some network filesystems) only the age check protects it.
        with contextlib.suppress(OSError):
            fcntl.flock(lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return cls(image_dir, parent_fd, name, lock_fd)

    @property
    def tar_path(self) -> str:
        return os.path.join(self.path, ROOTFS_TAR)

    def describe_criu_files(self) -> tuple[CriuFile, ...]:
        """The CRIU files in the staging dir: every file but the metadata and the tar."""
        with _open_image_dir(self.path) as dir_fd:
            entries = _regular_entries(dir_fd)
        return tuple(
            CriuFile(name, size)
            for name, size in sorted(entries.items())
            if name not in (METADATA_FILE, ROOTFS_TAR)
        )

    def publish(self, metadata: ImageMetadata) -> ValidImage:
        """Seal the staging dir, check it like `validate`, and put it at the final path."""
        if self._finished:
            raise PublishError(f"{self.path}: already published or aborted")
        with _open_image_dir(self.path) as dir_fd:
            _seal_files(dir_fd)
            _write_file(dir_fd, METADATA_FILE, metadata.to_json())
            os.fsync(dir_fd)
            _validate_contents(dir_fd)
        _swap_into_place(self._parent_fd, self.name, os.path.basename(self.image_dir))
        self._finish()
        return ValidImage(self.image_dir, metadata)

    def abort(self) -> None:
        """Remove the staging directory (nothing was published)."""
        if self._finished:
            return
        try:
            _remove_entry(self._parent_fd, self.name)
        finally:
            self._finish()

    def _finish(self) -> None:
        self._finished = True
        os.close(self._lock_fd)
        os.close(self._parent_fd)

    def __enter__(self) -> ImageStaging:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.abort()


def remove(image_dir: str) -> bool:
    """Delete the image at `image_dir` without following symlinks; False when absent.

    The image is first renamed to a `.removing-` name, so that a crash midway never leaves a
    half-deleted image at the final path. Leftovers of interrupted publications of the same
    image are removed too, so that `recover` cannot bring an older image back later.
    """
    parent, name = os.path.split(os.path.normpath(image_dir))
    try:
        parent_fd = _open_dir(parent)
    except FileNotFoundError:
        return False
    try:
        for leftover in _leftovers_of(parent_fd, name):
            if not _in_use(parent_fd, leftover):
                _remove_entry(parent_fd, leftover)
        doomed = f"{REMOVING_PREFIX}{name}-{_random_hex()}"
        try:
            os.rename(name, doomed, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except FileNotFoundError:
            return False
        os.fsync(parent_fd)
        _remove_entry(parent_fd, doomed)
        return True
    finally:
        os.close(parent_fd)


def recover(image_dir: str) -> bool:
    """After a crash between the two renames of a publication: put the old image back.

    Only acts when nothing is at `image_dir` and a complete `.old-<id>-*` image of the same
    checkpoint id exists (the newest one, by metadata `created`). Returns True when it did.
    Called before deciding whether a `create` restores.
    """
    parent, name = os.path.split(os.path.normpath(image_dir))
    try:
        parent_fd = _open_dir(parent)
    except FileNotFoundError:
        return False
    try:
        if _lexists(parent_fd, name):
            return False
        candidates = []
        for leftover in _leftovers_of(parent_fd, name, prefixes=(OLD_PREFIX,)):
            try:
                metadata = _validate_entry(parent_fd, leftover)
            except InvalidImage:
                continue
            if metadata.checkpoint_id == name:
                candidates.append((metadata.created, leftover))
        if not candidates:
            return False
        try:
            os.rename(max(candidates)[1], name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                return False  # a publication or another recovery got there first
            raise
        os.fsync(parent_fd)
        return True
    finally:
        os.close(parent_fd)


def cleanup_stale(
    parent: str, min_age: float = STALE_AFTER_SECONDS, now: float | None = None
) -> list[LeftoverAction]:
    """Remove leftovers of interrupted publications and removals in `parent` (a namespace dir).

    A leftover is removed when its name has a leftover prefix, nothing in it changed for
    `min_age` seconds, no process holds its lock, and it is not itself an image whose metadata
    names it (a checkpoint id may begin with ".staging-"). Never touches other entries.
    """
    now = time.time() if now is None else now
    try:
        parent_fd = _open_dir(parent)
    except FileNotFoundError:
        return []
    actions = []
    try:
        for entry in os.scandir(parent_fd):
            name = entry.name
            if not name.startswith(LEFTOVER_PREFIXES) or not _has_random_suffix(name):
                continue
            if now - _last_change(parent_fd, name) < min_age or _in_use(parent_fd, name):
                continue
            if _is_image_named(parent_fd, name):
                continue
            _remove_entry(parent_fd, name)
            actions.append(LeftoverAction(name, "removed"))
    finally:
        os.close(parent_fd)
    return actions


def make_private_dirs(path: str) -> None:
    """Create `path` and missing parents with mode 0700; refuse a symlink at `path`."""
    missing = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, DIR_MODE)
    os.close(_open_dir(path))


# --- validation ----------------------------------------------------------------------------


def _validate_contents(dir_fd: int) -> ImageMetadata:
    """Everything `validate` checks about the files, against the metadata on disk."""
    entries = _regular_entries(dir_fd)
    if METADATA_FILE not in entries:
        raise InvalidImage(f"{METADATA_FILE} is missing (incomplete image)")
    metadata = _read_metadata(dir_fd)
    expected = {METADATA_FILE: -1}
    expected.update((f.name, f.size) for f in metadata.criu_files)
    filesystem = metadata.filesystem
    if filesystem.tar is not None and filesystem.size is not None:
        expected[filesystem.tar] = filesystem.size
    unexpected = sorted(set(entries) - set(expected))
    if unexpected:
        raise InvalidImage(f"files not listed in {METADATA_FILE}: {', '.join(unexpected)}")
    for name, size in sorted(expected.items()):
        if name not in entries:
            raise InvalidImage(f"{name} is missing")
        if size >= 0 and entries[name] != size:
            raise InvalidImage(
                f"{name} has {entries[name]} bytes, {METADATA_FILE} says {size} (truncated?)"
            )
    _check_dump_log(dir_fd)
    return metadata


def _validate_entry(parent_fd: int, name: str) -> ImageMetadata:
    try:
        dir_fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    except OSError as error:
        raise InvalidImage(f"{name}: cannot open: {error.strerror}") from error
    try:
        return _validate_contents(dir_fd)
    finally:
        os.close(dir_fd)


def _regular_entries(dir_fd: int) -> dict[str, int]:
    """Name -> size of every entry; anything but a regular file is refused."""
    entries = {}
    for entry in os.scandir(dir_fd):
        info = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            raise InvalidImage(f"{entry.name} is a symlink (images hold only regular files)")
        if not stat.S_ISREG(info.st_mode):
            raise InvalidImage(f"{entry.name} is not a regular file")
        entries[entry.name] = info.st_size
    return entries


def _read_metadata(dir_fd: int) -> ImageMetadata:
    fd = _open_regular(dir_fd, METADATA_FILE)
    chunks: list[bytes] = []
    length = 0
    try:
        while length <= METADATA_MAX_BYTES:
            chunk = os.read(fd, METADATA_MAX_BYTES + 1 - length)
            if not chunk:
                break
            chunks.append(chunk)
            length += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > METADATA_MAX_BYTES:
        raise InvalidImage(f"{METADATA_FILE} is larger than {METADATA_MAX_BYTES} bytes")
    return ImageMetadata.from_json(data)


def _check_dump_log(dir_fd: int) -> None:
    """dump.log must report success, with no error after the success line."""
    fd = _open_regular(dir_fd, CRIU_DUMP_LOG)
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - DUMP_LOG_TAIL_BYTES), os.SEEK_SET)
        tail = os.read(fd, DUMP_LOG_TAIL_BYTES).decode("utf-8", errors="replace")
    finally:
        os.close(fd)
    lines = tail.splitlines()
    success = [i for i, line in enumerate(lines) if CRIU_DUMP_SUCCESS in line]
    if not success:
        raise InvalidImage(f"{CRIU_DUMP_LOG} does not end with {CRIU_DUMP_SUCCESS!r}")
    for line in lines[success[-1] + 1 :]:
        if any(marker in line for marker in CRIU_ERROR_MARKERS):
            raise InvalidImage(f"{CRIU_DUMP_LOG} reports an error after success: {line.strip()}")


def _check_criu_compatible(image_version: str, host_version: str) -> None:
    dumped = parse_criu_version(image_version, source="image CRIU version")
    restoring = parse_criu_version(host_version, source="this host's CRIU version")
    if dumped[0] > restoring[0]:
        raise InvalidImage(
            f"image was dumped by CRIU {'.'.join(map(str, dumped))}, a newer major version "
            f"than this host's CRIU {'.'.join(map(str, restoring))}"
        )


# --- metadata parsing ----------------------------------------------------------------------


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _required(document: Mapping[str, Any], key: str, where: str) -> object:
    if key not in document:
        raise InvalidImage(f"{METADATA_FILE}: {where}.{key} is missing")
    return document[key]


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidImage(f"{METADATA_FILE}: {where} must be an object")
    return value


def _string(value: object, where: str, error: type[Exception] = InvalidImage) -> str:
    if not isinstance(value, str):
        raise error(f"{where} must be a string, got {type(value).__name__}")
    return value


def _optional_string(
    value: object, where: str, error: type[Exception] = InvalidImage
) -> str | None:
    return None if value is None else _string(value, where, error)


def _strings(value: object, where: str, error: type[Exception] = InvalidImage) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise error(f"{where} must be a list of strings")
    return tuple(value)


def _integer(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidImage(f"{METADATA_FILE}: {where} must be an integer")
    return value


def _size(value: object, where: str) -> int:
    size = _integer(value, where)
    if size < 0:
        raise InvalidImage(f"{METADATA_FILE}: {where} must not be negative")
    return size


def _check_safe_id(value: str, where: str) -> None:
    if not 1 <= len(value) <= 128 or value in (".", "..") or not _SAFE_ID_CHARS.issuperset(value):
        raise InvalidImage(f"{METADATA_FILE}: {where} {value!r} is not a safe path component")


def _check_file_name(value: str, where: str) -> None:
    if (
        not 1 <= len(value) <= 255
        or value.startswith(".")
        or not _FILE_NAME_CHARS.issuperset(value)
    ):
        raise InvalidImage(f"{METADATA_FILE}: {where} {value!r} is not an acceptable file name")


def _check_rfc3339(value: str) -> None:
    from datetime import datetime

    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in value.upper():
        raise InvalidImage(f"{METADATA_FILE}: created {value!r} is not an RFC 3339 time")


def _filesystem_from(value: object) -> FilesystemInfo:
    section = _object(value, "filesystem")
    mode = _string(_required(section, "mode", "filesystem"), "filesystem.mode")
    if mode not in FILESYSTEM_MODES:
        raise InvalidImage(
            f"{METADATA_FILE}: filesystem.mode {mode!r} is not one of {', '.join(FILESYSTEM_MODES)}"
        )
    if mode == "none":
        if any(section.get(key) is not None for key in ("tar", "sha256", "size")):
            raise InvalidImage(f"{METADATA_FILE}: filesystem mode 'none' names a tar")
        return FilesystemInfo.none()
    tar = _string(_required(section, "tar", "filesystem"), "filesystem.tar")
    if tar != ROOTFS_TAR:
        raise InvalidImage(f"{METADATA_FILE}: filesystem.tar must be {ROOTFS_TAR!r}, got {tar!r}")
    sha256 = _string(_required(section, "sha256", "filesystem"), "filesystem.sha256")
    if not _SHA256_HEX.match(sha256):
        raise InvalidImage(f"{METADATA_FILE}: filesystem.sha256 is not 64 lowercase hex digits")
    size = _size(_required(section, "size", "filesystem"), "filesystem.size")
    return FilesystemInfo(mode, tar, sha256, size)


def _criu_files_from(value: object, filesystem: FilesystemInfo) -> tuple[CriuFile, ...]:
    section = _object(value, "process")
    listed = _required(section, "criu_files", "process")
    if not isinstance(listed, list):
        raise InvalidImage(f"{METADATA_FILE}: process.criu_files must be a list")
    files = []
    for item in listed:
        entry = _object(item, "process.criu_files[]")
        name = _string(_required(entry, "name", "process.criu_files[]"), "criu file name")
        _check_file_name(name, "criu file")
        files.append(CriuFile(name, _size(_required(entry, "size", name), f"{name}.size")))
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise InvalidImage(f"{METADATA_FILE}: process.criu_files lists a file twice")
    for reserved in (METADATA_FILE, filesystem.tar):
        if reserved in names:
            raise InvalidImage(f"{METADATA_FILE}: process.criu_files lists {reserved}")
    for required in (CRIU_INVENTORY, CRIU_DUMP_LOG):
        if required not in names:
            raise InvalidImage(f"{METADATA_FILE}: process.criu_files lacks {required}")
    return tuple(files)


def _criu_options_from(process: object) -> tuple[str, ...]:
    from arch.checkpoint.criu_options import CriuOptionError, parse_options

    listed = _strings(_object(process, "process").get("criu_options", []), "process.criu_options")
    try:
        return tuple(parse_options(listed, f"{METADATA_FILE}: process.criu_options"))
    except CriuOptionError as error:
        raise InvalidImage(str(error)) from error


def _container_from(value: object) -> ContainerEssentials:
    section = _object(value, "container")
    mounts = _required(section, "mounts", "container")
    if not isinstance(mounts, list):
        raise InvalidImage(f"{METADATA_FILE}: container.mounts must be a list")
    return ContainerEssentials(
        args=_strings(_required(section, "args", "container"), "container.args"),
        env=_strings(_required(section, "env", "container"), "container.env"),
        cwd=_string(_required(section, "cwd", "container"), "container.cwd"),
        mounts=tuple(_mount_from(mount) for mount in mounts),
    )


def _mount_from(value: object) -> MountInfo:
    mount = _object(value, "container.mounts[]")
    return MountInfo(
        _string(_required(mount, "destination", "mount"), "mount.destination"),
        _optional_string(mount.get("source"), "mount.source"),
        _optional_string(mount.get("type"), "mount.type"),
    )


def _cpu_from(value: object) -> CpuInfo | None:
    if value is None:
        return None
    section = _object(value, "cpu")
    return CpuInfo(
        _string(_required(section, "model", "cpu"), "cpu.model"),
        _strings(_required(section, "flags", "cpu"), "cpu.flags"),
    )


# --- files and directories -----------------------------------------------------------------


class _DirFd:
    """A directory descriptor as a context manager."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)


def _open_dir(path: str) -> int:
    return os.open(path, _OPEN_DIR)


def _open_image_dir(image_dir: str) -> _DirFd:
    try:
        return _DirFd(_open_dir(image_dir))
    except FileNotFoundError as error:
        raise ImageMissing(f"no image at {image_dir}") from error
    except OSError as error:
        # With O_DIRECTORY | O_NOFOLLOW, Linux reports a symlink as ENOTDIR.
        if error.errno == errno.ELOOP or os.path.islink(image_dir):
            raise InvalidImage(f"{image_dir} is a symlink") from error
        if error.errno == errno.ENOTDIR:
            raise InvalidImage(f"{image_dir} is not a directory") from error
        raise InvalidImage(f"{image_dir}: cannot open: {error.strerror}") from error


def _open_regular(dir_fd: int, name: str) -> int:
    """Open `name` in the directory for reading; it must be a regular file, not a symlink."""
    try:
        fd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
    except FileNotFoundError as error:
        raise InvalidImage(f"{name} is missing") from error
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InvalidImage(f"{name} is a symlink") from error
        raise InvalidImage(f"{name}: cannot open: {error.strerror}") from error
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidImage(f"{name} is not a regular file")
    return fd


def _seal_files(dir_fd: int) -> None:
    """Files 0600 (root-owned when running as root), contents and directory fsynced."""
    as_root = os.geteuid() == 0
    os.fchmod(dir_fd, DIR_MODE)
    if as_root:
        os.fchown(dir_fd, 0, 0)
    for name in _regular_entries(dir_fd):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if as_root:
                os.fchown(fd, 0, 0)
            os.fchmod(fd, FILE_MODE)  # after fchown, which may clear mode bits
            os.fsync(fd)
        finally:
            os.close(fd)


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
            os.fsync(parent_fd)
            return
        try:
            exchanged = _rename_exchange(parent_fd, staging, final)
        except FileNotFoundError:
            continue  # removed meanwhile: try the plain rename again
        if exchanged:
            os.fsync(parent_fd)
            _remove_entry(parent_fd, staging)  # now the previous image
            return
        old = f"{OLD_PREFIX}{final}-{_random_hex()}"
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
        os.fsync(parent_fd)
        _remove_entry(parent_fd, old)
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
    try:
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        _unlink_at(parent_fd, name)
        return
    dir_fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    try:
        for entry in os.scandir(dir_fd):
            _remove_entry(dir_fd, entry.name)
    finally:
        os.close(dir_fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return


def _unlink_at(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return


def _lexists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _random_hex() -> str:
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
    dir_fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
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


def _in_use(parent_fd: int, name: str) -> bool:
    """Whether a process holds the lock of this (staging) directory."""
    try:
        fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
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
        dir_fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        return _read_metadata(dir_fd).checkpoint_id == name
    except InvalidImage:
        return False
    finally:
        os.close(dir_fd)
