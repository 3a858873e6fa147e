"""arch.container.interrupted: process groups that die with arch-runc, and the clean-up after
an operation whose arch-runc is gone (real processes; the runc parts are integration-tested in
tests/integration/test_kill_safety.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arch.container import interrupted
from arch.container.interrupted import OPERATION_FLAG, finish_interrupted, in_progress
from arch.container.state import ContainerState
from arch.runc import process_group
from arch.runc.process_group import ProcessIdentity, group_members, stop_group
from tests.conftest import finished_process


@pytest.mark.parametrize(
    ("cgroups_path", "relative"),
    [
        ("system.slice:docker:abc", "system.slice/docker-abc.scope"),
        ("a-b.slice:cri:c1", "a.slice/a-b.slice/cri-c1.scope"),
        ("-.slice::mine.slice", "mine.slice"),
    ],
)
def test_systemd_cgroup_paths_expand_like_runc(cgroups_path: str, relative: str) -> None:
    assert interrupted._systemd_path(cgroups_path) == relative


def test_cgroup_dirs_refuse_paths_that_climb() -> None:
    assert interrupted.cgroup_dirs("/../../etc") == []
    assert interrupted.cgroup_dirs("") == []


def spawn_sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], preexec_fn=process_group.dies_with_this_process())


def test_the_child_leads_its_own_group_and_stop_group_kills_it() -> None:
    sleeper = spawn_sleeper()
    try:
        leader = ProcessIdentity.of(sleeper.pid)
        assert leader is not None and os.getpgid(sleeper.pid) == sleeper.pid
        assert group_members(leader) == [sleeper.pid]
        assert stop_group(leader) == [sleeper.pid]
        assert sleeper.wait(timeout=10) == -9
        assert group_members(leader) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_reused_leader_pid_is_not_taken_for_the_group() -> None:
    sleeper = spawn_sleeper()
    try:
        identity = ProcessIdentity.of(sleeper.pid)
        assert identity is not None
        assert group_members(ProcessIdentity(identity.pid, identity.start + 1)) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_child_dies_with_its_parent() -> None:
    script = (
        "import subprocess, sys, time\n"
        "from arch.runc.process_group import dies_with_this_process\n"
        "child = subprocess.Popen(['sleep', '60'], preexec_fn=dies_with_this_process())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = ProcessIdentity.of(int(parent.stdout.readline()))
    assert child is not None and child.alive()
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while child.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not child.alive()


def state_with(tmp_path: Path, record: dict[str, object]) -> ContainerState:
    state = ContainerState(str(tmp_path / "state"), "default", "c1")
    state.set(OPERATION_FLAG, json.dumps(record))
    return state



def test_a_live_holder_is_left_alone(tmp_path: Path) -> None:
    state = state_with(tmp_path, {"operation": "checkpoint", "holder": list(ProcessIdentity.own())})
    assert in_progress(state)
    assert not finish_interrupted(state, "/bin/false", None)
    assert state.has(OPERATION_FLAG)


def test_an_interrupted_checkpoint_loses_its_staging_directory_and_its_runc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "images" / ".staging-c1-0123456789ab"
    staging.mkdir(parents=True)
    (staging / "pages-1.img").write_bytes(b"secret memory")
    sleeper = spawn_sleeper()  # stands in for the runc/CRIU group left behind
    runc_child = ProcessIdentity.of(sleeper.pid)
    assert runc_child is not None
    state = state_with(
        tmp_path,
        {
            "operation": "checkpoint",
            "holder": finished_process(),
            "runc": list(runc_child),
            "staging": str(staging),
            "staging_root": str(tmp_path),
            "staging_relative": "images/.staging-c1-0123456789ab",
        },
    )
    monkeypatch.setattr(interrupted, "CHECKPOINT_GRACE_SECONDS", 0.2)
    try:
        assert finish_interrupted(state, "/bin/false", None)
    finally:
        sleeper.kill()
    assert sleeper.wait(timeout=10) == -9
    assert not staging.exists()
    assert not state.has(OPERATION_FLAG)
    assert not in_progress(state)


@pytest.mark.parametrize("record_has", ["a symlink on the way", "a path only (older ARCH)",
                                        "no staging name"])  # fmt: skip
def test_a_staging_directory_is_removed_only_beneath_its_root(
    tmp_path: Path, record_has: str
) -> None:
    """The storage's writer swapped the namespace directory for a symlink to another
    directory: nothing there is removed (the path is resolved beneath the root; an older
    ARCH's record names only the path, resolved beneath "/", where the symlink stops it too)."""
    victim = tmp_path / "victim" / ".staging-c1-0123456789ab"
    victim.mkdir(parents=True)
    (victim / "keep").write_text("other data")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "images").symlink_to(tmp_path / "victim")
    record: dict[str, object] = {"operation": "checkpoint", "holder": finished_process(),
                                 "staging": str(tmp_path / "root" / "images" / victim.name)}
    if record_has == "a symlink on the way":
        record.update(staging_root=str(tmp_path / "root"),
                      staging_relative=f"images/{victim.name}")  # fmt: skip
    elif record_has == "no staging name":
        (tmp_path / "root" / "data").mkdir()
        record.update(staging_root=str(tmp_path), staging_relative="root/data")
    state = state_with(tmp_path, record)
    assert finish_interrupted(state, "/bin/false", None)
    assert (victim / "keep").read_text() == "other data"
    assert (tmp_path / "root" / "data").exists() or record_has != "no staging name"
