"""arch.checkpoint.image.compression and format 3 metadata: what pays, round trips, and the
untrusted stream's refusals (digest, truncation, a stream larger than recorded, trailing bytes)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import zstandard

from arch.checkpoint.image import compression
from arch.checkpoint.image.errors import InvalidImage
from arch.checkpoint.image.job_identity import JobIdentity
from arch.checkpoint.image.metadata import (
    ContainerEssentials,
    CriuFile,
    FilesystemInfo,
    ImageMetadata,
)
from arch.checkpoint.layer.capture import capture_layer
from arch.container import oci_spec

OCI_CONFIG = {"process": {"args": ["sh"], "env": [], "cwd": "/", "user": {"uid": 0, "gid": 0}},
              "root": {"path": "rootfs"}}  # fmt: skip
TEXT = b"ARCH checkpoint text, compressible and repeated " * 40_000


def write(directory: Path, name: str, data: bytes) -> None:
    (directory / name).write_bytes(data)


def unpack(directory: Path, name: str, **recorded: object) -> bytes:
    source = os.open(directory / name, os.O_RDONLY)
    target = os.open(directory / "out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        compression.decompress(source, target, name=name, **recorded)  # type: ignore[arg-type]
    finally:
        os.close(source)
        os.close(target)
    return (directory / "out").read_bytes()


def compressed_pages(tmp_path: Path) -> tuple[str, int, bytes]:
    write(tmp_path, "pages-1.img", TEXT)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        done = compression.compress_file(dir_fd, "pages-1.img")
    finally:
        os.close(dir_fd)
    assert done is not None
    stored_name, content_size = done
    return stored_name, content_size, (tmp_path / stored_name).read_bytes()


def test_compressible_pages_are_replaced_and_round_trip(tmp_path: Path) -> None:
    stored_name, content_size, stored = compressed_pages(tmp_path)
    assert stored_name == "pages-1.img.zst" and content_size == len(TEXT)
    assert not (tmp_path / "pages-1.img").exists() and len(stored) < len(TEXT) // 20
    assert oct((tmp_path / stored_name).stat().st_mode & 0o777) == "0o600"
    digest = unpack(tmp_path, stored_name, stored_size=len(stored),
                    stored_sha256=hashlib.sha256(stored).hexdigest(), content_size=len(TEXT))
    assert digest == TEXT


def test_incompressible_pages_stay_as_they_are(tmp_path: Path) -> None:
    random = os.urandom(1 << 20)
    write(tmp_path, "pages-1.img", random)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert compression.compress_file(dir_fd, "pages-1.img") is None
    finally:
        os.close(dir_fd)
    assert (tmp_path / "pages-1.img").read_bytes() == random
    assert not (tmp_path / "pages-1.img.zst").exists()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("flip", "corrupt zstd data|sha256"),
        ("truncate", "decompressed to|read"),
        ("trailing", "follow the zstd frame|corrupt zstd data"),
    ],
)
def test_a_damaged_stream_is_refused(tmp_path: Path, damage: str, reason: str) -> None:
    stored_name, content_size, stored = compressed_pages(tmp_path)
    data = bytearray(stored)
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        del data[len(data) // 2 :]
    else:
        data += b"extra"
    write(tmp_path, stored_name, bytes(data))
    with pytest.raises(InvalidImage, match=reason):
        # The recorded size and digest follow the damage (an unsigned image, or a writer that
        # recomputed them): the stream itself must be refused.
        unpack(tmp_path, stored_name, stored_size=len(data),
               stored_sha256=hashlib.sha256(bytes(data)).hexdigest(), content_size=content_size)


def test_a_digest_mismatch_is_refused(tmp_path: Path) -> None:
    stored_name, content_size, stored = compressed_pages(tmp_path)
    with pytest.raises(InvalidImage, match="sha256"):
        unpack(tmp_path, stored_name, stored_size=len(stored), stored_sha256="0" * 64,
               content_size=content_size)


def test_a_stream_larger_than_recorded_is_cut_off(tmp_path: Path) -> None:
    """A small stream of zeros that expands far beyond the recorded size never gets written."""
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 << 20))
    write(tmp_path, "pages-1.img.zst", bomb)
    with pytest.raises(InvalidImage, match="holds more than the 4096 bytes recorded"):
        unpack(tmp_path, "pages-1.img.zst", stored_size=len(bomb), stored_sha256=None,
               content_size=4096)
    assert (tmp_path / "out").stat().st_size <= 4096


def test_a_compressed_capture_decompresses_to_the_uncompressed_capture(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "text.txt").write_bytes(TEXT)
    (upper / "random.bin").write_bytes(os.urandom(100_000))
    plain = capture_layer(str(upper), str(tmp_path / "plain.tar"))
    packed = capture_layer(str(upper), str(tmp_path / "packed.tar.zst"), compressed=True)
    stored = (tmp_path / "packed.tar.zst").read_bytes()
    assert (packed.sha256, packed.size) == (plain.sha256, plain.size)
    assert packed.stored_sha256 == hashlib.sha256(stored).hexdigest()
    assert packed.stored_size == len(stored) < plain.size // 2
    unpacked = zstandard.ZstdDecompressor().decompressobj().decompress(stored)
    assert unpacked == (tmp_path / "plain.tar").read_bytes()


def compressed_metadata() -> ImageMetadata:
    return ImageMetadata.new(
        namespace="default", container_id="c", checkpoint_id="c", runc_version="1.1.5",
        criu_version="4.2.1",
        filesystem=FilesystemInfo.compressed_overlay("zstd", "a" * 64, 10, "b" * 64, 20),
        criu_files=(CriuFile("inventory.img", 1), CriuFile("dump.log", 1),
                    CriuFile("pages-1.img.zst", 5, None, "zstd", 9)),
        container=ContainerEssentials(),
        identity=JobIdentity.of(oci_spec.decode(json.dumps(OCI_CONFIG).encode()).spec,
                                "layers-sha256:" + "0" * 64),
        compression_level=compression.LEVEL,
    )  # fmt: skip


def metadata_document(**changes: object) -> dict[str, object]:
    document = compressed_metadata().to_dict()
    document.update(changes)
    return document


def parse(document: dict[str, object]) -> ImageMetadata:
    return ImageMetadata.from_json(json.dumps(document).encode())


def test_format_3_round_trips_its_compression_fields() -> None:
    metadata = parse(metadata_document())
    assert metadata.format_version == 3 and metadata.compressed
    assert metadata.compression_level == compression.LEVEL
    assert metadata.filesystem.tar_sha256 == "b" * 64 and metadata.filesystem.tar_size == 20
    (pages,) = [f for f in metadata.criu_files if f.compression]
    assert (pages.criu_name, pages.content_bytes) == ("pages-1.img", 9)
    assert parse(json.loads(metadata.to_json())) == metadata


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"format_version": 2}, "go together"),
        ({"compression": None}, "go together"),
        ({"filesystem": {"mode": "overlay", "tar": "rootfs-diff.tar", "sha256": "a" * 64,
                         "size": 10, "compression": "zstd", "content_sha256": "b" * 64,
                         "content_size": 20}}, "must be 'rootfs-diff.tar.zst'"),
        ({"compression": {"algorithm": "lz4", "level": 1}}, "not one of zstd"),
    ],
)  # fmt: skip
def test_inconsistent_compression_is_refused(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidImage, match=reason):
        parse(metadata_document(**changes))


def test_a_compressed_file_may_not_shadow_another() -> None:
    document = metadata_document()
    process = document["process"]
    assert isinstance(process, dict)
    process["criu_files"].append({"name": "pages-1.img", "size": 9})
    with pytest.raises(InvalidImage, match="lists a file twice"):
        parse(document)
