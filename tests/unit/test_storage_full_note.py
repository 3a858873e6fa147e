"""A failed dump on full storage says so: CRIU's ENOSPC cannot reach its own dump.log there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from arch.checkpoint import checkpoint_job


class FakeStatvfs:
    def __init__(self, free_blocks: int, block_size: int = 4096) -> None:
        self.f_bavail = free_blocks
        self.f_frsize = block_size


def test_full_storage_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "statvfs", lambda path: FakeStatvfs(free_blocks=3))

    note = checkpoint_job.storage_full_note(str(tmp_path))

    assert "No space left on device" in note
    assert "12 KiB free" in note


def test_storage_with_room_adds_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "statvfs", lambda path: FakeStatvfs(free_blocks=1 << 20))

    assert checkpoint_job.storage_full_note(str(tmp_path)) == ""


def test_unreadable_storage_adds_nothing(tmp_path: Path) -> None:
    assert checkpoint_job.storage_full_note(str(tmp_path / "gone")) == ""
