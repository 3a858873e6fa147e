"""A container's filesystem state in a checkpoint: find its overlay layers, capture the upper
layer as an OCI layer tar, and apply such a tar to a new container's rootfs.

    mount = find_overlay_layers(rootfs)        # None: not overlay -> processes only
    digest = capture_layer(mount.upperdir, tar_path, mount.opaque_xattr_names)
    journal = apply_layer(tar_path, new_rootfs, digest.sha256, digest.size)
    journal.commit()   # or journal.rollback()

apply_layer finds the overlay mounted at the new rootfs itself: a fresh one (empty upper layer)
or one whose upper layer was kept from an earlier run of the same container (reset.py), and
keeps its rollback material next to the upper layer, never in RAM (journal.py).

The overlay's discovery lives in overlay_mount.py; the archive's two directions in capture.py
and apply.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arch.checkpoint.layer import apply
from arch.checkpoint.layer.archive import DEFAULT_LIMITS, ArchiveLimits, read_members
from arch.checkpoint.layer.capture import LayerDigest, capture_layer
from arch.checkpoint.layer.common import LayerError
from arch.checkpoint.layer.journal import Journal
from arch.checkpoint.layer.overlay_mount import (
    OverlayMount,
    find_overlay_layers,
    parse_mountinfo_line,
    parse_overlay_options,
    split_escaped,
    unescape,
)

if TYPE_CHECKING:
    from arch.checkpoint.layer.policy import ArchivePolicy

__all__ = [
    "ArchiveLimits",
    "Journal",
    "LayerDigest",
    "LayerError",
    "OverlayMount",
    "apply_layer",
    "capture_layer",
    "find_overlay_layers",
    "parse_mountinfo_line",
    "parse_overlay_options",
    "read_members",
    "split_escaped",
    "unescape",
]


def apply_layer(tar_path: str, rootfs: str, expected_sha256: str, expected_size: int, *,
                limits: ArchiveLimits = DEFAULT_LIMITS, policy: ArchivePolicy | None = None
                ) -> Journal:
    """apply.apply_layer onto whatever is mounted at `rootfs` (an overlay, or a plain
    directory tree), under the archive `policy` when given."""
    return apply.apply_layer(tar_path, rootfs, expected_sha256, expected_size,
                                   overlay=find_overlay_layers(rootfs), limits=limits,
                                   policy=policy)
