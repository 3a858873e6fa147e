"""Offline test images built from busybox-static: a rootfs tar, an OCI image-layout tarball
(for `ctr images import`), and unpacked rootfs directories (for runc bundles)."""

from __future__ import annotations

import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from arch.appliance import oci_image
from arch.appliance.oci_image import ENTRY_MTIME, IMAGE_PATH_ENV, busybox_applet_paths

__all__ = [
    "DOCKER_IMAGE_NAME",
    "ENTRY_MTIME",
    "IMAGE_NAME",
    "IMAGE_PATH_ENV",
    "BusyboxImage",
    "build_test_image",
    "busybox_applet_paths",
    "oci_layout_tar_bytes",
    "rootfs_tar_bytes",
]

IMAGE_NAME = "docker.io/arch-test/busybox:latest"
DOCKER_IMAGE_NAME = "arch-test/busybox:latest"
HOSTNAME = "arch-test"
CREATED_BY = "arch integration-test harness"


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


def rootfs_tar_bytes(busybox: Path) -> bytes:
    """An uncompressed tar of a minimal rootfs: /bin/busybox plus applet symlinks."""
    return oci_image.rootfs_tar_bytes(busybox, HOSTNAME)


def oci_layout_tar_bytes(layer_tar: bytes, image_name: str) -> bytes:
    """An OCI image-layout archive holding one single-layer image named `image_name`."""
    return oci_image.oci_layout_tar_bytes(layer_tar, image_name, CREATED_BY)
