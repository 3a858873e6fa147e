"""arch.checkpoint.work_path: CRIU's log copied where runc's caller looks for it."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import pytest

from arch.checkpoint.work_path import copy_log, image_log_name

if TYPE_CHECKING:
    from pathlib import Path


def test_the_log_is_copied_under_its_own_name_into_a_new_work_path(tmp_path: Path) -> None:
    log = tmp_path / "staging" / "custom.log"
    log.parent.mkdir()
    log.write_text("(00.1) Dumping finished successfully\n")
    work_path = tmp_path / "bundle" / "work" / "criu-work"
    copied = copy_log(str(log), str(work_path))
    assert copied == str(work_path / "custom.log")
    assert (work_path / "custom.log").read_text() == log.read_text()
    assert stat.S_IMODE(os.stat(work_path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(copied).st_mode) == 0o600


def test_an_older_log_in_the_work_path_is_replaced(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text("new\n")
    work_path = tmp_path / "work"
    work_path.mkdir()
    (work_path / "dump.log").write_text("an older, longer log\n")
    copy_log(str(log), str(work_path))
    assert (work_path / "dump.log").read_text() == "new\n"


def test_a_symlink_is_neither_read_nor_written_through(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not a log\n")
    (tmp_path / "linked.log").symlink_to(secret)
    with pytest.raises(OSError):
        copy_log(str(tmp_path / "linked.log"), str(tmp_path / "work"))
    log = tmp_path / "dump.log"
    log.write_text("log\n")
    work_path = tmp_path / "work2"
    work_path.mkdir()
    (work_path / "dump.log").symlink_to(secret)
    with pytest.raises(OSError):
        copy_log(str(log), str(work_path))
    assert secret.read_text() == "not a log\n"


@pytest.mark.parametrize(
    ("criu_name", "image_name"),
    [
        ("dump.log", "dump.log"),
        ("arch-custom.log", "arch-custom.log"),
        ("/var/log/criu/host.log", "host.log"),
        ("with space.log", "dump.log"),
        (".hidden.log", "dump.log"),
        ("pages-1.img", "dump.log"),
        ("metadata.json", "dump.log"),
        ("rootfs-diff.tar", "dump.log"),
        ("descriptors.json", "dump.log"),
    ],
)
def test_the_name_an_image_keeps_the_log_under(criu_name: str, image_name: str) -> None:
    assert image_log_name(criu_name) == image_name


def test_a_log_that_is_no_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    """A container's CRIU configuration names the log: a FIFO there must not make the copy
    wait for a writer, nor /dev/zero fill the image storage."""
    fifo = tmp_path / "dump.log"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        copy_log(str(fifo), str(tmp_path / "work"))
    with pytest.raises(OSError, match="not a regular file"):
        copy_log("/dev/zero", str(tmp_path / "work"), "dump.log")


def test_a_huge_log_is_copied_up_to_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from arch.checkpoint import work_path

    monkeypatch.setattr(work_path, "LOG_COPY_MAX_BYTES", 1000)
    log = tmp_path / "dump.log"
    log.write_bytes(b"x" * 5000)
    copied = copy_log(str(log), str(tmp_path / "work"))
    assert os.path.getsize(copied) == 1000
