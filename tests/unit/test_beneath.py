"""The resolver of paths beneath a root descriptor: openat2 and the descriptor walk alike."""

from __future__ import annotations

import os
import stat
import sys
from typing import TYPE_CHECKING

import pytest

from arch.checkpoint.storage import beneath
from arch.checkpoint.storage.beneath import (
    NotBeneath,
    components,
    fd_path,
    make_dirs_beneath,
    open_beneath,
    opened_root,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run each test with openat2 (which this kernel has) and with the fallback walk."""
    if request.param == "walk":
        monkeypatch.setattr(beneath, "_openat2_function", None)
        monkeypatch.setattr(beneath, "_openat2_missing", True)
    else:
        assert beneath._openat2() is not None, "openat2 missing: Linux >= 5.6 has it"
    yield request.param


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "a" / "b").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "root"


def inode(fd_or_path: int | str | Path) -> tuple[int, int]:
    info = os.fstat(fd_or_path) if isinstance(fd_or_path, int) else os.stat(fd_or_path)
    return info.st_dev, info.st_ino


def test_opens_a_plain_path(resolver: str, root: Path) -> None:
    with opened_root(str(root)) as root_fd:
        fd = open_beneath(root_fd, "a/b")
    try:
        assert inode(fd) == inode(root / "a" / "b")
    finally:
        os.close(fd)


def test_opens_a_file_with_given_flags(resolver: str, root: Path) -> None:
    with opened_root(str(root)) as root_fd:
        fd = open_beneath(root_fd, "a/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    assert stat.S_IMODE((root / "a" / "new").stat().st_mode) == 0o600


@pytest.mark.parametrize("link_target", ["outside", "root/a"], ids=["outside", "inside"])
def test_refuses_a_symlinked_component(
    resolver: str, root: Path, tmp_path: Path, link_target: str
) -> None:
    """Any symlink is refused, even one that points inside the root."""
    (root / "link").symlink_to(tmp_path / link_target)
    with opened_root(str(root)) as root_fd:
        with pytest.raises(NotBeneath, match="symlink"):
            open_beneath(root_fd, "link/b")
        with pytest.raises(NotBeneath, match="symlink"):
            open_beneath(root_fd, "link")
        with pytest.raises(NotBeneath):
            open_beneath(root_fd, "link/new", os.O_WRONLY | os.O_CREAT, 0o600)
    assert list((tmp_path / "outside").iterdir()) == []


def test_missing_is_file_not_found(resolver: str, root: Path) -> None:
    with opened_root(str(root)) as root_fd, pytest.raises(FileNotFoundError):
        open_beneath(root_fd, "a/missing/c")


@pytest.mark.parametrize("relative", ["../outside", "a/../../outside", "/etc", "a//b", "a/./b"])
def test_refuses_paths_that_are_not_plain(resolver: str, root: Path, relative: str) -> None:
    with opened_root(str(root)) as root_fd, pytest.raises(NotBeneath, match="plain"):
        open_beneath(root_fd, relative)


def test_components() -> None:
    assert components("") == []
    assert components("ns/id") == ["ns", "id"]
    with pytest.raises(NotBeneath):
        components("ns/\0")


def test_make_dirs_creates_missing_directories(resolver: str, root: Path) -> None:
    with opened_root(str(root)) as root_fd:
        fd = make_dirs_beneath(root_fd, "a/x/y", 0o700)
    try:
        assert inode(fd) == inode(root / "a" / "x" / "y")
    finally:
        os.close(fd)
    assert stat.S_IMODE((root / "a" / "x").stat().st_mode) == 0o700


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-directory", "dangling"])
def test_make_dirs_creates_nothing_past_a_symlink(
    resolver: str, root: Path, tmp_path: Path, dangling: bool
) -> None:
    target = tmp_path / ("nowhere" if dangling else "outside")
    (root / "a" / "ns").symlink_to(target)
    with opened_root(str(root)) as root_fd, pytest.raises(NotBeneath, match="'ns' is a symlink"):
        make_dirs_beneath(root_fd, "a/ns/job", 0o700)
    assert not (tmp_path / "nowhere").exists()
    assert list((tmp_path / "outside").iterdir()) == []


def test_fd_path_names_the_directory_after_it_moved(root: Path, tmp_path: Path) -> None:
    with opened_root(str(root)) as root_fd:
        fd = open_beneath(root_fd, "a/b")
    try:
        (root / "a").rename(tmp_path / "moved")
        (root / "a").symlink_to(tmp_path / "outside")
        assert inode(fd_path(fd)) == inode(tmp_path / "moved" / "b")
    finally:
        os.close(fd)


def test_remove_tree_at_removes_any_depth_and_never_follows_a_symlink(tmp_path: Path) -> None:
    """A chain deeper than Python's recursion limit and than the descriptors it may hold goes;
    a symlink inside is removed, not followed."""
    from arch.checkpoint.storage.beneath import REMOVAL_OPEN_DIRS, remove_tree_at

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    tree = tmp_path / "parent" / "doomed"
    tree.mkdir(parents=True)
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    depth = 1500
    assert depth > sys.getrecursionlimit() and depth > REMOVAL_OPEN_DIRS
    for level in range(depth):
        os.mkdir("d", dir_fd=fd)
        if level % 100 == 0:
            os.symlink(str(outside), "link", dir_fd=fd)
            os.mkfifo("fifo", dir_fd=fd)
        next_fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = next_fd
    os.close(fd)
    parent_fd = os.open(tmp_path / "parent", os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_tree_at(parent_fd, "doomed")
        remove_tree_at(parent_fd, "absent")  # nothing to do
    finally:
        os.close(parent_fd)
    assert os.listdir(tmp_path / "parent") == []
    assert (outside / "keep").read_text() == "keep"
