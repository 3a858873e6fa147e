"""Layer capture, validation and apply on plain directories (no mounts, no root needed except
where marked): header fields, determinism, symlink safety, refusals and round trips."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arch.checkpoint.layer.common import (
    escape_component,
    format_pax_time,
    parse_pax_time,
    unescape_component,
)
from arch.checkpoint.layer.filesystem import (
    ArchiveLimits,
    LayerError,
    apply_layer,
    capture_layer,
    read_members,
)
from arch.checkpoint.layer.members import Kind

MTIME_NS = 1_700_000_000_987_654_321


@given(st.integers(min_value=-(10**18), max_value=10**19))
def test_pax_time_round_trips_to_the_nanosecond(nanoseconds: int) -> None:
    assert parse_pax_time(format_pax_time(nanoseconds)) == nanoseconds


@pytest.mark.parametrize("text", ["", "1e9", "12.", "-", "1.2.3", " 5", "0x10"])
def test_invalid_pax_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pax_time(text)


def build_tree(root: Path, outside: Path) -> None:
    (root / "dir/sub").mkdir(parents=True)
    (root / "dir/sub/file").write_bytes(b"x" * 3000)
    (root / "dir/empty").mkdir()
    (root / "empty-file").touch()
    (root / "exec").write_bytes(b"#!/bin/sh\n")
    (root / "exec").chmod(0o751)
    os.link(root / "exec", root / "exec-link")
    os.symlink(str(outside), root / "escape")
    os.symlink("dir/sub/file", root / "rel")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "dir/sub/file", "user.note", b"\x00\xffbinary")
    os.utime(root / "dir/sub/file", ns=(MTIME_NS, MTIME_NS))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("must not be archived\n")
    root = tmp_path / "tree"
    root.mkdir()
    build_tree(root, outside)
    return root


def test_capture_writes_pax_headers_without_following_symlinks(tree: Path, tmp_path: Path
                                                               ) -> None:
    tar = tmp_path / "layer.tar"
    digest = capture_layer(str(tree), str(tar))

    with tarfile.open(tar) as archive:
        members = archive.getmembers()
    by_name = {member.name: member for member in members}
    assert [member.name for member in members] == [
        ".", "dir", "dir/empty", "dir/sub", "dir/sub/file", "empty-file", "escape", "exec",
        "exec-link", "fifo", "rel"]
    assert digest.entries == len(members)
    assert digest.size == tar.stat().st_size and digest.size % tarfile.RECORDSIZE == 0
    assert digest.sha256 == hashlib.sha256(tar.read_bytes()).hexdigest()
    file_member = by_name["dir/sub/file"]
    assert file_member.size == 3000
    assert file_member.pax_headers["mtime"] == "1700000000.987654321"
    assert file_member.pax_headers["SCHILY.xattr.user.note"].encode(
        "utf-8", "surrogateescape") == b"\x00\xffbinary"
    assert by_name["escape"].issym() and by_name["escape"].linkname.endswith("outside")
    assert by_name["exec-link"].islnk() and by_name["exec-link"].linkname == "exec"
    assert by_name["exec"].mode == 0o751
    assert by_name["fifo"].isfifo()
    assert not any("secret" in name for name in by_name)


def test_capture_is_deterministic(tree: Path, tmp_path: Path) -> None:
    first = capture_layer(str(tree), str(tmp_path / "1.tar"))
    second = capture_layer(str(tree), str(tmp_path / "2.tar"))
    assert first == second


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    result: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.normpath(os.path.join(dirpath, name))
            node = os.lstat(path)
            fields: tuple[Any, ...] = (node.st_mode, node.st_uid, node.st_gid, node.st_mtime_ns,
                                       tuple(sorted(os.listxattr(path, follow_symlinks=False))))
            if not stat.S_ISDIR(node.st_mode):
                fields += (node.st_size, node.st_nlink)
            if stat.S_ISLNK(node.st_mode):
                fields += (os.readlink(path),)
            elif stat.S_ISREG(node.st_mode):
                fields += (Path(path).read_bytes(),)
            result[os.path.relpath(path, root)] = fields
    return result


def test_capture_then_apply_into_an_empty_directory_round_trips(tree: Path, tmp_path: Path
                                                                ) -> None:
    tar = tmp_path / "layer.tar"
    digest = capture_layer(str(tree), str(tar))
    target = tmp_path / "target"
    target.mkdir()

    journal = apply_layer(str(tar), str(target), digest.sha256, digest.size)
    journal.commit()

    assert snapshot(target) == snapshot(tree)
    assert list(tmp_path.glob(".arch-rollback-*")) == []


def test_journal_can_be_used_once(tree: Path, tmp_path: Path) -> None:
    tar = tmp_path / "layer.tar"
    digest = capture_layer(str(tree), str(tar))
    target = tmp_path / "target"
    target.mkdir()
    journal = apply_layer(str(tar), str(target), digest.sha256, digest.size)
    journal.rollback()
    assert os.listdir(target) == []
    with pytest.raises(LayerError, match="already"):
        journal.commit()


@pytest.mark.root
def test_capture_turns_overlay_whiteouts_and_opaque_dirs_into_oci_markers(tmp_path: Path
                                                                          ) -> None:
    upper = tmp_path / "upper"
    (upper / "opaque").mkdir(parents=True)
    os.setxattr(upper / "opaque", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "opaque", "trusted.overlay.impure", b"y")
    (upper / "opaque/kept").write_text("kept\n")
    os.mknod(upper / "deleted", stat.S_IFCHR | 0o600, 0)
    os.link(upper / "deleted", upper / "also-deleted")  # overlay shares whiteout inodes

    capture_layer(str(upper), str(tmp_path / "layer.tar"))

    with tarfile.open(tmp_path / "layer.tar") as archive:
        members = archive.getmembers()
    assert [member.name for member in members] == [
        ".", ".wh.also-deleted", ".wh.deleted", "opaque", "opaque/.wh..wh..opq", "opaque/kept"]
    assert all(member.isreg() for member in members if ".wh." in member.name)
    assert "SCHILY.xattr.trusted.overlay.impure" not in members[3].pax_headers


def archive_file(path: Path, infos: list[tuple[tarfile.TarInfo, bytes]]) -> int:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in infos:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return os.open(path, os.O_RDONLY)


def member(name: str, member_type: bytes = tarfile.REGTYPE, linkname: str = ""
           ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = member_type
    info.linkname = linkname
    return info


def test_read_members_classifies_oci_markers(tmp_path: Path) -> None:
    fd = archive_file(tmp_path / "a.tar", [
        (member("./", tarfile.DIRTYPE), b""), (member("d/.wh..wh..opq"), b""),
        (member("d/.wh.gone"), b""),
        (member("d", tarfile.DIRTYPE), b""), (member("d/f"), b"data"),
        (member("d/l", tarfile.LNKTYPE, "d/f"), b"")])
    try:
        members = read_members(fd)
    finally:
        os.close(fd)
    assert [(m.kind, m.parts) for m in members] == [
        (Kind.DIRECTORY, ()), (Kind.OPAQUE, ("d",)), (Kind.WHITEOUT, ("d", "gone")),
        (Kind.DIRECTORY, ("d",)), (Kind.FILE, ("d", "f")), (Kind.HARDLINK, ("d", "l"))]


@pytest.mark.parametrize("infos", [
    [(member("../x"), b"")],
    [(member("/x"), b"")],
    [(member("a//b"), b"")],
    [(member("l", tarfile.SYMTYPE, "/"), b""), (member("l/x"), b"")],
    [(member("h", tarfile.LNKTYPE, "/etc/shadow"), b"")],
    [(member("x" * 300), b"")],
], ids=["dot-dot", "absolute", "empty component", "below symlink", "hard link out", "long"])
def test_read_members_refuses_hostile_names(tmp_path: Path,
                                            infos: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    fd = archive_file(tmp_path / "a.tar", infos)
    try:
        with pytest.raises(LayerError, match="refusing member"):
            read_members(fd)
    finally:
        os.close(fd)


def test_read_members_enforces_limits(tmp_path: Path) -> None:
    fd = archive_file(tmp_path / "a.tar", [(member(f"f{index}"), b"") for index in range(5)])
    try:
        with pytest.raises(LayerError, match="more than 4 members"):
            read_members(fd, ArchiveLimits(max_entries=4))
        assert len(read_members(fd, ArchiveLimits(max_entries=5))) == 5
    finally:
        os.close(fd)


def test_digest_mismatch_is_refused_before_anything_is_created(tree: Path, tmp_path: Path
                                                               ) -> None:
    tar = tmp_path / "layer.tar"
    digest = capture_layer(str(tree), str(tar))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(LayerError, match="sha256"):
        apply_layer(str(tar), str(target), "0" * 64, digest.size)
    assert os.listdir(target) == []
    assert list(tmp_path.glob(".arch-rollback-*")) == []


@given(st.text(alphabet=st.sampled_from([".", "w", "h", "a", "r", "c", "x"]), min_size=1,
               max_size=12))
def test_escaped_components_round_trip_and_never_look_like_whiteouts(component: str) -> None:
    escaped = escape_component(component)
    assert not escaped.startswith(".wh.")
    if escaped != component:
        assert unescape_component(escaped) == component


def test_read_members_unescapes_only_members_with_the_record(tmp_path: Path) -> None:
    escaped = {"ARCH.escaped": "1"}

    def marked(name: str, member_type: bytes = tarfile.REGTYPE, linkname: str = ""
               ) -> tarfile.TarInfo:
        info = member(name, member_type, linkname)
        info.pax_headers = dict(escaped)
        return info

    fd = archive_file(tmp_path / "a.tar", [
        (marked(".arch..wh.d", tarfile.DIRTYPE), b""),
        (marked(".arch..wh.d/.arch..wh..wh..opq"), b"not a marker"),
        (marked(".arch..wh.d/.wh..arch..wh.gone"), b""),
        (marked(".arch..wh.d/plain-link", tarfile.LNKTYPE, ".arch..wh.d/.arch..wh..wh..opq"),
         b""),
        (member(".arch..wh.old-image-file"), b"kept literally"),
        (member("x/.wh.y"), b"")])
    try:
        members = read_members(fd)
    finally:
        os.close(fd)
    assert [(m.kind, m.parts) for m in members] == [
        (Kind.DIRECTORY, (".wh.d",)), (Kind.FILE, (".wh.d", ".wh..wh..opq")),
        (Kind.WHITEOUT, (".wh.d", ".wh.gone")), (Kind.HARDLINK, (".wh.d", "plain-link")),
        (Kind.FILE, (".arch..wh.old-image-file",)), (Kind.WHITEOUT, ("x", "y"))]
    assert members[3].link_parts == (".wh.d", ".wh..wh..opq")
