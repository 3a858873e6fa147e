"""Signed images: an HMAC-SHA256 over the image's place and metadata.json, which lists a sha256
of every image file.

Publication records the sha256 of every CRIU file (the tar's is recorded anyway) in
metadata.json and, with a key (arch.toml's image_key_file, on by default), writes SIGNATURE_FILE
beside it: `hmac-sha256-v2:<64 lowercase hex digits>\\n`, the MAC under the key of

    "arch-image-v2" NUL <namespace> NUL <checkpoint id or pool> NUL <metadata.json's bytes>

Binding the place means an image moved to another namespace, id or pool does not verify there.
Signing the bytes as stored needs no canonical JSON encoding, and a restore verifies the MAC over
the very bytes it then parses, before it uses anything in the image. Each file is then checked
against its digest before it is read: the tar while it is applied, the CRIU files before runc
restore, `criu cpuinfo check` and the credentials check read them.

A restore accepts a signature by any of its keys (`Trust`: the signing key and
image_verify_key_files, for rotation); an image without one restores only with
unsigned_images = "allow".

A key file holds a secret: a regular file owned by root, no access for group or others (0600 or
0400), at least MIN_KEY_BYTES bytes once surrounding whitespace is stripped (`openssl rand -hex
32` makes one). Its contents never appear in errors or logs.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from arch.checkpoint.image.errors import InvalidImage

if TYPE_CHECKING:
    from collections.abc import Iterable

SIGNATURE_PREFIX = b"hmac-sha256-v2:"
SIGNED_CONTEXT = b"arch-image-v2"
SIGNATURE_MAX_BYTES = 256
MIN_KEY_BYTES = 32
KEY_MAX_BYTES = 4096
HASH_CHUNK_BYTES = 1024 * 1024


class ImageKeyError(Exception):
    """The configured key file cannot be used (the message never holds the key)."""


def load_key(path: str) -> bytes:
    """The key in `path`, after checking that only root can read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageKeyError(f"image_key_file {path} is a symlink") from error
        raise ImageKeyError(f"image_key_file {path}: {error.strerror}") from error
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageKeyError(f"image_key_file {path} is not a regular file")
        if info.st_uid != 0:
            raise ImageKeyError(f"image_key_file {path} is owned by uid {info.st_uid}, not root")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ImageKeyError(
                f"image_key_file {path} has mode {mode:04o}: group and others must have no "
                "access (chmod 0600)"
            )
        data = os.read(fd, KEY_MAX_BYTES + 1)
    finally:
        os.close(fd)
    key = data.strip()
    if len(data) > KEY_MAX_BYTES:
        raise ImageKeyError(f"image_key_file {path} is larger than {KEY_MAX_BYTES} bytes")
    if len(key) < MIN_KEY_BYTES:
        raise ImageKeyError(
            f"image_key_file {path} holds fewer than {MIN_KEY_BYTES} bytes "
            "(make one with: openssl rand -hex 32)"
        )
    return key


def signature(key: bytes, metadata: bytes, namespace: str, checkpoint_id: str) -> bytes:
    """The contents of SIGNATURE_FILE for these metadata.json bytes of the image of
    `namespace`/`checkpoint_id` (a pool member's: the pool's name)."""
    signed = b"\0".join(
        (SIGNED_CONTEXT, namespace.encode("utf-8"), checkpoint_id.encode("utf-8"), metadata)
    )
    mac = hmac.new(key, signed, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + mac.encode("ascii") + b"\n"


@dataclass(frozen=True)
class Trust:
    """What a restore of the image at `namespace`/`checkpoint_id` accepts: a signature by one of
    `keys` (the signing key first, then the rotation keys), and with `unsigned` also none."""

    keys: tuple[bytes, ...]
    unsigned: bool
    namespace: str
    checkpoint_id: str

    def check(self, metadata: bytes, stored: bytes | None) -> bool:
        """True when `stored` (None: no signature file) signs `metadata` here; False for an
        unsigned image this host accepts; InvalidImage otherwise."""
        if stored is None or not self.keys:
            if self.unsigned:
                return False
            if stored is None:
                raise InvalidImage("the image is not signed, and this host requires signed images")
            raise InvalidImage(
                'the image is signed, but this host has no key to verify it (image_key_file = "")'
                " and refuses unsigned images"
            )
        expected = (signature(k, metadata, self.namespace, self.checkpoint_id) for k in self.keys)
        if not any(hmac.compare_digest(stored.strip(), e.strip()) for e in expected):
            keys = "key" if len(self.keys) == 1 else f"{len(self.keys)} keys"
            raise InvalidImage(
                f"the image's signature does not verify with this host's {keys} as an image of "
                f"{self.namespace}/{self.checkpoint_id} (another key, changed contents, or "
                "moved from elsewhere)"
            )
        return True


def file_sha256(dir_fd: int, name: str) -> str:
    """The sha256 of the regular file `name` in the directory (not following a symlink)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        digest = hashlib.sha256()
        while True:
            chunk = os.read(fd, HASH_CHUNK_BYTES)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
    finally:
        os.close(fd)


def check_digests(dir_fd: int, expected: Iterable[tuple[str, str | None]]) -> None:
    """InvalidImage when a file's sha256 differs from the one the metadata records (files the
    metadata gives no digest for are not checked)."""
    for name, sha256 in expected:
        if sha256 is not None and file_sha256(dir_fd, name) != sha256:
            raise InvalidImage(f"{name}: contents differ from the sha256 in the metadata")
