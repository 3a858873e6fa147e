"""The minimal CRIU image decoder (process tree) on images CRIU 4.2.1 wrote, and on garbage.

tests/unit/data/criu-pstree/ holds pstree.img and core-*.img of `sh -c 'sleep & sleep'` dumped
by CRIU 4.2.1; `crit x DIR ps` (CRIU's own decoder) showed PID 3944 sh with two sleep children.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from arch.checkpoint.image.criu_images import (
    IMG_COMMON_MAGIC,
    PSTREE_MAGIC,
    CriuImageError,
    Process,
    read_process_tree,
)

DATA = Path(__file__).parent / "data" / "criu-pstree"


def test_process_tree_of_a_real_dump() -> None:
    assert read_process_tree(str(DATA)) == [
        Process(3944, 0, 3944, 3944, (3944,), "sh", "alive"),
        Process(3945, 3944, 3944, 3944, (3945,), "sleep", "alive"),
        Process(3946, 3944, 3944, 3944, (3946,), "sleep", "alive"),
    ]


def test_missing_core_files_leave_the_command_unknown(tmp_path: Path) -> None:
    shutil.copy(DATA / "pstree.img", tmp_path / "pstree.img")
    (tmp_path / "core-3945.img").write_bytes(b"garbage!")
    processes = read_process_tree(str(tmp_path))
    assert [(p.pid, p.comm, p.state) for p in processes] == [
        (3944, None, None), (3945, None, None), (3946, None, None),
    ]  # fmt: skip


def pstree(*entries: bytes, magic: int = PSTREE_MAGIC) -> bytes:
    body = b"".join(struct.pack("<I", len(entry)) + entry for entry in entries)
    return struct.pack("<II", IMG_COMMON_MAGIC, magic) + body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (pstree(magic=0x1234), "not this kind"),
        (pstree(b"\x08\x01") + b"\x05\x00", "truncated entry length"),
        (pstree(b"\x08\x01")[:-1], "runs past the end"),
        (pstree(b"\x08"), "varint"),
        (pstree(b"\x10\x01"), "lacks integer field 1"),
        (pstree(b"\x0a\x05ab"), "runs past its message"),
        (pstree(b"\x0b"), "wire type 3"),
        (pstree(b"\x08" + b"\xff" * 11), "varint"),
    ],
)
def test_malformed_pstree(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / "pstree.img").write_bytes(data)
    with pytest.raises(CriuImageError, match=message):
        read_process_tree(str(tmp_path))


def test_packed_threads_and_no_core(tmp_path: Path) -> None:
    # pid 7, ppid 1, pgid 7, sid 7, threads packed [7, 8]
    entry = b"\x08\x07\x10\x01\x18\x07\x20\x07\x2a\x02\x07\x08"
    (tmp_path / "pstree.img").write_bytes(pstree(entry))
    assert read_process_tree(str(tmp_path)) == [Process(7, 1, 7, 7, (7, 8), None, None)]


def test_symlinked_pstree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pstree.img").symlink_to(DATA / "pstree.img")
    with pytest.raises(OSError):
        read_process_tree(str(tmp_path))
