"""The offline image builder: the selftest's one-program rootfs and the OCI image-layout archive
that `ctr images import` takes (its digests, config and names)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from arch.appliance.oci_image import (
    ENTRY_MTIME,
    IMAGE_PATH_ENV,
    is_static_elf,
    oci_layout_tar_bytes,
    program_rootfs_tar_bytes,
)

PROGRAM = b"\x7fELF not really, but bytes are bytes" * 100


def members(tar_bytes: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        return {info.name: info for info in archive.getmembers()}


def read(tar_bytes: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        extracted = archive.extractfile(name)
        assert extracted is not None, name
        return extracted.read()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_program_rootfs_holds_the_program_and_a_minimal_etc() -> None:
    layer = program_rootfs_tar_bytes("/bin/arch-selftest-payload", PROGRAM, "box")

    entries = members(layer)
    program = entries["bin/arch-selftest-payload"]
    assert program.isreg() and program.mode == 0o755 and program.size == len(PROGRAM)
    assert read(layer, "bin/arch-selftest-payload") == PROGRAM
    assert read(layer, "etc/hostname") == b"box\n"
    assert read(layer, "etc/group").startswith(b"root:x:0:")
    assert read(layer, "etc/passwd").startswith(b"root:x:0:0:")
    assert entries["tmp"].isdir() and entries["tmp"].mode == 0o1777
    directories = {name for name, info in entries.items() if info.isdir()}
    assert {"dev", "proc", "sys", "etc", "bin", "run"} <= directories
    assert not [name for name, info in entries.items() if info.issym() or info.islnk()]
    assert {(info.uid, info.gid, info.mtime) for info in entries.values()} == {(0, 0, ENTRY_MTIME)}


def test_program_rootfs_is_reproducible() -> None:
    first = program_rootfs_tar_bytes("/bin/p", PROGRAM, "box")

    assert program_rootfs_tar_bytes("/bin/p", PROGRAM, "box") == first
    assert program_rootfs_tar_bytes("/bin/p", PROGRAM + b"x", "box") != first


def test_oci_layout_archive_names_one_image_with_its_command() -> None:
    layer = program_rootfs_tar_bytes("/bin/p", PROGRAM, "box")

    archive = oci_layout_tar_bytes(layer, "localhost/t:abc", "a test", ("/bin/p", "run"))

    assert json.loads(read(archive, "oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    (manifest_descriptor,) = json.loads(read(archive, "index.json"))["manifests"]
    assert manifest_descriptor["annotations"] == {
        "io.containerd.image.name": "localhost/t:abc",
        "org.opencontainers.image.ref.name": "abc",
    }
    blobs = {
        "sha256:" + name.rsplit("/", 1)[1]: read(archive, name)
        for name, info in members(archive).items()
        if name.startswith("blobs/sha256/") and info.isreg()
    }
    assert all(sha256(data) == digest for digest, data in blobs.items())
    manifest = json.loads(blobs[manifest_descriptor["digest"]])
    assert manifest_descriptor["size"] == len(blobs[manifest_descriptor["digest"]])
    (layer_descriptor,) = manifest["layers"]
    assert layer_descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert gzip.decompress(blobs[layer_descriptor["digest"]]) == layer
    config = json.loads(blobs[manifest["config"]["digest"]])
    assert config["config"] == {
        "Env": [IMAGE_PATH_ENV],
        "Cmd": ["/bin/p", "run"],
        "WorkingDir": "/",
    }
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha256(layer)]}
    assert config["os"] == "linux"
    assert config["history"] == [{"created_by": "a test"}]


def test_oci_layout_default_command_is_a_shell() -> None:
    archive = oci_layout_tar_bytes(b"layer", "localhost/t:1", "a test")

    configs = [
        json.loads(read(archive, name))
        for name in members(archive)
        if name.startswith("blobs/sha256/") and b'"rootfs"' in read(archive, name)
    ]
    assert [config["config"]["Cmd"] for config in configs] == [["sh"]]


def test_is_static_elf_refuses_what_is_not_elf(tmp_path: Path) -> None:
    for name, content in (("empty", b""), ("script", b"#!/bin/sh\n" + bytes(100))):
        (tmp_path / name).write_bytes(content)

        assert is_static_elf(tmp_path / name) is False
    assert is_static_elf(tmp_path / "absent") is False


def test_is_static_elf_tells_a_dynamic_executable() -> None:
    assert is_static_elf(Path("/bin/sh").resolve()) is False
