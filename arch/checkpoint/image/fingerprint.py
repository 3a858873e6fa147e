"""A fingerprint of the container image a rootfs came from, the same on every host.

runc is told nothing that names the image: config.json carries no image reference from ctr or
Docker (CRI's `io.kubernetes.cri.image-name` annotation is a mutable tag, not content), and the
overlay's lowerdir paths are this host's snapshot directories (containerd:
`.../snapshots/<n>/fs`; Docker: `.../overlay2/l/<short id>`), which differ between hosts and
between pulls. What is the same everywhere is the content the engine unpacked from the image's
layer tars: names, types, modes, owners, sizes, link targets, device numbers and file mtimes
all come from the tar headers.

So the fingerprint is a sha256 over the metadata of every entry of every lower layer, in order,
without reading file contents (a walk of the layer trees; see the README for its cost):
- directory mtimes are left out: an engine creates a parent directory the tar does not list
  with the time of the unpack;
- Docker's `<id>-init` layer is left out: Docker writes it per container (/etc/hosts,
  /etc/resolv.conf, ...), with that container's creation time.
Two images that differ only in the contents of a file of the same size and mtime have the same
fingerprint; images built from source differ in mtimes, so a new build is a new fingerprint.
"""

from __future__ import annotations

import hashlib
import os
import stat

FINGERPRINT_PREFIX = "layers-sha256:"
_DOCKER_INIT_SUFFIX = "-init"


def rootfs_fingerprint(rootfs: str) -> str | None:
    """The fingerprint of the image under an overlay rootfs; None for another kind of rootfs
    (OSError or LayerError when its layers cannot be read)."""
    from arch.checkpoint.layer.overlay_mount import find_overlay_layers

    overlay = find_overlay_layers(rootfs) if rootfs else None
    return None if overlay is None else image_fingerprint(overlay.lowerdirs)


def image_fingerprint(lowerdirs: tuple[str, ...] | list[str]) -> str:
    """The fingerprint of the image whose layers are `lowerdirs` (topmost first)."""
    digest = hashlib.sha256()
    for lowerdir in lowerdirs:
        if _is_docker_init_layer(lowerdir):
            continue
        layer = hashlib.sha256()
        _walk(lowerdir, "", layer)
        digest.update(layer.digest())
    return FINGERPRINT_PREFIX + digest.hexdigest()


def _is_docker_init_layer(lowerdir: str) -> bool:
    resolved = os.path.realpath(lowerdir)
    parent, name = os.path.split(resolved)
    return name == "diff" and os.path.basename(parent).endswith(_DOCKER_INIT_SUFFIX)


def _walk(directory: str, relative: str, digest: hashlib._Hash) -> None:
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        info = entry.stat(follow_symlinks=False)
        mode = info.st_mode
        path = f"{relative}/{entry.name}"
        fields = [path, oct(mode), str(info.st_uid), str(info.st_gid)]
        if stat.S_ISDIR(mode):
            digest.update(("\0".join(fields) + "\n").encode("utf-8", "surrogateescape"))
            _walk(entry.path, path, digest)
            continue
        fields.append(str(int(info.st_mtime)))
        if stat.S_ISREG(mode):
            fields.append(str(info.st_size))
        elif stat.S_ISLNK(mode):
            fields.append(os.readlink(entry.path))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            fields.append(f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}")
        digest.update(("\0".join(fields) + "\n").encode("utf-8", "surrogateescape"))
