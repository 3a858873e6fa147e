"""Layer capture and apply on real overlay mounts (made here in a tmp dir, unmounted at teardown).

The central check: modify a container-like merged view, capture its upperdir, apply the archive
to a fresh overlay of the same lower layer, and compare the two merged views completely.
Hostile archives and failures half-way must leave the target exactly as it was.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from arch.checkpoint.layer import apply, archive
from arch.checkpoint.layer.common import copy_range
from arch.checkpoint.layer.filesystem import (
    ArchiveLimits,
    LayerError,
    apply_layer,
    capture_layer,
    find_overlay_layers,
)

pytestmark = pytest.mark.root

MNT_DETACH = 2
BIG_FILE_SIZE = 20 * 1024 * 1024
LIBC = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: Path, fstype: str, options: str) -> None:
    if (
        LIBC.mount(source.encode(), os.fsencode(target), fstype.encode(), 0, os.fsencode(options))
        != 0
    ):
        code = ctypes.get_errno()
        raise OSError(code, f"mount {fstype} on {target} ({options}): {os.strerror(code)}")


def _unmount(target: Path) -> None:
    if LIBC.umount2(os.fsencode(target), 0) != 0:
        code = ctypes.get_errno()
        if code != errno.EBUSY or LIBC.umount2(os.fsencode(target), MNT_DETACH) != 0:
            raise OSError(code, f"umount {target}: {os.strerror(code)}")


@dataclass
class Overlay:
    lower: Path
    upper: Path
    work: Path
    merged: Path


class Mounts:
    """Mounts made by one test, unmounted newest first at teardown."""

    def __init__(self) -> None:
        self.targets: list[Path] = []

    def overlay(
        self, base: Path, lower: Path, *, options: str = "", layer_fs: Path | None = None
    ) -> Overlay:
        layer_root = layer_fs or base
        upper, work, merged = layer_root / "upper", layer_root / "work", base / "merged"
        for directory in (upper, work, merged):
            directory.mkdir(parents=True)
        all_options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        self.mount("overlay", merged, "overlay", all_options + (f",{options}" if options else ""))
        return Overlay(lower, upper, work, merged)

    def mount(self, source: str, target: Path, fstype: str, options: str) -> None:
        _mount(source, target, fstype, options)
        self.targets.append(target)

    def unmount(self, target: Path) -> None:
        _unmount(target)
        self.targets.remove(target)

    def unmount_all(self) -> None:
        failures = []
        for target in reversed(list(self.targets)):
            try:
                self.unmount(target)
            except OSError as error:
                failures.append(str(error))
        assert not failures, failures


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    made = Mounts()
    try:
        yield made
    finally:
        made.unmount_all()


# the scenario ---------------------------------------------------------------------------


def build_lower(lower: Path, outside: Path) -> None:
    """An image-like lower layer; `outside` is a directory symlinks may point to."""
    for directory in (
        "etc/conf.d/sub",
        "usr/bin",
        "usr/lib",
        "usr/share/doc",
        "var/cache/sub",
        "var/olddir",
        "data",
        "opt/untouched",
        "srv/tree/sub",
    ):
        (lower / directory).mkdir(parents=True)
    (lower / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (lower / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (lower / "etc/conf.d/a.conf").write_text("a=1\n")
    (lower / "etc/conf.d/sub/deep.conf").write_text("deep\n")
    (lower / "usr/bin/tool").write_bytes(b"\x7fELF tool")
    (lower / "usr/bin/tool").chmod(0o755)
    (lower / "usr/lib/libx.so").write_bytes(b"lib" * 100)
    (lower / "usr/share/doc/README").write_text("docs\n")
    (lower / "var/cache/c1").write_text("c1\n")
    (lower / "var/cache/sub/c2").write_text("c2\n")
    (lower / "var/olddir/x").write_text("x\n")
    (lower / "data/keep").write_text("keep\n")
    (lower / "opt/untouched/file").write_text("the image's\n")
    (lower / "srv/tree/a").write_text("a\n")
    (lower / "srv/tree/sub/b").write_text("b\n")
    (lower / "data/gone").write_text("gone\n")
    (lower / "data/file2dir").write_text("becomes a dir\n")
    (lower / "data/h1").write_text("lower hard link\n")
    os.link(lower / "data/h1", lower / "data/h2")
    os.symlink("etc/passwd", lower / "oldlink")
    os.symlink(str(outside), lower / "imglink")
    os.setxattr(lower / "usr/lib/libx.so", "user.origin", b"lower")


def modify_merged(merged: Path) -> None:
    """What a container does: every kind of change the layer format must carry."""
    (merged / "etc/new.conf").write_text("new\n")
    with open(merged / "etc/hosts", "a") as hosts:
        hosts.write("10.0.0.1 db\n")
    os.chmod(merged / "etc/hosts", 0o600)
    os.chown(merged / "etc/passwd", 1234, 5678)
    os.link(merged / "etc/passwd", merged / "etc/passwd.link")
    os.rename(merged / "etc/conf.d/a.conf", merged / "etc/conf.d/renamed.conf")
    _remove_tree(merged / "etc/conf.d/sub")
    os.setxattr(merged / "usr/lib/libx.so", "user.tag", b"changed \x00\xff binary")
    os.utime(merged / "usr/bin/tool", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    _remove_tree(merged / "usr/share")
    os.symlink("/opt/share", merged / "usr/share")
    _remove_tree(merged / "var/cache")  # then recreated: an opaque directory
    (merged / "var/cache").mkdir()
    (merged / "var/cache/fresh").write_text("fresh\n")
    _remove_tree(merged / "var/olddir")
    (merged / "var/olddir").write_text("a file where a directory was\n")
    (merged / "data/gone").unlink()
    (merged / "data/file2dir").unlink()
    (merged / "data/file2dir").mkdir()
    (merged / "data/file2dir/inside").write_text("inside\n")
    new = merged / "newdir/a/b"
    new.mkdir(parents=True)
    (new / "c.txt").write_text("c\n")
    (merged / "newdir/empty-file").touch()
    (merged / "newdir/empty-dir").mkdir()
    (merged / "newdir/h1").write_text("new hard link\n")
    os.link(merged / "newdir/h1", merged / "newdir/h2")
    os.symlink("../etc/hosts", merged / "newdir/hosts-link")
    os.mkfifo(merged / "newdir/fifo", 0o640)
    os.mknod(merged / "newdir/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chown(merged / "newdir/a", 42, 43)
    (merged / "newdir/setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(merged / "newdir/setuid", 0o4755)
    os.setxattr(merged / "newdir/a", "user.dir", b"dir xattr")
    os.setxattr(merged / "newdir/h1", "user.file", b"file xattr")
    (merged / ("n" * 150)).write_text("long name\n")
    with open(os.path.join(os.fsencode(merged), b"bin\xffname"), "wb") as odd:
        odd.write(b"not utf-8 name\n")
    locked = merged / "newdir/locked"
    locked.mkdir()
    (locked / "inner").write_text("inner\n")
    locked.chmod(0o500)
    big = merged / "zz-big"
    big.mkdir()
    (big / "blob.bin").write_bytes(_pattern(BIG_FILE_SIZE))


def modify_after_checkpoint(merged: Path) -> None:
    """What the restored job does before it fails and is restarted with its layer kept."""
    (merged / "later.txt").write_text("written after the checkpoint\n")
    (merged / "later-dir/deeper").mkdir(parents=True)
    (merged / "later-dir/deeper/file").write_text("later\n")
    (merged / "etc/new.conf").write_text("changed after the checkpoint\n")
    (merged / "data/keep").write_text("changed after the checkpoint\n")
    (merged / "oldlink").unlink()
    (merged / "newdir/empty-file").unlink()
    (merged / "newdir/a/later").write_text("later\n")
    os.chmod(merged / "opt/untouched", 0o700)
    (merged / "opt/untouched/later").write_text("later\n")
    (merged / "opt/untouched/file").unlink()
    os.setxattr(merged / "opt", "user.later", b"1")
    _remove_tree(merged / "srv/tree")
    (merged / "srv/tree").mkdir()
    (merged / "srv/tree/c").write_text("c\n")
    (merged / "var/cache/fresh").unlink()
    with open(merged / "zz-big/blob.bin", "r+b") as blob:
        blob.truncate(1000)


def _pattern(size: int) -> bytes:
    block = hashlib.sha256(b"seed").digest() * 128
    return (block * (size // len(block) + 1))[:size]


def _remove_tree(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            if not os.path.islink(os.path.join(dirpath, name)):
                os.rmdir(os.path.join(dirpath, name))
    os.rmdir(path)


def rollback_leftovers(overlay: Overlay) -> list[Path]:
    """Rollback backup directories next to the overlay's upper layer."""
    return sorted(overlay.upper.parent.glob(".arch-rollback-*"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def snapshot(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Everything observable about every node below root (atime and ctime aside)."""
    result: dict[bytes, tuple[Any, ...]] = {}
    root_bytes = os.fsencode(root)

    def visit(path: bytes) -> None:
        node = os.lstat(path)
        mode = node.st_mode
        xattrs = tuple(
            sorted(
                (name, os.getxattr(path, name, follow_symlinks=False))
                for name in os.listxattr(path, follow_symlinks=False)
            )
        )
        fields: tuple[Any, ...] = (
            stat.S_IFMT(mode),
            stat.S_IMODE(mode),
            node.st_uid,
            node.st_gid,
            node.st_mtime_ns,
            xattrs,
        )
        if stat.S_ISDIR(mode):
            result[path[len(root_bytes) :] or b"/"] = fields
            for name in sorted(os.listdir(path)):
                visit(os.path.join(path, name))
            return
        fields += (node.st_size, node.st_nlink, node.st_rdev)
        if stat.S_ISLNK(mode):
            fields += (os.readlink(path),)
        elif stat.S_ISREG(mode):
            with open(path, "rb") as content:
                fields += (hashlib.sha256(content.read()).hexdigest(),)
        result[path[len(root_bytes) :]] = fields

    visit(root_bytes)
    return result


@dataclass
class Scenario:
    source: Overlay
    outside: Path
    tar: Path
    sha256: str
    size: int

    def fresh_target(self, mounts: Mounts, base: Path, layer_fs: Path | None = None) -> Overlay:
        return mounts.overlay(base, self.source.lower, layer_fs=layer_fs)

    def kept_target(self, mounts: Mounts) -> Overlay:
        """The source container restarted in place: later changes in its upper layer, and its
        overlay mounted again (as containerd and Docker do for a new task)."""
        modify_after_checkpoint(self.source.merged)
        mounts.unmount(self.source.merged)
        source = self.source
        options = f"lowerdir={source.lower},upperdir={source.upper},workdir={source.work}"
        mounts.mount("overlay", source.merged, "overlay", options)
        return source


@pytest.fixture
def scenario(tmp_path: Path, mounts: Mounts) -> Scenario:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("must survive\n")
    lower = tmp_path / "lower"
    lower.mkdir()
    build_lower(lower, outside)
    source = mounts.overlay(tmp_path / "source", lower)
    modify_merged(source.merged)
    tar = tmp_path / "layer.tar"
    digest = capture_layer(str(source.upper), str(tar))
    return Scenario(source, outside, tar, digest.sha256, digest.size)


# finding the layers ---------------------------------------------------------------------


def test_find_overlay_layers_of_a_real_mount_with_awkward_paths(
    tmp_path: Path, mounts: Mounts
) -> None:
    lowers = [tmp_path / "low er,1:x", tmp_path / "lower2"]
    upper, work, merged = tmp_path / "up per:,y", tmp_path / "work", tmp_path / "mer ged"
    for directory in (*lowers, upper, work, merged):
        directory.mkdir()

    def escape(path: Path) -> str:
        return str(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")

    options = (
        f"lowerdir={escape(lowers[0])}:{escape(lowers[1])},upperdir={escape(upper)},"
        f"workdir={escape(work)},userxattr"
    )
    mounts.mount("overlay", merged, "overlay", options)

    found = find_overlay_layers(str(merged))

    assert found is not None
    assert found.mount_point == str(merged)
    assert found.lowerdirs == tuple(map(str, lowers))
    assert (found.upperdir, found.workdir) == (str(upper), str(work))
    assert "userxattr" in found.options
    assert found.opaque_xattr_names == ("user.overlay.opaque",)


def test_find_overlay_layers_sees_only_the_topmost_mount(tmp_path: Path, mounts: Mounts) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    overlay = mounts.overlay(tmp_path, lower)
    assert find_overlay_layers(str(overlay.merged)) is not None

    mounts.mount("tmpfs", overlay.merged, "tmpfs", "size=1m")
    assert find_overlay_layers(str(overlay.merged)) is None

    mounts.unmount(overlay.merged)
    assert find_overlay_layers(str(overlay.merged)) is not None
    assert find_overlay_layers(str(tmp_path)) is None


# capture + apply ------------------------------------------------------------------------


def test_capture_uses_oci_conventions_and_is_deterministic(
    scenario: Scenario, tmp_path: Path
) -> None:
    with tarfile.open(scenario.tar) as archive:
        members = {member.name: member for member in archive}
    assert members["data/.wh.gone"].isreg() and members["data/.wh.gone"].size == 0
    assert "var/cache/.wh..wh..opq" in members
    assert "etc/conf.d/.wh.a.conf" in members and "etc/conf.d/.wh.sub" in members
    assert members["newdir/h2"].islnk() and members["newdir/h2"].linkname == "newdir/h1"
    assert members["newdir/null"].ischr() and members["newdir/null"].devmajor == 1
    assert members["zz-big/blob.bin"].size == BIG_FILE_SIZE
    assert not any(
        key.startswith("SCHILY.xattr.trusted.overlay")
        for member in members.values()
        for key in member.pax_headers
    )
    names = list(members)
    assert names.index("var/cache/.wh..wh..opq") == names.index("var/cache") + 1

    again = capture_layer(str(scenario.source.upper), str(tmp_path / "again.tar"))
    assert (again.sha256, again.size) == (scenario.sha256, scenario.size)
    assert hashlib.sha256(scenario.tar.read_bytes()).hexdigest() == scenario.sha256
    assert scenario.tar.stat().st_size == scenario.size


def test_apply_reproduces_the_merged_view(
    scenario: Scenario, mounts: Mounts, tmp_path: Path
) -> None:
    target = scenario.fresh_target(mounts, tmp_path / "target")
    fds_before = open_fds()

    journal = apply_layer(str(scenario.tar), str(target.merged), scenario.sha256, scenario.size)

    assert snapshot(target.merged) == snapshot(scenario.source.merged)
    assert (scenario.outside / "sentinel").read_text() == "must survive\n"
    journal.commit()
    assert rollback_leftovers(target) == []
    assert open_fds() == fds_before
    assert snapshot(target.merged) == snapshot(scenario.source.merged)


def test_rollback_after_success_restores_the_image_exactly(
    scenario: Scenario, mounts: Mounts, tmp_path: Path
) -> None:
    target = scenario.fresh_target(mounts, tmp_path / "target")
    before = snapshot(target.merged)
    fds_before = open_fds()

    journal = apply_layer(str(scenario.tar), str(target.merged), scenario.sha256, scenario.size)
    assert snapshot(target.merged) != before
    assert rollback_leftovers(target) == [], "a fresh overlay needs no backups"
    journal.rollback()

    assert snapshot(target.merged) == before
    assert rollback_leftovers(target) == []
    assert open_fds() == fds_before


def test_apply_onto_a_kept_upper_layer_gives_exactly_the_image(
    scenario: Scenario, mounts: Mounts
) -> None:
    at_checkpoint = snapshot(scenario.source.merged)
    target = scenario.kept_target(mounts)
    assert snapshot(target.merged) != at_checkpoint

    journal = apply_layer(str(scenario.tar), str(target.merged), scenario.sha256, scenario.size)
    journal.commit()

    assert snapshot(target.merged) == at_checkpoint
    assert rollback_leftovers(target) == []
    assert (scenario.outside / "sentinel").read_text() == "must survive\n"


def test_rollback_onto_a_kept_upper_layer_gives_back_the_later_state(
    scenario: Scenario, mounts: Mounts
) -> None:
    target = scenario.kept_target(mounts)
    later = snapshot(target.merged)
    fds_before = open_fds()

    journal = apply_layer(str(scenario.tar), str(target.merged), scenario.sha256, scenario.size)
    assert len(rollback_leftovers(target)) == 1, "upper-layer files are kept as hard links"
    journal.rollback()

    assert snapshot(target.merged) == later
    assert rollback_leftovers(target) == []
    assert open_fds() == fds_before


def test_rollback_without_room_is_refused_before_anything_changes(
    tmp_path: Path, mounts: Mounts
) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "big.bin").write_bytes(_pattern(12 << 20))
    (lower / "small").write_text("small\n")
    source = mounts.overlay(tmp_path / "source", lower)
    (source.merged / "big.bin").unlink()  # the archive then deletes 12 MiB it does not hold
    (source.merged / "small").write_text("changed\n")
    digest = capture_layer(str(source.upper), str(tmp_path / "layer.tar"))
    small_fs = tmp_path / "small-fs"
    small_fs.mkdir()
    mounts.mount("tmpfs", small_fs, "tmpfs", "size=8m")
    target = mounts.overlay(tmp_path / "target", lower, layer_fs=small_fs)
    before = snapshot(target.merged)

    with pytest.raises(LayerError, match=r"not enough space for a rollback.*12\.0 MiB"):
        apply_layer(str(tmp_path / "layer.tar"), str(target.merged), digest.sha256, digest.size)

    assert snapshot(target.merged) == before
    assert list(target.upper.iterdir()) == []
    assert rollback_leftovers(target) == []


def test_failure_half_way_out_of_space_rolls_back(
    scenario: Scenario, mounts: Mounts, tmp_path: Path
) -> None:
    small_fs = tmp_path / "small"
    small_fs.mkdir()
    mounts.mount("tmpfs", small_fs, "tmpfs", "size=4m")
    target = scenario.fresh_target(mounts, tmp_path / "target", layer_fs=small_fs)
    before = snapshot(target.merged)
    fds_before = open_fds()

    with pytest.raises(LayerError, match=r"zz-big/blob.bin.*No space left"):
        apply_layer(str(scenario.tar), str(target.merged), scenario.sha256, scenario.size)

    assert snapshot(target.merged) == before
    assert rollback_leftovers(target) == []
    assert open_fds() == fds_before


def test_io_error_at_a_late_member_rolls_back(
    scenario: Scenario, mounts: Mounts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = scenario.fresh_target(mounts, tmp_path / "target")
    before = snapshot(target.merged)
    calls = []

    def failing_copy(source_fd: int, offset: int, target_fd: int, count: int) -> None:
        calls.append(count)
        if len(calls) == 12:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        copy_range(source_fd, offset, target_fd, count)

    monkeypatch.setattr(apply, "copy_range", failing_copy)

    with pytest.raises(LayerError, match="Input/output error"):
        apply_layer(str(scenario.tar), str(target.merged), scenario.sha256, scenario.size)

    assert len(calls) == 12
    assert snapshot(target.merged) == before


# hostile archives -----------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    pax: tuple[tuple[str, str], ...] = ()
    device: tuple[int, int] = (0, 0)


def write_archive(path: Path, entries: list[Entry]) -> tuple[str, int]:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.type
            info.size = len(entry.data)
            info.linkname = entry.linkname
            info.mode = 0o755 if entry.type == tarfile.DIRTYPE else 0o644
            info.pax_headers = dict(entry.pax)
            info.devmajor, info.devminor = entry.device
            archive.addfile(info, io.BytesIO(entry.data) if entry.data else None)
    content = path.read_bytes()
    return hashlib.sha256(content).hexdigest(), len(content)


ESCAPED = ("ARCH.escaped", "1")
FIRST = Entry("first-created-file", data=b"proves that rollback ran\n")
HOSTILE_ARCHIVES = {
    "absolute name": [FIRST, Entry("/etc/evil", data=b"x")],
    "dot-dot": [FIRST, Entry("../evil", data=b"x")],
    "dot-dot inside": [Entry("etc/../../evil", data=b"x")],
    "NUL in name": [Entry("x", pax=(("path", "etc/a\x00b"),))],
    "symlink then write through it": [
        Entry("a", tarfile.SYMTYPE, linkname="/etc"),
        Entry("a/passwd", data=b"x"),
    ],
    "relative symlink then write through it": [
        Entry("etc/up", tarfile.SYMTYPE, linkname="../.."),
        Entry("etc/up/evil", data=b"x"),
    ],
    "write through a symlink of the image": [FIRST, Entry("imglink/evil", data=b"x")],
    "directory through a symlink of the image": [FIRST, Entry("imglink/d", tarfile.DIRTYPE)],
    "hard link to an absolute path": [Entry("shadow", tarfile.LNKTYPE, linkname="/etc/shadow")],
    "hard link outside": [Entry("x", tarfile.LNKTYPE, linkname="../x")],
    "hard link to an image file": [Entry("p", tarfile.LNKTYPE, linkname="etc/passwd")],
    "hard link to a later member": [
        Entry("p", tarfile.LNKTYPE, linkname="q"),
        Entry("q", data=b"q"),
    ],
    "whiteout of dot-dot": [Entry("etc/.wh..."), Entry("etc/x", data=b"x")],
    "whiteout of dot": [Entry(".wh..")],
    "empty whiteout": [Entry("etc/.wh.")],
    "whiteout as a directory": [Entry(".wh.etc/passwd", data=b"x")],
    "unknown special whiteout": [Entry("etc/.wh..wh.plnk")],
    "whiteout that is a symlink": [Entry("etc/.wh.passwd", tarfile.SYMTYPE, linkname="x")],
    "overlay whiteout device": [Entry("etc/hosts", tarfile.CHRTYPE)],
    "unsupported type": [Entry("volume", b"V")],
    "overlay-private xattr": [
        Entry("etc", tarfile.DIRTYPE, pax=(("SCHILY.xattr.trusted.overlay.opaque", "y"),))
    ],
    "duplicate member": [Entry("dup", data=b"1"), Entry("dup", data=b"2")],
    "member below a file of the archive": [Entry("f", data=b"f"), Entry("f/g", data=b"g")],
    "whiteout with data (a real file of an image older than escaping)": [
        FIRST,
        Entry("etc/.wh.hosts", data=b"a real file named .wh.hosts\n"),
    ],
    "escaped name that is not canonical": [Entry(".arch.plain", pax=(ESCAPED,))],
    "unescaped whiteout-like directory in an escaped member": [
        Entry(".wh.dir/x", data=b"x", pax=(ESCAPED,))
    ],
    "escape record with another value": [Entry(".arch..wh.x", pax=(("ARCH.escaped", "2"),))],
}


@pytest.fixture
def image_target(tmp_path: Path, mounts: Mounts) -> tuple[Overlay, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("must survive\n")
    lower = tmp_path / "lower"
    lower.mkdir()
    build_lower(lower, outside)
    return mounts.overlay(tmp_path / "target", lower), outside


@pytest.mark.parametrize("case", sorted(HOSTILE_ARCHIVES))
def test_hostile_archive_is_refused_and_changes_nothing(
    case: str, image_target: tuple[Overlay, Path], tmp_path: Path
) -> None:
    target, outside = image_target
    sha256, size = write_archive(tmp_path / "hostile.tar", HOSTILE_ARCHIVES[case])
    before, outside_before = snapshot(target.merged), snapshot(outside)
    fds_before = open_fds()

    with pytest.raises(LayerError):
        apply_layer(str(tmp_path / "hostile.tar"), str(target.merged), sha256, size)

    assert open_fds() == fds_before
    assert snapshot(target.merged) == before
    assert snapshot(outside) == outside_before
    assert rollback_leftovers(target) == []


def test_whiteout_below_an_image_symlink_deletes_nothing(
    image_target: tuple[Overlay, Path], tmp_path: Path
) -> None:
    target, outside = image_target
    sha256, size = write_archive(tmp_path / "layer.tar", [Entry("imglink/.wh.sentinel")])

    apply_layer(str(tmp_path / "layer.tar"), str(target.merged), sha256, size).commit()

    assert (outside / "sentinel").read_text() == "must survive\n"


@pytest.mark.parametrize(
    "damage",
    ["checksum", "size", "truncated", "trailing garbage", "oversized header", "too many members"],
)
def test_damaged_archive_is_refused_and_changes_nothing(
    damage: str, image_target: tuple[Overlay, Path], tmp_path: Path
) -> None:
    target, _outside = image_target
    tar = tmp_path / "layer.tar"
    entries = [Entry("a", data=b"a" * 5000), Entry("b", data=b"b" * 5000)]
    limits = archive.DEFAULT_LIMITS
    if damage == "oversized header":
        entries.append(Entry("c", pax=(("SCHILY.xattr.user.big", "v" * 4096),)))
        limits = ArchiveLimits(max_extended_header=2048)
    elif damage == "too many members":
        limits = ArchiveLimits(max_entries=1)
    sha256, size = write_archive(tar, entries)
    content = tar.read_bytes()
    if damage == "checksum":
        tar.write_bytes(content[:700] + b"X" + content[701:])
    elif damage == "size":
        size += 1
    elif damage == "truncated":
        tar.write_bytes(content[:3000])
    elif damage == "trailing garbage":
        tar.write_bytes(content[:-512] + b"\x01" * 512)
    if damage in ("truncated", "trailing garbage"):  # digests of the damaged file: parser check
        sha256, size = hashlib.sha256(tar.read_bytes()).hexdigest(), tar.stat().st_size
    before = snapshot(target.merged)

    with pytest.raises(LayerError):
        apply_layer(str(tar), str(target.merged), sha256, size, limits=limits)

    assert snapshot(target.merged) == before


# overlay features the capture must handle or refuse -------------------------------------


def test_userxattr_mount_opaque_directory_is_captured(tmp_path: Path, mounts: Mounts) -> None:
    lower = tmp_path / "lower"
    (lower / "dir").mkdir(parents=True)
    (lower / "dir/old").write_text("old\n")
    overlay = mounts.overlay(tmp_path, lower, options="userxattr")
    _remove_tree(overlay.merged / "dir")
    (overlay.merged / "dir").mkdir()
    found = find_overlay_layers(str(overlay.merged))
    assert found is not None and found.upperdir == str(overlay.upper)

    capture_layer(found.upperdir, str(tmp_path / "layer.tar"), found.opaque_xattr_names)

    with tarfile.open(tmp_path / "layer.tar") as archive:
        names = archive.getnames()
    assert "dir/.wh..wh..opq" in names


def test_capture_refuses_a_redirected_directory(tmp_path: Path, mounts: Mounts) -> None:
    lower = tmp_path / "lower"
    (lower / "dir").mkdir(parents=True)
    (lower / "dir/only-in-lower").write_text("data\n")
    overlay = mounts.overlay(tmp_path, lower, options="redirect_dir=on")
    os.rename(overlay.merged / "dir", overlay.merged / "moved")

    with pytest.raises(LayerError, match="redirect"):
        capture_layer(str(overlay.upper), str(tmp_path / "layer.tar"))


# whiteout-like names of real files ---------------------------------------------------------

WHITEOUT_LIKE_FILES = {
    ".wh.config": b"a real file, not a deletion of config\n",
    ".wh..wh..opq": b"not an opaque marker\n",
    ".wh..wh.cache": b"fuse-overlayfs leaves these\n",
    ".arch.plain": b"the escape prefix itself\n",
    ".wh.dir/inner": b"inside a whiteout-like directory\n",
    ".wh.dir/.wh.nested": b"nested\n",
    "data/.wh.": b"only the prefix\n",
}


def test_whiteout_like_names_round_trip_as_files(tmp_path: Path, mounts: Mounts) -> None:
    lower = tmp_path / "lower"
    (lower / "data").mkdir(parents=True)
    for name in ("config", "nested", "data/.wh.from-image", "data/keep"):
        (lower / name).write_text(f"{name} of the image\n")
    source = mounts.overlay(tmp_path / "source", lower)
    for name, content in WHITEOUT_LIKE_FILES.items():
        (source.merged / name).parent.mkdir(exist_ok=True)
        (source.merged / name).write_bytes(content)
    os.link(source.merged / ".wh.config", source.merged / "link-to-literal")
    (source.merged / "data/.wh.from-image").unlink()  # a whiteout of a whiteout-like name
    tar = tmp_path / "layer.tar"
    digest = capture_layer(str(source.upper), str(tar))
    target = mounts.overlay(tmp_path / "target", lower)

    apply_layer(str(tar), str(target.merged), digest.sha256, digest.size).commit()

    assert snapshot(target.merged) == snapshot(source.merged)
    assert (target.merged / "config").read_text() == "config of the image\n"
    with tarfile.open(tar) as archive:
        visible = [member.name for member in archive]
    # What tools without ARCH's record see: deletions only where the container deleted.
    assert [name for name in visible if "/.wh." in f"/{name}"] == ["data/.wh..arch..wh.from-image"]


def test_archive_without_escape_records_reads_as_before(
    image_target: tuple[Overlay, Path], tmp_path: Path
) -> None:
    target, _outside = image_target
    sha256, size = write_archive(
        tmp_path / "layer.tar",
        [Entry(".arch..wh.x", data=b"an old image's file\n"), Entry("etc/.wh.hosts")],
    )

    apply_layer(str(tmp_path / "layer.tar"), str(target.merged), sha256, size).commit()

    assert (target.merged / ".arch..wh.x").read_text() == "an old image's file\n"
    assert not (target.merged / "etc/hosts").exists()


def test_backups_left_by_an_interrupted_restore_are_removed(
    scenario: Scenario, mounts: Mounts, tmp_path: Path
) -> None:
    target = scenario.fresh_target(mounts, tmp_path / "target")
    stale = target.upper.parent / ".arch-rollback-upper-x1y2z3"
    (stale / "files").mkdir(parents=True)
    (stale / "files/1").write_text("a killed restore's backup\n")
    other_layer = target.upper.parent / ".arch-rollback-another-upper-abc"
    other_layer.mkdir()

    apply_layer(str(scenario.tar), str(target.merged), scenario.sha256, scenario.size).commit()

    assert rollback_leftovers(target) == [other_layer]
    assert snapshot(target.merged) == snapshot(scenario.source.merged)
