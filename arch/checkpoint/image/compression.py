"""zstd compression of an image's memory pages and filesystem tar (metadata.json records it).

Bytes are the scarce resource under a Spot notice: a gp3 volume's baseline of 125 MB/s needs
107 s for 200 jobs x 64 MiB. zstd at LEVEL (measured on a mix of a Python heap, text, zero pages
and random bytes, on the 2-core development machine: level 1 stores 0.33 of the mix at ~270 MB/s
per core, level 3 0.32 at ~140 MB/s, level 6 0.31 at ~55 MB/s; CPU, not ratio, is what runs out
first when a whole host checkpoints at once) brings such a mix to a third.

Whether a file pays is decided from a sample (SAMPLE_CHUNKS evenly spread chunks, compressed at
LEVEL): memory that does not shrink below WORTHWHILE_RATIO (random bytes, encrypted or already
compressed data) is stored as it is, so that it does not pay twice (CPU now and at restore).

Stored names carry SUFFIX; the digest and size that metadata.json records (and the signature
covers) are those of the stored bytes. Decompression reads untrusted data: it hashes the stored
bytes as it reads them and never writes more than the size metadata.json records.

The binding (`zstandard`) is imported lazily: arch-runc's pass-through path never loads it, and a
host without it writes uncompressed images and refuses compressed ones with a clear reason.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

from arch.checkpoint.image.errors import InvalidImage

if TYPE_CHECKING:
    from collections.abc import Callable

ZSTD = "zstd"
SUFFIX = ".zst"
LEVEL = 1
WORTHWHILE_RATIO = 0.9
SAMPLE_CHUNKS = 8
SAMPLE_CHUNK_BYTES = 64 * 1024
# Below this a file is stored as it is: the frame overhead and the work are not worth it.
MIN_COMPRESS_BYTES = 64 * 1024
CHUNK_BYTES = 1024 * 1024
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class CompressionUnavailable(Exception):
    """The zstandard binding is not installed on this host."""


def binding() -> Any:
    try:
        import zstandard
    except ImportError as error:
        raise CompressionUnavailable("the Python zstandard package is not installed") from error
    return zstandard


def available() -> bool:
    try:
        binding()
    except CompressionUnavailable:
        return False
    return True


def compressor(level: int = LEVEL) -> Any:
    """A zstd compressor using every CPU (zstd's own worker threads)."""
    return binding().ZstdCompressor(level=level, threads=os.cpu_count() or 1)


def pays(fd: int, size: int) -> bool:
    """Whether compressing the open file (of `size` bytes) is worth it, judged from a sample."""
    if size < MIN_COMPRESS_BYTES:
        return False
    single = binding().ZstdCompressor(level=LEVEL)
    step = max(size // SAMPLE_CHUNKS, SAMPLE_CHUNK_BYTES)
    sampled = stored = 0
    for offset in range(0, size, step):
        chunk = os.pread(fd, SAMPLE_CHUNK_BYTES, offset)
        if not chunk:
            break
        sampled += len(chunk)
        stored += len(single.compress(chunk))
    return sampled > 0 and stored <= sampled * WORTHWHILE_RATIO


def compress_file(dir_fd: int, name: str, mode: int = 0o600) -> tuple[str, int] | None:
    """Replace `name` in the directory with `name`+SUFFIX when compressing it pays: the stored
    name and the original's size, else None (the file stays as it is)."""
    source = os.open(name, _READ_FILE, dir_fd=dir_fd)
    try:
        size = os.fstat(source).st_size
        if not pays(source, size):
            return None
        stored_name = name + SUFFIX
        target = os.open(stored_name, _NEW_FILE, mode, dir_fd=dir_fd)
        try:
            _compress_stream(source, target)
        except BaseException:
            os.close(target)
            os.unlink(stored_name, dir_fd=dir_fd)
            raise
        os.close(target)
    finally:
        os.close(source)
    os.unlink(name, dir_fd=dir_fd)
    return stored_name, size


def _compress_stream(source: int, target: int) -> None:
    with compressor().stream_writer(_FdWriter(target), closefd=False) as writer:
        while True:
            chunk = os.read(source, CHUNK_BYTES)
            if not chunk:
                break
            writer.write(chunk)


class _FdWriter:
    """The file object zstandard's stream writer writes to: a descriptor, written fully."""

    def __init__(self, fd: int, observe: Callable[[bytes], None] | None = None) -> None:
        self.fd = fd
        self.observe = observe

    def write(self, data: bytes) -> int:
        if self.observe is not None:
            self.observe(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        return len(data)

    def flush(self) -> None:
        pass


class HashingSink:
    """Where a compressing writer puts its output: a descriptor, with the stored bytes' sha256
    and count (what metadata.json records for a compressed file)."""

    def __init__(self, fd: int) -> None:
        self._digest = hashlib.sha256()
        self.size = 0
        self.file = _FdWriter(fd, self._count)

    def _count(self, data: bytes) -> None:
        self._digest.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def decompress(source: int, target: int, *, name: str, stored_size: int,
               stored_sha256: str | None, content_size: int) -> str:
    """Decompress the untrusted stored file `source` into `target`; the content's sha256.

    InvalidImage when the stored bytes are not `stored_size` bytes with `stored_sha256` (None:
    not recorded, the image is unsigned), when the stream is corrupt, or when it holds anything
    but exactly `content_size` bytes in one frame. Output is read in bounded chunks and never
    exceeds `content_size` (a small stream cannot make a huge file or buffer).
    """
    try:
        zstandard = binding()
    except CompressionUnavailable as error:
        raise InvalidImage(f"{name} is zstd-compressed: {error}") from error
    stored = _HashingReader(source, stored_size, name)
    content_digest = hashlib.sha256()
    written = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(
            stored, read_size=CHUNK_BYTES, read_across_frames=False, closefd=False
        ) as reader:
            while True:
                data = reader.read(min(CHUNK_BYTES, content_size - written + 1))
                if not data:
                    break
                written += len(data)
                if written > content_size:
                    raise InvalidImage(f"{name} holds more than the {content_size} bytes recorded")
                content_digest.update(data)
                _write_all(target, data)
    except zstandard.ZstdError as error:
        raise InvalidImage(f"{name}: corrupt zstd data: {error}") from error
    if written != content_size:
        raise InvalidImage(f"{name}: decompressed to {written} bytes of the {content_size} "
                           "recorded (truncated stream?)")  # fmt: skip
    stored.drain()  # anything after the frame is hashed too, then refused below
    if stored.read_bytes != stored_size:
        raise InvalidImage(f"{name}: read {stored.read_bytes} bytes, {stored_size} recorded")
    if stored_sha256 is not None and stored.hexdigest() != stored_sha256:
        raise InvalidImage(f"{name}: sha256 {stored.hexdigest()} does not match the recorded "
                           f"{stored_sha256}")  # fmt: skip
    if stored.after_frame:
        raise InvalidImage(f"{name}: {stored.after_frame} bytes follow the zstd frame")
    return content_digest.hexdigest()


class _HashingReader:
    """The stored file as zstandard's stream reader reads it: hashed and counted, never more
    than `limit` bytes (plus one, to notice a longer file)."""

    def __init__(self, fd: int, limit: int, name: str) -> None:
        self.fd = fd
        self.limit = limit
        self.name = name
        self.read_bytes = 0
        self.after_frame = 0
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        wanted = CHUNK_BYTES if size is None or size < 0 else size
        data = os.read(self.fd, min(wanted, self.limit + 1 - self.read_bytes))
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise InvalidImage(f"{self.name} is larger than the {self.limit} bytes recorded")
        self._digest.update(data)
        return data

    def drain(self) -> None:
        """Read what the decompressor left (bytes after its frame)."""
        before = self.read_bytes
        while self.read(CHUNK_BYTES):
            pass
        self.after_frame = self.read_bytes - before

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
