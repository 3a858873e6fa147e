"""Offline test images built from busybox-static: a rootfs tar, an OCI image-layout tarball
(for `ctr images import`), and unpacked rootfs directories (for runc bundles)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

# Fixed so that the same busybox always yields the same digests.
ENTRY_MTIME = 1_700_000_000
IMAGE_NAME = "docker.io/arch-test/busybox:latest"
DOCKER_IMAGE_NAME = "arch-test/busybox:latest"
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
_FILES = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": b"arch-test\n",
}

_GOARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


@dataclass(frozen=True)
class BusyboxImage:
    """Files of the busybox test image; built once per session."""

    rootfs_tar: Path
    oci_archive: Path
    name: str = IMAGE_NAME
    docker_name: str = DOCKER_IMAGE_NAME

    def unpack_rootfs(self, destination: Path) -> Path:
        """Extract the rootfs into `destination` (created) and return it."""
        destination.mkdir(parents=True, exist_ok=True)
        with tarfile.open(self.rootfs_tar) as archive:
            if sys.version_info >= (3, 12):
                archive.extractall(destination, filter="tar")
            else:
                archive.extractall(destination)
        return destination


def build_test_image(busybox: Path, work_dir: Path) -> BusyboxImage:
    """Write rootfs.tar and an OCI image-layout archive for `busybox` into `work_dir`."""
    work_dir.mkdir(parents=True, exist_ok=True)
    layer = rootfs_tar_bytes(busybox)
    rootfs_tar = work_dir / "rootfs.tar"
    rootfs_tar.write_bytes(layer)
    oci_archive = work_dir / "busybox-oci.tar"
    oci_archive.write_bytes(oci_layout_tar_bytes(layer, IMAGE_NAME))
    return BusyboxImage(rootfs_tar=rootfs_tar, oci_archive=oci_archive)


def busybox_applet_paths(busybox: Path) -> list[str]:
    """Install paths (e.g. `bin/sh`) of every applet this busybox provides."""
    listing = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return sorted({line.strip() for line in listing.splitlines() if line.strip()} - {"bin/busybox"})


def rootfs_tar_bytes(busybox: Path) -> bytes:
    """An uncompressed tar of a minimal rootfs: /bin/busybox plus applet symlinks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, mode in _DIRECTORIES.items():
            archive.addfile(_entry(name, tarfile.DIRTYPE, mode))
        busybox_data = busybox.read_bytes()
        archive.addfile(
            _entry("bin/busybox", tarfile.REGTYPE, 0o755, len(busybox_data)),
            io.BytesIO(busybox_data),
        )
        for name, content in _FILES.items():
            archive.addfile(_entry(name, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
        for applet in busybox_applet_paths(busybox):
            link = _entry(applet, tarfile.SYMTYPE, 0o777)
            link.linkname = "/bin/busybox"
            archive.addfile(link)
    return buffer.getvalue()


def _entry(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = ENTRY_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def oci_layout_tar_bytes(layer_tar: bytes, image_name: str) -> bytes:
    """An OCI image-layout archive holding one single-layer image named `image_name`."""
    blobs: dict[str, bytes] = {}
    layer_gz = gzip.compress(layer_tar, mtime=0)
    layer_descriptor = _store(blobs, "application/vnd.oci.image.layer.v1.tar+gzip", layer_gz)
    config = _json_bytes(
        {
            "architecture": _GOARCH.get(platform.machine(), platform.machine()),
            "os": "linux",
            "config": {"Env": [IMAGE_PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer_tar)]},
            "history": [{"created_by": "arch integration-test harness"}],
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
            archive.addfile(_entry(directory, tarfile.DIRTYPE, 0o755))
        for name, data in files.items():
            archive.addfile(_entry(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return buffer.getvalue()
