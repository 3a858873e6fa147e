"""Leases on directories being written, and the clean-up that honours them (store.cleanup_stale,
sweep.remove_dead_work_dirs): a leftover goes as soon as its writer is known dead, never while
a writer on this or another host may still write."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from arch.checkpoint.storage import lease, store
from arch.checkpoint.storage.beneath import opened_root
from arch.checkpoint.storage.lease import LEASE_FILE, Lease, is_held, lease_of
from arch.checkpoint.storage.sweep import remove_dead_work_dirs
from arch.runc.process_group import ProcessIdentity
from tests.conftest import finished_process

STAGING = ".staging-job-0123456789ab"


def cleanup_stale(parent: str, **options: object) -> list[store.LeftoverAction]:
    with opened_root(parent) as root_fd:
        return store.cleanup_stale(root_fd, "", **options)  # type: ignore[arg-type]



def leftover(parent: Path, name: str, lease_document: dict[str, object] | None) -> Path:
    directory = parent / name
    directory.mkdir(parents=True)
    (directory / "pages-1.img").write_bytes(b"process memory")
    if lease_document is not None:
        (directory / LEASE_FILE).write_text(json.dumps(lease_document))
    return directory


def this_host(identity: ProcessIdentity, expires: float) -> dict[str, object]:
    return {"host": lease._host(), "boot": lease._boot_id(), "pid": identity.pid,
            "start": identity.start, "expires": expires}  # fmt: skip


def test_a_lease_is_refreshed_while_held_and_gone_after_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease, "REFRESH_SECONDS", 0.05)
    with Lease(str(tmp_path)):
        parent_fd = os.open(str(tmp_path.parent), os.O_RDONLY)
        first = lease_of(parent_fd, tmp_path.name)
        os.close(parent_fd)
        assert first is not None and is_held(first)
        time.sleep(0.3)
        second = json.loads((tmp_path / LEASE_FILE).read_text())
        assert second["expires"] > first["expires"]
    assert list(tmp_path.iterdir()) == []


def test_a_dead_writer_on_this_host_frees_its_staging_dir_at_once(tmp_path: Path) -> None:
    live = leftover(tmp_path, STAGING, this_host(ProcessIdentity.own(), time.time() - 999))
    dead = leftover(tmp_path, ".staging-job-ba9876543210",
                    this_host(finished_process(), time.time() + 999))  # fmt: skip

    removed = [action.name for action in cleanup_stale(str(tmp_path))]

    assert removed == [dead.name]
    assert live.is_dir()


def test_another_hosts_lease_holds_until_it_expires_plus_the_clock_skew(tmp_path: Path) -> None:
    now = time.time()
    other = {"host": "other-host", "boot": "x", "pid": 1, "start": 1, "expires": now - 30}
    leftover(tmp_path, STAGING, other)

    assert cleanup_stale(str(tmp_path), now=now) == []  # within the allowed clock skew
    later = now + lease.CLOCK_SKEW_SECONDS
    assert [a.name for a in cleanup_stale(str(tmp_path), now=later)] == [STAGING]


def test_leftovers_without_a_lease_are_judged_by_age(tmp_path: Path) -> None:
    removing = leftover(tmp_path, ".removing-job-0123456789ab", None)
    assert cleanup_stale(str(tmp_path)) == []
    later = time.time() + 2 * 3600
    assert [a.name for a in cleanup_stale(str(tmp_path), now=later)] == [removing.name]


def test_only_the_named_images_leftovers_go(tmp_path: Path) -> None:
    dead = this_host(finished_process(), 0)
    mine = leftover(tmp_path, STAGING, dead)
    theirs = leftover(tmp_path, ".staging-other-0123456789ab", dead)

    assert [a.name for a in cleanup_stale(str(tmp_path), image_name="job")] == [mine.name]
    assert theirs.is_dir()


def test_restore_work_dirs_of_dead_restores_are_swept(tmp_path: Path) -> None:
    running = leftover(tmp_path, "restore-live", this_host(ProcessIdentity.own(), 0))
    dead = leftover(tmp_path, "restore-dead", this_host(finished_process(), 0))
    unleased = leftover(tmp_path, "restore-old", None)
    unrelated = leftover(tmp_path, "notes", None)

    done = remove_dead_work_dirs(str(tmp_path))

    assert sorted(done) == sorted(f"removed {p}" for p in (dead, unleased))
    assert running.is_dir() and unrelated.is_dir()


@pytest.mark.parametrize("planted", ["deep", "fifo", "huge-integer"])
def test_a_planted_lease_file_reads_as_no_lease(tmp_path: Path, planted: str) -> None:
    """Others write the shared storage: a lease file that is no lease is ignored, never a hang
    (a FIFO) or a RecursionError (deep nesting) that would end the sweep or a create."""
    staging = tmp_path / ".staging-x"
    staging.mkdir()
    if planted == "fifo":
        os.mkfifo(staging / LEASE_FILE)
    elif planted == "deep":
        (staging / LEASE_FILE).write_text("[" * 4000 + "]" * 4000)
    else:
        (staging / LEASE_FILE).write_text('{"expires": ' + "9" * 5000 + "}")
    parent_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert lease_of(parent_fd, staging.name) is None
    finally:
        os.close(parent_fd)
