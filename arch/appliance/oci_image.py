"""Tiny offline container images: a rootfs layer tar (from a static busybox, or from one static
program) and an OCI image-layout archive that `ctr images import` accepts. No registry is needed.

`archctl selftest` builds its image from its static payload (arch/appliance/selftest_payload.c);
the integration-test harness (tests/integration/harness) and benchmarks/ from a static busybox.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import struct
import subprocess
import tarfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

# Fixed so that the same busybox always yields the same digests.
ENTRY_MTIME = 1_700_000_000
IMAGE_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_DIRECTORIES = {
    "bin": 0o755,
    "sbin": 0o755,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "etc": 0o755,
    "root": 0o700,
    "run": 0o755,
    "var": 0o755,
    "tmp": 0o1777,
}
_BASE_FILES = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
}

_GOARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}
_ELF_MAGIC = b"\x7fELF"
_PT_INTERP = 3


def is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF file without a program interpreter (static)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if len(data) < 0x40 or data[:4] != _ELF_MAGIC or data[4] != 2 or data[5] != 1:
        return False
    (program_header_offset,) = struct.unpack_from("<Q", data, 0x20)
    entry_size, entry_count = struct.unpack_from("<HH", data, 0x36)
    for index in range(entry_count):
        offset = program_header_offset + index * entry_size
        if offset + 4 > len(data):
            return False
        if struct.unpack_from("<I", data, offset)[0] == _PT_INTERP:
            return False
    return True


def busybox_applet_paths(busybox: Path) -> list[str]:
    """Install paths (e.g. `bin/sh`) of every applet this busybox provides."""
    listing = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return sorted({line.strip() for line in listing.splitlines() if line.strip()} - {"bin/busybox"})


def rootfs_tar_bytes(busybox: Path, hostname: str) -> bytes:
    """An uncompressed tar of a minimal rootfs: /bin/busybox plus applet symlinks."""
    links = {applet: "/bin/busybox" for applet in busybox_applet_paths(busybox)}
    return _minimal_rootfs_tar_bytes("bin/busybox", busybox.read_bytes(), hostname, links)


def program_rootfs_tar_bytes(image_path: str, program: bytes, hostname: str) -> bytes:
    """An uncompressed tar of a minimal rootfs whose only program is the static `program`,
    at `image_path` (absolute, e.g. /bin/NAME)."""
    return _minimal_rootfs_tar_bytes(image_path.lstrip("/"), program, hostname, {})


def _minimal_rootfs_tar_bytes(
    program_name: str, program: bytes, hostname: str, links: dict[str, str]
) -> bytes:
    """The standard directories, /etc/passwd, /etc/group and /etc/hostname, the program (0755)
    and `links` (symlink name -> target)."""
    files = {**_BASE_FILES, "etc/hostname": f"{hostname}\n".encode()}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, mode in _DIRECTORIES.items():
            archive.addfile(tar_entry(name, tarfile.DIRTYPE, mode))
        entry = tar_entry(program_name, tarfile.REGTYPE, 0o755, len(program))
        archive.addfile(entry, io.BytesIO(program))
        for name, content in files.items():
            entry = tar_entry(name, tarfile.REGTYPE, 0o644, len(content))
            archive.addfile(entry, io.BytesIO(content))
        for name, target in links.items():
            link = tar_entry(name, tarfile.SYMTYPE, 0o777)
            link.linkname = target
            archive.addfile(link)
    return buffer.getvalue()


def tar_entry(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    """A root-owned tar member header with the fixed mtime."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = ENTRY_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def oci_layout_tar_bytes(
    layer_tar: bytes, image_name: str, created_by: str, command: Sequence[str] = ("sh",)
) -> bytes:
    """An OCI image-layout archive holding one single-layer image named `image_name` whose
    default command is `command`."""
    blobs: dict[str, bytes] = {}
    layer_gz = gzip.compress(layer_tar, mtime=0)
    layer_descriptor = _store(blobs, "application/vnd.oci.image.layer.v1.tar+gzip", layer_gz)
    config = _json_bytes(
        {
            "architecture": _GOARCH.get(platform.machine(), platform.machine()),
            "os": "linux",
            "config": {"Env": [IMAGE_PATH_ENV], "Cmd": list(command), "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer_tar)]},
            "history": [{"created_by": created_by}],
        }
    )
    config_descriptor = _store(blobs, "application/vnd.oci.image.config.v1+json", config)
    manifest = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_descriptor,
            "layers": [layer_descriptor],
        }
    )
    manifest_descriptor = _store(blobs, "application/vnd.oci.image.manifest.v1+json", manifest)
    manifest_descriptor["annotations"] = {
        "io.containerd.image.name": image_name,
        "org.opencontainers.image.ref.name": image_name.rsplit(":", 1)[-1],
    }
    index = _json_bytes({"schemaVersion": 2, "manifests": [manifest_descriptor]})
    return _tar_of(
        {
            "oci-layout": _json_bytes({"imageLayoutVersion": "1.0.0"}),
            "index.json": index,
            **{f"blobs/sha256/{digest.split(':', 1)[1]}": data for digest, data in blobs.items()},
        }
    )


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json_bytes(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _store(blobs: dict[str, bytes], media_type: str, data: bytes) -> dict[str, object]:
    digest = _digest(data)
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for directory in ("blobs", "blobs/sha256"):
            archive.addfile(tar_entry(directory, tarfile.DIRTYPE, 0o755))
        for name, data in files.items():
            archive.addfile(tar_entry(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return buffer.getvalue()
