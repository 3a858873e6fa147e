"""A compressed image, unpacked for a restore into the restore's private work directory.

CRIU reads its files by name from one directory and seeks in the pages, and the layer apply path
reads members at their offsets in the tar: neither reads a zstd stream. So a restore of a
compressed image (metadata format 3) first writes, beneath its own work directory,
- `criu/`: every CRIU file, the compressed ones decompressed under the name CRIU expects, the
  others copied; runc restore then gets this directory as its --image-path;
- the tar, decompressed, which the apply path verifies against the tar's own sha256 and size
  exactly as it verifies an uncompressed image's tar.
Every stored file is read once, through the image's directory descriptor (O_NOFOLLOW), hashed
as it is read and compared with the digest metadata.json records (signed images record one for
every file); what CRIU and the apply path then read is this host's private copy, which nothing on
the shared storage can change meanwhile.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

from arch.checkpoint.image.compression import CHUNK_BYTES, decompress
from arch.checkpoint.image.errors import InvalidImage
from arch.checkpoint.image.validation import image_dir_of, open_regular

if TYPE_CHECKING:
    from arch.checkpoint.image.metadata import CriuFile
    from arch.checkpoint.image.validation import ValidImage

CRIU_DIR = "criu"
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def criu_files(image: ValidImage, work_dir: str) -> str:
    """Write the image's CRIU files, decompressed, into a new directory in `work_dir`; its path.
    InvalidImage when a stored file is not what metadata.json records."""
    target_dir = os.path.join(work_dir, CRIU_DIR)
    os.mkdir(target_dir, 0o700)
    with image_dir_of(image) as dir_fd:
        for criu_file in image.metadata.criu_files:
            _unpack_criu_file(dir_fd, criu_file, target_dir)
    return target_dir


def tar(image: ValidImage, work_dir: str) -> str:
    """Decompress the image's filesystem tar into `work_dir`; its path."""
    filesystem = image.metadata.filesystem
    assert filesystem.tar is not None and filesystem.size is not None
    assert filesystem.content_size is not None
    target = os.path.join(work_dir, os.path.basename(filesystem.tar))
    with image_dir_of(image) as dir_fd:
        source = open_regular(dir_fd, filesystem.tar)
        try:
            target_fd = os.open(target, _NEW_FILE, 0o600)
            try:
                decompress(source, target_fd, name=filesystem.tar, stored_size=filesystem.size,
                           stored_sha256=filesystem.sha256,
                           content_size=filesystem.content_size)  # fmt: skip
            finally:
                os.close(target_fd)
        finally:
            os.close(source)
    return target


def _unpack_criu_file(dir_fd: int, criu_file: CriuFile, target_dir: str) -> None:
    source = open_regular(dir_fd, criu_file.name)
    try:
        target = os.open(os.path.join(target_dir, criu_file.criu_name), _NEW_FILE, 0o600)
        try:
            if criu_file.compression is None:
                _copy_checked(source, target, criu_file)
            else:
                assert criu_file.content_size is not None
                decompress(source, target, name=criu_file.name, stored_size=criu_file.size,
                           stored_sha256=criu_file.sha256,
                           content_size=criu_file.content_size)  # fmt: skip
        finally:
            os.close(target)
    finally:
        os.close(source)


def _copy_checked(source: int, target: int, criu_file: CriuFile) -> None:
    digest = hashlib.sha256()
    copied = 0
    while True:
        chunk = os.read(source, min(CHUNK_BYTES, criu_file.size + 1 - copied))
        if not chunk:
            break
        copied += len(chunk)
        if copied > criu_file.size:
            raise InvalidImage(f"{criu_file.name} is larger than the {criu_file.size} bytes "
                               "recorded")  # fmt: skip
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view):]
    if copied != criu_file.size:
        raise InvalidImage(f"{criu_file.name}: read {copied} bytes, {criu_file.size} recorded")
    if criu_file.sha256 is not None and digest.hexdigest() != criu_file.sha256:
        raise InvalidImage(f"{criu_file.name}: sha256 {digest.hexdigest()} does not match the "
                           f"recorded {criu_file.sha256}")  # fmt: skip
