"""Validation of checkpoint images, which may sit on shared storage that other hosts write.

Validation accepts only regular files (no symlinks, no subdirectories), exactly the files the
metadata lists, with the listed sizes, and a dump log (metadata's criu_log) that reports
success; everything is opened relative to a directory descriptor with O_NOFOLLOW.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from arch.checkpoint.image import signing
from arch.checkpoint.image.errors import ImageMissing, InvalidImage
from arch.checkpoint.image.metadata import (
    METADATA_FILE,
    SIGNATURE_FILE,
    ImageMetadata,
    parse_criu_version,
)
from arch.checkpoint.storage.beneath import fd_path, open_beneath

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

# The last line CRIU's dump logs when it succeeded (criu/cr-dump.c, 3.x and 4.x).
CRIU_DUMP_SUCCESS = "Dumping finished successfully"
CRIU_ERROR_MARKERS = ("Error (", "Dumping FAILED")
METADATA_MAX_BYTES = 4 * 1024 * 1024
DUMP_LOG_TAIL_BYTES = 64 * 1024
COPY_CHUNK_BYTES = 1024 * 1024
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class ValidImage:
    """An image that passed `validate`.

    From `validate_beneath`, `dir_fd` is the image directory's descriptor (owned: `close()`)
    and `path` names it through that descriptor, for runc and CRIU.
    """

    path: str
    metadata: ImageMetadata
    dir_fd: int | None = None

    def close(self) -> None:
        if self.dir_fd is not None:
            os.close(self.dir_fd)

    @property
    def tar_path(self) -> str | None:
        tar = self.metadata.filesystem.tar
        return None if tar is None else os.path.join(self.path, tar)


def read_metadata(image_dir: str) -> ImageMetadata:
    with open_image_dir(image_dir) as dir_fd:
        return read_metadata_at(dir_fd)


def validate(
    image_dir: str,
    criu_version: str | None = None,
    *,
    namespace: str | None = None,
    checkpoint_id: str | None = None,
    trust: signing.Trust | None = None,
) -> ValidImage:
    """Check that the image at `image_dir` is complete and usable; raise InvalidImage if not.

    `criu_version` is the restoring host's CRIU version: an image dumped by a newer CRIU major
    is refused. `namespace`/`checkpoint_id`, when given, must match the metadata. With a
    `trust`, its signature must be one the trust accepts. File digests are not computed here
    (see verify_tar_checksum and verify_criu_files).
    """
    with open_image_dir(image_dir) as dir_fd:
        metadata = validate_contents(dir_fd, trust)
    _check_usable(metadata, criu_version, namespace, checkpoint_id)
    return ValidImage(image_dir, metadata)


def validate_beneath(
    root_fd: int,
    relative: str,
    criu_version: str | None = None,
    *,
    namespace: str | None = None,
    checkpoint_id: str | None = None,
    trust: signing.Trust | None = None,
) -> ValidImage:
    """`validate` for the image `relative` beneath `root_fd`, resolved following no symlink
    (NotBeneath, an OSError, otherwise). The result holds the directory's descriptor."""
    try:
        dir_fd = open_beneath(root_fd, relative)
    except FileNotFoundError as error:
        raise ImageMissing(f"no image at {relative}") from error
    except NotADirectoryError as error:
        raise InvalidImage(f"{relative} is not a directory") from error
    try:
        metadata = validate_contents(dir_fd, trust)
        _check_usable(metadata, criu_version, namespace, checkpoint_id)
    except BaseException:
        os.close(dir_fd)
        raise
    return ValidImage(fd_path(dir_fd), metadata, dir_fd)


def _check_usable(
    metadata: ImageMetadata,
    criu_version: str | None,
    namespace: str | None,
    checkpoint_id: str | None,
) -> None:
    if namespace is not None and metadata.namespace != namespace:
        raise InvalidImage(f"image is for namespace {metadata.namespace!r}, not {namespace!r}")
    if checkpoint_id is not None and metadata.checkpoint_id != checkpoint_id:
        raise InvalidImage(
            f"image is for checkpoint id {metadata.checkpoint_id!r}, not {checkpoint_id!r}"
        )
    if criu_version is not None:
        _check_criu_compatible(metadata.criu_version, criu_version)


def verify_tar_checksum(image: ValidImage) -> None:
    """Stream the filesystem tar and compare its sha256 with the metadata's."""
    filesystem = image.metadata.filesystem
    if filesystem.tar is None:
        return
    digest = hashlib.sha256()
    with image_dir_of(image) as dir_fd:
        fd = open_regular(dir_fd, filesystem.tar)
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


def validate_contents(
    dir_fd: int, trust: signing.Trust | None = None, ignore: Callable[[str], bool] | None = None
) -> ImageMetadata:
    """Everything `validate` checks about the files, against the metadata on disk (files
    whose names `ignore` accepts aside: a staging dir's lease).

    With a `trust`, the signature is verified over the metadata's bytes before they are parsed,
    and a signed image must have a recorded sha256 for every file
    (arch.checkpoint.image.signing). Without one, signatures are not looked at.
    """
    entries = regular_entries(dir_fd)
    if ignore is not None:
        entries = {name: size for name, size in entries.items() if not ignore(name)}
    if METADATA_FILE not in entries:
        raise InvalidImage(f"{METADATA_FILE} is missing (incomplete image)")
    data = _read_small(dir_fd, METADATA_FILE, METADATA_MAX_BYTES)
    signed = False
    if trust is not None:
        stored = None
        if SIGNATURE_FILE in entries:
            stored = _read_small(dir_fd, SIGNATURE_FILE, signing.SIGNATURE_MAX_BYTES)
        signed = trust.check(data, stored)
    metadata = ImageMetadata.from_json(data)
    if signed:
        unsigned = [f.name for f in metadata.criu_files if f.sha256 is None]
        if unsigned:
            raise InvalidImage(f"{METADATA_FILE} records no sha256 for {', '.join(unsigned)}")
    expected = {METADATA_FILE: -1}
    if SIGNATURE_FILE in entries:
        expected[SIGNATURE_FILE] = -1
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
    _check_dump_log(dir_fd, metadata.criu_log)
    return metadata


def verify_criu_files(image: ValidImage, names: Collection[str] | None = None) -> None:
    """Compare the CRIU files (all, or `names`) with the sha256 the metadata records for them,
    before runc or CRIU read them; files without a recorded digest are not read."""
    listed = [
        (f.name, f.sha256)
        for f in image.metadata.criu_files
        if names is None or f.name in names
    ]
    with image_dir_of(image) as dir_fd:
        signing.check_digests(dir_fd, listed)


def validate_entry(parent_fd: int, name: str) -> ImageMetadata:
    try:
        dir_fd = os.open(name, OPEN_DIR, dir_fd=parent_fd)
    except OSError as error:
        raise InvalidImage(f"{name}: cannot open: {error.strerror}") from error
    try:
        return validate_contents(dir_fd)
    finally:
        os.close(dir_fd)


def regular_entries(dir_fd: int) -> dict[str, int]:
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


def read_metadata_at(dir_fd: int) -> ImageMetadata:
    return ImageMetadata.from_json(_read_small(dir_fd, METADATA_FILE, METADATA_MAX_BYTES))


def _read_small(dir_fd: int, name: str, limit: int) -> bytes:
    fd = open_regular(dir_fd, name)
    chunks: list[bytes] = []
    length = 0
    try:
        while length <= limit:
            chunk = os.read(fd, limit + 1 - length)
            if not chunk:
                break
            chunks.append(chunk)
            length += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise InvalidImage(f"{name} is larger than {limit} bytes")
    return data


def _check_dump_log(dir_fd: int, log_name: str) -> None:
    """CRIU's dump log must report success, with no error after the success line."""
    fd = open_regular(dir_fd, log_name)
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - DUMP_LOG_TAIL_BYTES), os.SEEK_SET)
        tail = os.read(fd, DUMP_LOG_TAIL_BYTES).decode("utf-8", errors="replace")
    finally:
        os.close(fd)
    lines = tail.splitlines()
    success = [i for i, line in enumerate(lines) if CRIU_DUMP_SUCCESS in line]
    if not success:
        raise InvalidImage(f"{log_name} does not end with {CRIU_DUMP_SUCCESS!r}")
    for line in lines[success[-1] + 1 :]:
        if any(marker in line for marker in CRIU_ERROR_MARKERS):
            raise InvalidImage(f"{log_name} reports an error after success: {line.strip()}")


def _check_criu_compatible(image_version: str, host_version: str) -> None:
    dumped = parse_criu_version(image_version, source="image CRIU version")
    restoring = parse_criu_version(host_version, source="this host's CRIU version")
    if dumped[0] > restoring[0]:
        raise InvalidImage(
            f"image was dumped by CRIU {'.'.join(map(str, dumped))}, a newer major version "
            f"than this host's CRIU {'.'.join(map(str, restoring))}"
        )


class DirFd:
    """A directory descriptor as a context manager."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)


def open_dir(path: str) -> int:
    return os.open(path, OPEN_DIR)


def open_image_dir(image_dir: str) -> DirFd:
    try:
        return DirFd(open_dir(image_dir))
    except FileNotFoundError as error:
        raise ImageMissing(f"no image at {image_dir}") from error
    except OSError as error:
        # With O_DIRECTORY | O_NOFOLLOW, Linux reports a symlink as ENOTDIR.
        if error.errno == errno.ELOOP or os.path.islink(image_dir):
            raise InvalidImage(f"{image_dir} is a symlink") from error
        if error.errno == errno.ENOTDIR:
            raise InvalidImage(f"{image_dir} is not a directory") from error
        raise InvalidImage(f"{image_dir}: cannot open: {error.strerror}") from error


def image_dir_of(image: ValidImage) -> DirFd:
    """A descriptor of the image's directory: its own (duplicated), else opened by path."""
    if image.dir_fd is not None:
        return DirFd(os.dup(image.dir_fd))
    return open_image_dir(image.path)


def open_regular(dir_fd: int, name: str) -> int:
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
