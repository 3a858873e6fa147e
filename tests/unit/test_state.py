from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from arch.container.state import (
    EXIT_STATUS,
    SKIP_START,
    ContainerState,
    StateError,
    list_containers,
)

if TYPE_CHECKING:
    from pathlib import Path

CONTAINERS = 20
PROCESSES = 50
ROUNDS = 4  # even: each worker's flag ends set (cleared on even rounds only)


def test_flags_set_get_clear(tmp_path: Path) -> None:
    state = ContainerState(str(tmp_path / "run"), "default", "c1")
    assert not state.has(SKIP_START)
    assert state.get(SKIP_START) is None
    state.set(SKIP_START)
    state.set(EXIT_STATUS, "137")
    assert state.has(SKIP_START)
    assert state.get(SKIP_START) == ""
    assert state.get(EXIT_STATUS) == "137"
    assert state.clear(SKIP_START)
    assert not state.clear(SKIP_START)  # only one caller sees it set
    assert not state.has(SKIP_START)


def test_clear_and_take_without_state_create_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "run"
    state = ContainerState(str(state_dir), "default", "c1")
    assert not state.clear(SKIP_START)
    assert state.take(SKIP_START) is None
    assert state.read_record() is None
    assert not state.remove_all()
    assert not state_dir.exists()


def test_take_reads_and_clears(tmp_path: Path) -> None:
    state = ContainerState(str(tmp_path), "default", "c1")
    state.set(EXIT_STATUS, "0")
    assert state.take(EXIT_STATUS) == "0"
    assert state.take(EXIT_STATUS) is None


def test_directories_are_private_and_files_0600(tmp_path: Path) -> None:
    state_dir = tmp_path / "run" / "arch"
    state = ContainerState(str(state_dir), "default", "c1")
    state.set(SKIP_START)
    state.write_record({"a": 1})
    for directory in (state_dir, state_dir / "default", state_dir / "default" / "c1"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for entry in (state_dir / "default" / "c1").iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600


def test_record_round_trip_and_update(tmp_path: Path) -> None:
    state = ContainerState(str(tmp_path), "moby", "c1")
    record = {"image_dir": "/checkpoint/moby/c1", "checkpoint_id": "c1", "bundle": "/b"}
    state.write_record(record)
    assert state.read_record() == record

    def add_pid(current: dict[str, Any]) -> None:
        current["pid"] = 42

    assert state.update_record(add_pid) == {**record, "pid": 42}
    assert state.update_record(lambda current: {"replaced": True}) == {"replaced": True}
    assert state.read_record() == {"replaced": True}


def test_record_must_be_a_dict(tmp_path: Path) -> None:
    state = ContainerState(str(tmp_path), "moby", "c1")
    with pytest.raises(StateError, match="dict"):
        state.write_record([1, 2])  # type: ignore[arg-type]


def test_corrupt_record_is_reported(tmp_path: Path) -> None:
    state = ContainerState(str(tmp_path), "moby", "c1")
    state.set(SKIP_START)
    (tmp_path / "moby" / "c1" / "record.json").write_text("{not json")
    with pytest.raises(StateError, match="not JSON"):
        state.read_record()
    (tmp_path / "moby" / "c1" / "record.json").write_text("[1]")
    with pytest.raises(StateError, match="not a JSON object"):
        state.read_record()


def test_remove_all(tmp_path: Path) -> None:
    other = ContainerState(str(tmp_path), "default", "c2")
    other.set(SKIP_START)
    state = ContainerState(str(tmp_path), "default", "c1")
    state.set(SKIP_START)
    state.write_record({"x": 1})
    assert state.remove_all()
    assert not (tmp_path / "default" / "c1").exists()
    assert other.has(SKIP_START)
    assert other.remove_all()
    assert not (tmp_path / "default").exists()  # the empty namespace dir goes too
    assert tmp_path.exists()


def test_state_after_remove_all_starts_fresh(tmp_path: Path) -> None:
    state = ContainerState(str(tmp_path), "default", "c1")
    state.set(SKIP_START)
    state.remove_all()
    state.set(EXIT_STATUS, "1")
    assert not state.has(SKIP_START)
    assert state.get(EXIT_STATUS) == "1"


def test_list_containers(tmp_path: Path) -> None:
    for namespace, container_id in [("moby", "b"), ("default", "a"), ("moby", "a")]:
        ContainerState(str(tmp_path), namespace, container_id).set(SKIP_START)
    (tmp_path / "stray-file").write_text("")
    (tmp_path / "moby" / "bad name").mkdir()
    assert list_containers(str(tmp_path)) == [("default", "a"), ("moby", "a"), ("moby", "b")]
    assert list_containers(str(tmp_path / "absent")) == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\0b", "a b", "x" * 129, "../etc"])
def test_unsafe_namespace_and_id_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(StateError, match="namespace"):
        ContainerState(str(tmp_path), name, "c1")
    with pytest.raises(StateError, match="container id"):
        ContainerState(str(tmp_path), "default", name)


@pytest.mark.parametrize("flag", ["", "record.json", ".lock", "A", "../x", "a-b", "x" * 65])
def test_unsafe_flag_names_are_refused(tmp_path: Path, flag: str) -> None:
    state = ContainerState(str(tmp_path), "default", "c1")
    with pytest.raises(StateError, match="flag"):
        state.set(flag)
    with pytest.raises(StateError, match="flag"):
        state.get(flag)


def test_flag_symlink_is_not_followed(tmp_path: Path) -> None:
    state = ContainerState(str(tmp_path), "default", "c1")
    state.set(EXIT_STATUS, "0")
    target = tmp_path / "target"
    target.write_text("secret")
    flag = tmp_path / "default" / "c1" / SKIP_START
    flag.symlink_to(target)
    with pytest.raises(OSError, match="Too many levels"):
        state.get(SKIP_START)
    state.set(SKIP_START, "x")  # replaces the link itself
    assert target.read_text() == "secret"
    assert state.get(SKIP_START) == "x"


def test_import_does_not_load_json() -> None:
    """arch-runc imports this module for every start/delete: keep it cheap. (-S: without site,
    which in a virtualenv with an editable install imports re itself.)"""
    code = "import sys, arch.container.state; print('json' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert result.stdout.split() == ["False"]


# --- concurrency: many processes, real files ---------------------------------------------------


def _worker(state_dir: str, worker: int, barrier: Any) -> None:
    """Each worker bumps a shared counter in every container's record, and sets its own flag
    (then clears it again on even rounds, so the final state is known)."""
    barrier.wait()
    for round_number in range(ROUNDS):
        for container in range(CONTAINERS):
            state = ContainerState(state_dir, "default", f"c{container}")

            def bump(record: dict[str, Any], worker: int = worker) -> None:
                record["count"] = record.get("count", 0) + 1
                record.setdefault("workers", [])
                if worker not in record["workers"]:
                    record["workers"].append(worker)

            state.update_record(bump)
            flag = f"w{worker}"
            state.set(flag, str(round_number))
            if round_number % 2 == 0:
                assert state.clear(flag)
            # Lock-free readers must never see a partial record.
            assert isinstance(state.read_record(), dict)


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "run")
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(PROCESSES)
    workers = [
        context.Process(target=_worker, args=(state_dir, worker, barrier))
        for worker in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    try:
        for process in workers:
            process.join(timeout=300)
        assert [process.exitcode for process in workers] == [0] * PROCESSES
    finally:
        for process in workers:
            if process.is_alive():
                process.kill()
                process.join()

    last_round = str(ROUNDS - 1)  # odd: the flag stays set
    for container in range(CONTAINERS):
        state = ContainerState(state_dir, "default", f"c{container}")
        record = state.read_record()
        assert record is not None
        assert record["count"] == PROCESSES * ROUNDS
        assert sorted(record["workers"]) == list(range(PROCESSES))
        assert all(state.get(f"w{worker}") == last_round for worker in range(PROCESSES))
        names = set(os.listdir(state.path))
        assert names == {".lock", "record.json"} | {f"w{worker}" for worker in range(PROCESSES)}
        json.loads((tmp_path / "run" / "default" / f"c{container}" / "record.json").read_text())


def _set_and_remove(state_dir: str, worker: int, barrier: Any) -> None:
    barrier.wait()
    state = ContainerState(state_dir, "default", "shared")
    for _ in range(ROUNDS):
        if worker % 2:
            state.remove_all()
        else:
            state.set(SKIP_START, str(worker))
            state.update_record(lambda record: {"worker": worker})


def test_remove_all_racing_set_never_fails_or_corrupts(tmp_path: Path) -> None:
    """containerd may run delete while another call writes state: neither side may crash, and
    what remains is either nothing or a complete state."""
    state_dir = str(tmp_path / "run")
    context = multiprocessing.get_context("fork")
    count = 20
    barrier = context.Barrier(count)
    workers = [
        context.Process(target=_set_and_remove, args=(state_dir, worker, barrier))
        for worker in range(count)
    ]
    for process in workers:
        process.start()
    try:
        for process in workers:
            process.join(timeout=300)
        assert [process.exitcode for process in workers] == [0] * count
    finally:
        for process in workers:
            if process.is_alive():
                process.kill()
                process.join()
    state = ContainerState(state_dir, "default", "shared")
    if state.exists():
        leftovers = [name for name in os.listdir(state.path) if name.startswith(".tmp-")]
        assert leftovers == []
        record = state.read_record()
        assert record is None or set(record) == {"worker"}
    state.remove_all()
    assert list_containers(state_dir) == []


def test_set_if_exists_never_recreates_removed_state(tmp_path: Path) -> None:
    state = ContainerState(str(tmp_path), "default", "job")
    assert not state.set_if_exists("exit_status", "0")
    assert not state.exists()
    state.write_record({"version": 1})
    assert state.set_if_exists("exit_status", "0")
    assert state.get("exit_status") == "0"
    state.remove_all()
    assert not state.set_if_exists("exit_status", "1")
    assert not os.path.lexists(state.path)
