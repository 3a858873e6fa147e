"""Finding an overlay's layers in /proc/self/mountinfo: parsing and unescaping (no mounts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arch.checkpoint.layer.filesystem import (
    LayerError,
    find_overlay_layers,
    parse_mountinfo_line,
    parse_overlay_options,
    split_escaped,
    unescape,
)

OVERLAY_LINE = (
    rb"45 27 0:39 / /run/c\040d/rootfs rw,relatime shared:7 master:2 - overlay overlay "
    rb"rw,lowerdir=/l/lo\040w\134\0541\134:a:/l/2,upperdir=/u/u\040p\134\054x,"
    rb"workdir=/w,redirect_dir=off,uuid=on" + b"\n"
)


def mountinfo_line(mount_point: str, fstype: str, options: str = "rw") -> str:
    return f"30 1 0:40 / {mount_point} rw,relatime shared:1 - {fstype} {fstype} {options}\n"


def test_parse_mountinfo_line_undoes_octal_escapes() -> None:
    info = parse_mountinfo_line(OVERLAY_LINE)
    assert info.mount_point == "/run/c d/rootfs"
    assert (info.fstype, info.source) == ("overlay", "overlay")


def test_overlay_options_from_a_kernel_line() -> None:
    info = parse_mountinfo_line(OVERLAY_LINE)
    mount = parse_overlay_options(info.mount_point, info.super_options)
    assert mount.lowerdirs == ("/l/lo w,1:a", "/l/2")
    assert mount.upperdir == "/u/u p,x"
    assert mount.workdir == "/w"
    assert mount.options == {"rw": None, "redirect_dir": "off", "uuid": "on"}
    assert mount.opaque_xattr_names == ("trusted.overlay.opaque",)


def test_overlay_options_with_backslash_escaped_separators() -> None:
    mount = parse_overlay_options("/m", r"lowerdir=/a\:b:/c\,d,upperdir=/u\,v,workdir=/w,userxattr")
    assert mount.lowerdirs == ("/a:b", "/c,d")
    assert mount.upperdir == "/u,v"
    assert mount.xattr_prefix == "user.overlay."


def test_overlay_options_new_mount_api_layers_and_read_only_overlay() -> None:
    mount = parse_overlay_options("/m", "ro,lowerdir+=/l1,lowerdir+=/l2,datadir+=/d1")
    assert mount.lowerdirs == ("/l1", "/l2")
    assert mount.datadirs == ("/d1",)
    assert mount.upperdir is None and mount.workdir is None


def test_overlay_without_lowerdir_is_an_error() -> None:
    with pytest.raises(LayerError, match="no lowerdir"):
        parse_overlay_options("/m", "rw,upperdir=/u")


def test_malformed_mountinfo_line_is_an_error() -> None:
    with pytest.raises(LayerError):
        parse_mountinfo_line(b"1 2 3\n")


def test_find_overlay_layers_takes_the_last_mount_at_the_path(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (tmp_path / "alias").symlink_to(rootfs)
    overlay = mountinfo_line(str(rootfs), "overlay", "rw,lowerdir=/l,upperdir=/u,workdir=/w")
    tmpfs = mountinfo_line(str(rootfs), "tmpfs")
    other = mountinfo_line("/elsewhere", "overlay", "rw,lowerdir=/x")
    mountinfo = tmp_path / "mountinfo"

    mountinfo.write_text(other + tmpfs + overlay)
    found = find_overlay_layers(str(tmp_path / "alias"), str(mountinfo))
    assert found is not None and found.upperdir == "/u" and found.mount_point == str(rootfs)

    mountinfo.write_text(overlay + tmpfs)
    assert find_overlay_layers(str(rootfs), str(mountinfo)) is None

    mountinfo.write_text(other)
    assert find_overlay_layers(str(rootfs), str(mountinfo)) is None


def test_relative_layer_paths_of_a_docker_overlay2_mount_are_made_absolute(
        tmp_path: Path) -> None:
    home = tmp_path / "overlay2"
    for directory in ("abc123/diff", "abc123/work", "abc123/merged", "l/SHORT1", "l/SHORT2"):
        (home / directory).mkdir(parents=True)
    options = "rw,lowerdir=l/SHORT1:l/SHORT2,upperdir=abc123/diff,workdir=abc123/work"
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(mountinfo_line(str(home / "abc123/merged"), "overlay", options))

    found = find_overlay_layers(str(home / "abc123/merged"), str(mountinfo))

    assert found is not None
    assert found.lowerdirs == (str(home / "l/SHORT1"), str(home / "l/SHORT2"))
    assert (found.upperdir, found.workdir) == (str(home / "abc123/diff"),
                                               str(home / "abc123/work"))


def test_relative_layer_paths_that_cannot_be_resolved_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(mountinfo_line(str(tmp_path / "rootfs"), "overlay",
                                        "rw,lowerdir=l/X,upperdir=elsewhere/diff,workdir=w"))

    with pytest.raises(LayerError, match="relative layer paths"):
        find_overlay_layers(str(tmp_path / "rootfs"), str(mountinfo))


def test_find_overlay_layers_in_this_process_for_a_plain_directory(tmp_path: Path) -> None:
    assert find_overlay_layers(str(tmp_path)) is None


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


@given(st.lists(st.text(alphabet="ab:,\\ /", min_size=1), min_size=1, max_size=5))
def test_escaped_layer_lists_split_back_into_the_same_paths(paths: list[str]) -> None:
    joined = ":".join(_escape(path) for path in paths)
    assert [unescape(piece) for piece in split_escaped(joined, ":")] == paths
