"""Which overlay is mounted at a container's rootfs, and its layers, read from mountinfo.

Mountinfo escaping, in the order it has to be undone: the kernel writes space, tab, newline,
backslash (and, in super options, comma) as octal `\\ooo`; inside overlay's path options, a
backslash escapes the next character (`\\:` and `\\,` in a lowerdir or upperdir path), and
`lowerdir` separates layers with unescaped colons.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from arch.checkpoint.layer.common import TRUSTED_OVERLAY_PREFIX, USER_OVERLAY_PREFIX, LayerError

MOUNTINFO = "/proc/self/mountinfo"
OVERLAY_FSTYPE = "overlay"
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class MountInfo:
    """The fields of one /proc/self/mountinfo line that matter here (unescaped)."""

    mount_point: str
    fstype: str
    source: str
    super_options: str  # raw: split it at commas before undoing octal escapes


@dataclass(frozen=True)
class OverlayMount:
    mount_point: str
    lowerdirs: tuple[str, ...]  # topmost first, as in the lowerdir option
    upperdir: str | None  # None for a read-only overlay (no upper layer)
    workdir: str | None
    datadirs: tuple[str, ...] = ()  # data-only lower layers (datadir+)
    options: Mapping[str, str | None] = field(default_factory=dict)  # the others

    @property
    def xattr_prefix(self) -> str:
        """Where overlay keeps its own xattrs in the layers (`userxattr` moves them)."""
        return USER_OVERLAY_PREFIX if "userxattr" in self.options else TRUSTED_OVERLAY_PREFIX

    @property
    def opaque_xattr_names(self) -> tuple[str, ...]:
        return (self.xattr_prefix + "opaque",)


def find_overlay_layers(rootfs: str, mountinfo_path: str = MOUNTINFO) -> OverlayMount | None:
    """The overlay mounted at `rootfs` (the topmost mount there), or None when what is mounted
    there is not overlay (or nothing is)."""
    mount_point = os.path.realpath(rootfs)
    with open(mountinfo_path, "rb") as mountinfo:
        entries = [parse_mountinfo_line(line) for line in mountinfo if line.strip()]
    stacked = [entry for entry in entries if entry.mount_point == mount_point]
    if not stacked or stacked[-1].fstype != OVERLAY_FSTYPE:
        return None
    return with_absolute_layers(parse_overlay_options(mount_point, stacked[-1].super_options))


def with_absolute_layers(mount: OverlayMount) -> OverlayMount:
    """The mount with relative layer paths made absolute.

    The kernel shows layer paths as they were given. Docker's overlay2 driver mounts with paths
    relative to its home (`lowerdir=l/ABC:l/DEF,upperdir=<id>/diff`) when absolute ones would
    not fit in a page (images with many layers); its mount point is `<home>/<id>/merged`. So
    the base is the parent of the mount point's ancestor named like upperdir's first component.
    """
    paths = [*mount.lowerdirs, *mount.datadirs, mount.upperdir or "", mount.workdir or ""]
    if all(os.path.isabs(path) for path in paths if path):
        return mount
    base = _relative_layers_base(mount)
    if base is None:
        raise LayerError(f"overlay at {mount.mount_point}: relative layer paths that cannot be "
                         f"resolved (upperdir={mount.upperdir!r})")

    def absolute(path: str) -> str:
        return os.path.join(base, path)

    return OverlayMount(
        mount.mount_point, tuple(map(absolute, mount.lowerdirs)),
        None if mount.upperdir is None else absolute(mount.upperdir),
        None if mount.workdir is None else absolute(mount.workdir),
        tuple(map(absolute, mount.datadirs)), mount.options)


def _relative_layers_base(mount: OverlayMount) -> str | None:
    if mount.upperdir is None or os.path.isabs(mount.upperdir):
        return None
    first = mount.upperdir.split("/", 1)[0]
    ancestor = os.path.dirname(mount.mount_point)
    while ancestor not in ("/", ""):
        if os.path.basename(ancestor) == first:
            base = os.path.dirname(ancestor)
            return base if os.path.isdir(os.path.join(base, mount.upperdir)) else None
        ancestor = os.path.dirname(ancestor)
    return None


def parse_mountinfo_line(line: bytes) -> MountInfo:
    fields = line.rstrip(b"\n").split(b" ")
    try:
        separator = fields.index(b"-", 6)
        mount_point = fields[4]
        fstype, source, super_options = fields[separator + 1: separator + 4]
    except ValueError as error:
        raise LayerError(f"unexpected mountinfo line: {line!r}") from error
    return MountInfo(_unescape_octal(mount_point), _unescape_octal(fstype),
                     _unescape_octal(source), os.fsdecode(super_options))


def parse_overlay_options(mount_point: str, super_options: str) -> OverlayMount:
    lowerdirs: list[str] = []
    datadirs: list[str] = []
    paths: dict[str, str] = {}
    others: dict[str, str | None] = {}
    for raw_option in split_escaped(super_options, ","):
        option = _unescape_octal(os.fsencode(raw_option))
        key, has_value, value = option.partition("=")
        if key == "lowerdir":
            lowerdirs.extend(unescape(layer) for layer in split_escaped(value, ":") if layer)
        elif key == "lowerdir+":
            lowerdirs.append(unescape(value))
        elif key == "datadir+":
            datadirs.append(unescape(value))
        elif key in ("upperdir", "workdir"):
            paths[key] = unescape(value)
        else:
            others[key] = value if has_value else None
    if not lowerdirs:
        raise LayerError(f"overlay at {mount_point} has no lowerdir: {super_options!r}")
    return OverlayMount(mount_point, tuple(lowerdirs), paths.get("upperdir"),
                        paths.get("workdir"), tuple(datadirs), others)


def split_escaped(text: str, separator: str) -> list[str]:
    """Split at separators not escaped by a backslash; escapes are kept for unescape()."""
    pieces: list[str] = []
    current: list[str] = []
    characters = iter(text)
    for character in characters:
        if character == "\\":
            current.append(character)
            current.append(next(characters, ""))
        elif character == separator:
            pieces.append("".join(current))
            current = []
        else:
            current.append(character)
    pieces.append("".join(current))
    return pieces


def unescape(text: str) -> str:
    """Overlay's option escaping: a backslash stands for the character after it."""
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


def _unescape_octal(field_bytes: bytes) -> str:
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda match: bytes([int(match.group(1), 8)]),
                                         field_bytes))
