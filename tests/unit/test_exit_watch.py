"""The exit watcher: parsing real `ctr events` lines, recording into container state, the
delete path's wait, and the watcher loop driven by a fake `ctr` (no containerd needed)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from arch.container import exit_watch
from arch.container.exit_watch import (
    TASK_EXIT_TOPIC,
    EventParseError,
    ExitWatcher,
    StopRequest,
    TaskExit,
    WatcherPresence,
    find_ctr,
    parse_event_line,
    record_exit,
    running_watchers,
    task_exit_from_line,
    wait_for_exit_status,
)
from arch.container.state import EXIT_STATUS, ContainerState
from arch.runc.process_group import ProcessIdentity

# Captured verbatim from `ctr --address <private node> events` (containerd 1.6.20, Debian 12).
EXIT_0 = (
    "2026-11-29 08:20:28.278087275 +0000 UTC default /tasks/exit "
    '{"container_id":"exit0","id":"exit0","pid":30001,"exited_at":"2026-11-29T08:20:28.277062455Z"}'
)
EXIT_1 = (
    "2026-11-29 08:20:28.977529094 +0000 UTC default /tasks/exit "
    '{"container_id":"exit1","id":"exit1","pid":30137,"exit_status":1,'
    '"exited_at":"2026-11-29T08:20:28.977133016Z"}'
)
EXIT_3_OTHER_NAMESPACE = (
    "2026-11-29 08:20:29.459495235 +0000 UTC other /tasks/exit "
    '{"container_id":"exit1other","id":"exit1other","pid":30230,"exit_status":3,'
    '"exited_at":"2026-11-29T08:20:29.459467875Z"}'
)
EXEC_EXIT_5 = (
    "2026-11-29 08:20:30.07321199 +0000 UTC default /tasks/exit "
    '{"container_id":"killed","id":"myexec","pid":30385,"exit_status":5,'
    '"exited_at":"2026-11-29T08:20:30.072585101Z"}'
)
EXEC_EXIT_0 = (
    "2026-11-29 08:20:30.181976113 +0000 UTC default /tasks/exit "
    '{"container_id":"killed","id":"myexec0","pid":30408,'
    '"exited_at":"2026-11-29T08:20:30.181630991Z"}'
)
KILLED_137 = (
    "2026-11-29 08:20:30.279896629 +0000 UTC default /tasks/exit "
    '{"container_id":"killed","id":"killed","pid":30323,"exit_status":137,'
    '"exited_at":"2026-11-29T08:20:30.279874506Z"}'
)
# A container ARCH has no state for (the watcher saw it and recorded nothing).
NOT_ARCH_EXIT_4 = (
    "2026-11-29 08:22:06.555359497 +0000 UTC default /tasks/exit "
    '{"container_id":"nostate","id":"nostate","pid":5660,"exit_status":4,'
    '"exited_at":"2026-11-29T08:22:06.555007565Z"}'
)
TASK_START = (
    "2026-11-29 08:20:28.277485423 +0000 UTC default /tasks/start "
    '{"container_id":"exit0","pid":30001}'
)
TASK_DELETE = (
    "2026-11-29 08:20:29.09002039 +0000 UTC default /tasks/delete "
    '{"container_id":"exit1","pid":30137,"exit_status":1,"exited_at":"2026-11-29T08:20:28.977133016Z"}'
)
CONTAINER_CREATE = (
    "2026-11-29 08:20:28.000508531 +0000 UTC default /containers/create "
    '{"id":"exit0","image":"docker.io/arch-test/busybox:latest","runtime":{"name":'
    '"io.containerd.runc.v2","options":{"type_url":"containerd.runc.v1.Options","value":'
    '"Mh0vdG1wL2V4aXR3LXZlbnYvYmluL2FyY2gtcnVuYzobL3RtcC9hcmNoLWV4dy01aHBldWJyay9ydW5j"}}}'
)
NAMESPACE_UPDATE = (
    "2026-11-29 08:22:27.098149188 +0000 UTC default /namespaces/update "
    '{"name":"default","labels":{"probe":"1"}}'
)
# What ctr printed on stderr when containerd stopped under it.
CTR_TRANSPORT_CLOSING = "ctr: rpc error: code = Unavailable desc = transport is closing"

LOGGER_NAME = "test.exit_watch"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (EXIT_0, TaskExit("default", "exit0", "exit0", 30001, 0, "2026-11-29T08:20:28.277062455Z")),
        (EXIT_1, TaskExit("default", "exit1", "exit1", 30137, 1, "2026-11-29T08:20:28.977133016Z")),
        (
            EXIT_3_OTHER_NAMESPACE,
            TaskExit(
                "other", "exit1other", "exit1other", 30230, 3, "2026-11-29T08:20:29.459467875Z"
            ),
        ),
        (
            EXEC_EXIT_5,
            TaskExit("default", "killed", "myexec", 30385, 5, "2026-11-29T08:20:30.072585101Z"),
        ),
        (
            EXEC_EXIT_0,
            TaskExit("default", "killed", "myexec0", 30408, 0, "2026-11-29T08:20:30.181630991Z"),
        ),
        (
            KILLED_137,
            TaskExit("default", "killed", "killed", 30323, 137, "2026-11-29T08:20:30.279874506Z"),
        ),
        (
            NOT_ARCH_EXIT_4,
            TaskExit("default", "nostate", "nostate", 5660, 4, "2026-11-29T08:22:06.555007565Z"),
        ),
    ],
)
def test_real_task_exit_lines_parse(line: str, expected: TaskExit) -> None:
    assert task_exit_from_line(line) == expected
    assert task_exit_from_line(line + "\n") == expected


def test_init_and_exec_processes_are_told_apart() -> None:
    for line in (EXIT_0, EXIT_1, KILLED_137, NOT_ARCH_EXIT_4):
        task_exit = task_exit_from_line(line)
        assert task_exit is not None and task_exit.is_init
    for line in (EXEC_EXIT_5, EXEC_EXIT_0):
        task_exit = task_exit_from_line(line)
        assert task_exit is not None and not task_exit.is_init


@pytest.mark.parametrize("line", [TASK_START, TASK_DELETE, CONTAINER_CREATE, NAMESPACE_UPDATE])
def test_other_events_are_not_exits(line: str) -> None:
    assert task_exit_from_line(line) is None


def test_event_line_fields() -> None:
    event = parse_event_line(CONTAINER_CREATE)
    assert event.timestamp == "2026-11-29 08:20:28.000508531 +0000 UTC"
    assert event.namespace == "default"
    assert event.topic == "/containers/create"
    assert event.payload.startswith('{"id":"exit0",')


def test_a_payload_holding_slashes_does_not_move_the_topic() -> None:
    line = '2026-11-29 08:20:28.1 +0100 CET moby /tasks/exit {"container_id":"a /b","id":"x"}'
    event = parse_event_line(line)
    assert (event.namespace, event.topic) == ("moby", TASK_EXIT_TOPIC)


@pytest.mark.parametrize(
    "line",
    [
        CTR_TRANSPORT_CLOSING,
        "",
        "garbage",
        'time="2026-11-29T08:22:27Z" level=warning msg="cannot unmarshal an event from Any"',
        # ctr prints nothing after the topic when it cannot decode the event
        "2026-11-29 08:20:28.278087275 +0000 UTC default /tasks/exit ",
        "2026-11-29 08:20:28.278087275 +0000 UTC default /tasks/exit",
        "2026-11-29 08:20:28.278087275 +0000 UTC default /tasks/exit {not json",
        "2026-11-29 08:20:28.278087275 +0000 UTC default /tasks/exit [1, 2]",
        '2026-11-29 08:20:28.278087275 +0000 UTC default /tasks/exit {"id":"a","pid":1}',
        '2026-11-29 08:20:28.278087275 +0000 UTC default /tasks/exit {"container_id":"a","pid":1}',
        '2026-11-29 08:20:28.2 +0000 UTC default /tasks/exit {"container_id":"a","id":"a",'
        '"exit_status":"1"}',
        '2026-11-29 08:20:28.2 +0000 UTC default /tasks/exit {"container_id":"a","id":"a",'
        '"exit_status":-1}',
        '2026-11-29 08:20:28.2 +0000 UTC default /tasks/exit {"container_id":"a","id":"a",'
        '"exit_status":true}',
        '2026-11-29 08:20:28.2 +0000 UTC default /tasks/exit {"container_id":"a","id":"a",'
        '"pid":1.5}',
        '2026-11-29 08:20:28.2 +0000 UTC default /tasks/exit {"container_id":"","id":""}',
        # truncated in the middle (a lost tail)
        EXIT_1[:120],
    ],
)
def test_malformed_lines_raise_parse_error(line: str) -> None:
    with pytest.raises(EventParseError):
        task_exit_from_line(line)


# -- recording --------------------------------------------------------------------------------


def exit_of(line: str) -> TaskExit:
    task_exit = task_exit_from_line(line)
    assert task_exit is not None
    return task_exit


def test_exit_of_an_arch_container_is_recorded(tmp_path: Path) -> None:
    state_dir = str(tmp_path)
    for line, container_id, namespace, expected in (
        (EXIT_0, "exit0", "default", "0"),
        (EXIT_1, "exit1", "default", "1"),
        (KILLED_137, "killed", "default", "137"),
        (EXIT_3_OTHER_NAMESPACE, "exit1other", "other", "3"),
    ):
        state = ContainerState(state_dir, namespace, container_id)
        state.write_record({"version": 1})

        assert record_exit(state_dir, exit_of(line)) is True
        assert state.get(EXIT_STATUS) == expected


def test_exec_exits_are_not_recorded(tmp_path: Path) -> None:
    state = ContainerState(str(tmp_path), "default", "killed")
    state.write_record({"version": 1})

    assert record_exit(str(tmp_path), exit_of(EXEC_EXIT_5)) is False
    assert record_exit(str(tmp_path), exit_of(EXEC_EXIT_0)) is False
    assert state.get(EXIT_STATUS) is None


def test_containers_without_state_get_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"

    assert record_exit(str(state_dir), exit_of(NOT_ARCH_EXIT_4)) is False
    assert not state_dir.exists()


def test_ids_that_cannot_be_state_names_are_not_arch(tmp_path: Path) -> None:
    long_id = "x" * 200
    task_exit = TaskExit("default", long_id, long_id, 1, 0, "")
    assert record_exit(str(tmp_path), task_exit) is False
    assert list(tmp_path.iterdir()) == []


def test_a_later_exit_replaces_the_recorded_status(tmp_path: Path) -> None:
    state = ContainerState(str(tmp_path), "default", "killed")
    state.write_record({})
    record_exit(str(tmp_path), TaskExit("default", "killed", "killed", 1, 0, ""))
    record_exit(str(tmp_path), exit_of(KILLED_137))
    assert state.get(EXIT_STATUS) == "137"


def test_containerd_exit_times_parse_to_nanoseconds() -> None:
    assert exit_watch.rfc3339_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert exit_watch.rfc3339_ns("2026-11-29T08:20:28.977133016Z") == 1795940428977133016
    assert exit_watch.rfc3339_ns("1970-01-01T01:00:00+01:00") == 0
    assert exit_watch.rfc3339_ns("") is None
    assert exit_watch.rfc3339_ns("yesterday") is None


def instance_exit(exited_at: str, pid: int = 4242) -> TaskExit:
    return TaskExit("default", "job", "job", pid, 0, exited_at)


def test_an_earlier_instance_exit_is_not_recorded_for_a_new_one(tmp_path: Path) -> None:
    state = ContainerState(str(tmp_path), "default", "job")
    created = exit_watch.rfc3339_ns("2026-11-29T08:20:30Z")
    state.write_record({"version": 1, "instance": {"created_ns": created, "pid_file": None}})

    assert record_exit(str(tmp_path), instance_exit("2026-11-29T08:20:29.999999999Z")) is False
    assert state.get(EXIT_STATUS) is None
    assert record_exit(str(tmp_path), instance_exit("2026-11-29T08:20:31Z")) is True
    assert state.get(EXIT_STATUS) == "0"


def test_an_exit_of_another_pid_is_not_this_instance(tmp_path: Path) -> None:
    pid_file = tmp_path / "init.pid"
    pid_file.write_text("4242")
    state = ContainerState(str(tmp_path / "state"), "default", "job")
    state.write_record({"instance": {"created_ns": 0, "pid_file": str(pid_file)}})

    assert record_exit(str(tmp_path / "state"), instance_exit("2026-11-29T08:20:31Z", 99)) is False
    assert record_exit(str(tmp_path / "state"), instance_exit("2026-11-29T08:20:31Z")) is True
    pid_file.unlink()  # runc's pid file gone (bundle removed): the time alone decides
    assert record_exit(str(tmp_path / "state"), instance_exit("2026-11-29T08:20:31Z", 99)) is True


# -- the delete path's wait -------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ContainerState]:
    """A container's state in a state dir where a watcher (this test process) announced itself."""
    container = ContainerState(str(tmp_path), "default", "c1")
    container.write_record({})
    presence = WatcherPresence(str(tmp_path), "/x.sock")
    presence.announce()
    yield container
    presence.withdraw()


def no_sleeping(*_args: object) -> None:
    raise AssertionError("waited for an exit status although no watcher could record one")


def test_without_a_watcher_delete_does_not_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = ContainerState(str(tmp_path), "default", "c1")
    container.write_record({})
    monkeypatch.setattr(exit_watch.time, "sleep", no_sleeping)
    assert running_watchers(str(tmp_path)) == []
    assert wait_for_exit_status(container, timeout=600) is None


def test_without_a_watcher_a_recorded_status_is_still_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = ContainerState(str(tmp_path), "default", "c1")
    container.set(EXIT_STATUS, "3")
    monkeypatch.setattr(exit_watch.time, "sleep", no_sleeping)
    assert wait_for_exit_status(container, timeout=600) == 3


def dead_process_presence(state_dir: Path) -> Path:
    """The presence file of a watcher that was SIGKILLed (it could not withdraw it)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = ProcessIdentity.of(process.pid)
    assert identity is not None
    process.kill()
    process.wait()
    path = state_dir / f"{exit_watch.PRESENCE_PREFIX}{process.pid}"
    document = {"pid": identity.pid, "start": identity.start, "boot": exit_watch._boot_id(),
                "address": "/x.sock"}  # fmt: skip
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def test_the_presence_of_a_dead_watcher_counts_for_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = dead_process_presence(tmp_path)
    container = ContainerState(str(tmp_path), "default", "c1")
    container.write_record({})
    monkeypatch.setattr(exit_watch.time, "sleep", no_sleeping)
    assert running_watchers(str(tmp_path)) == []
    assert wait_for_exit_status(container, timeout=600) is None
    presence = WatcherPresence(str(tmp_path), "/y.sock")
    assert presence.announce() == [stale.name]
    assert not stale.exists()
    announced = running_watchers(str(tmp_path))
    assert [(w["pid"], w["address"]) for w in announced] == [(os.getpid(), "/y.sock")]
    presence.withdraw()
    assert running_watchers(str(tmp_path)) == []


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[1]", b'{"pid": true, "start": 1, "boot": "x"}',
     b'{"pid": 1, "start": "1"}'],
)  # fmt: skip
def test_unreadable_presence_files_count_for_nothing(tmp_path: Path, content: bytes) -> None:
    (tmp_path / f"{exit_watch.PRESENCE_PREFIX}1").write_bytes(content)
    (tmp_path / f"{exit_watch.PRESENCE_PREFIX}x").write_bytes(content)
    assert running_watchers(str(tmp_path)) == []


def test_wait_returns_a_recorded_status_at_once(state: ContainerState) -> None:
    state.set(EXIT_STATUS, "0")
    started = time.monotonic()
    assert wait_for_exit_status(state, timeout=5) == 0
    assert time.monotonic() - started < 1


def test_wait_sees_a_status_that_arrives_late(state: ContainerState) -> None:
    writer = threading.Timer(0.2, state.set, args=(EXIT_STATUS, "137"))
    writer.start()
    try:
        assert wait_for_exit_status(state, timeout=5) == 137
    finally:
        writer.cancel()
        writer.join()


def test_wait_gives_up_with_none(state: ContainerState) -> None:
    started = time.monotonic()
    assert wait_for_exit_status(state, timeout=0.2) is None
    assert 0.2 <= time.monotonic() - started < 2


def test_wait_stops_early_when_the_state_is_gone(tmp_path: Path) -> None:
    gone = ContainerState(str(tmp_path), "default", "gone")
    started = time.monotonic()
    assert wait_for_exit_status(gone, timeout=5) is None
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("value", ["", "x", "-1", "1.5"])
def test_a_malformed_recorded_status_is_unknown(state: ContainerState, value: str) -> None:
    state.set(EXIT_STATUS, value)
    assert wait_for_exit_status(state, timeout=0.1) is None


# -- the watcher ------------------------------------------------------------------------------


def make_watcher(ctr: str, state_dir: Path, stop: StopRequest) -> ExitWatcher:
    return ExitWatcher(ctr, "/nonexistent/containerd.sock", str(state_dir), _logger(), stop)


def _logger() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG)
    return logger


def test_handle_line_logs_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ContainerState(str(tmp_path), "default", "exit1").write_record({})
    stop = StopRequest()
    watcher = make_watcher("ctr", tmp_path, stop)
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)

    for line in (EXIT_1, CTR_TRANSPORT_CLOSING, "junk \x00", TASK_START, NOT_ARCH_EXIT_4):
        watcher.handle_line(line)
    stop.close()

    by_level = {
        level: [r.getMessage() for r in caplog.records if r.levelno == level]
        for level in (logging.INFO, logging.WARNING)
    }
    assert by_level[logging.INFO] == [
        "recorded exit status 1 of default/exit1 (pid 30137, exited at "
        "2026-11-29T08:20:28.977133016Z)"
    ]
    assert by_level[logging.WARNING] == [
        CTR_TRANSPORT_CLOSING,
        "ignoring ctr events output: not a ctr events line: 'junk \\x00'",
    ]


def test_handle_line_warns_when_the_state_cannot_be_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = ContainerState(str(tmp_path), "default", "exit1")
    state.write_record({})
    os.mkdir(os.path.join(state.path, EXIT_STATUS))  # rename over a directory fails
    stop = StopRequest()
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)

    make_watcher("ctr", tmp_path, stop).handle_line(EXIT_1)
    stop.close()

    assert any("cannot record exit status 1 of default/exit1" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def fake_ctr(tmp_path: Path, body: str) -> str:
    """An executable standing in for ctr; it appends one line to `runs` per start."""
    script = tmp_path / "fake-ctr"
    script.write_text(
        "#!/bin/sh\n"
        f"echo \"$$ $*\" >> {tmp_path / 'runs'}\n" + textwrap.dedent(body)
    )
    script.chmod(0o755)
    return str(script)


def run_in_thread(watcher: ExitWatcher) -> threading.Thread:
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    return thread


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def ctr_runs(tmp_path: Path) -> list[list[str]]:
    try:
        return [line.split() for line in (tmp_path / "runs").read_text().splitlines()]
    except FileNotFoundError:
        return []


def test_watcher_records_from_ctr_and_stops_its_ctr(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    recorded = ContainerState(str(state_dir), "default", "exit1")
    recorded.write_record({})
    # The exit line arrives in two pieces: only complete lines are parsed.
    ctr = fake_ctr(
        tmp_path,
        f"""\
        printf '%s\\n' '{TASK_START}'
        printf '%s' '{EXIT_1[:70]}'
        sleep 0.2
        printf '%s\\n' '{EXIT_1[70:]}'
        exec sleep 1000
        """,
    )
    stop = StopRequest()
    thread = run_in_thread(make_watcher(ctr, state_dir, stop))
    try:
        assert wait_for(lambda: recorded.get(EXIT_STATUS) == "1")
    finally:
        stop.request()
        thread.join(timeout=10)
    stop.close()

    assert not thread.is_alive()
    runs = ctr_runs(tmp_path)
    assert len(runs) == 1
    assert runs[0][1:] == ["--address", "/nonexistent/containerd.sock", "events"]
    assert not _pid_alive(int(runs[0][0]))


def test_watcher_restarts_ctr_with_backoff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exit_watch, "RETRY_DELAY_FIRST", 0.05)
    ctr = fake_ctr(tmp_path, f"echo '{CTR_TRANSPORT_CLOSING}' >&2\nexit 1\n")
    stop = StopRequest()
    thread = run_in_thread(make_watcher(ctr, tmp_path / "state", stop))
    try:
        # 0.05 + 0.1 + 0.2 + 0.4 s of backoff: four restarts well within the timeout.
        assert wait_for(lambda: len(ctr_runs(tmp_path)) >= 5)
    finally:
        stop.request()
        thread.join(timeout=10)
    stop.close()
    assert not thread.is_alive()


def test_watcher_survives_a_missing_ctr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exit_watch, "RETRY_DELAY_FIRST", 0.01)
    stop = StopRequest()
    thread = run_in_thread(make_watcher(str(tmp_path / "no-such-ctr"), tmp_path, stop))
    time.sleep(0.3)
    assert thread.is_alive()
    stop.request()
    thread.join(timeout=10)
    stop.close()
    assert not thread.is_alive()


def test_stop_request_wakes_a_wait() -> None:
    stop = StopRequest()
    threading.Timer(0.1, stop.request).start()
    started = time.monotonic()
    assert stop.wait(30) is True
    assert time.monotonic() - started < 5
    assert stop.wait(30) is True  # stays requested
    stop.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- finding ctr ------------------------------------------------------------------------------


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_find_ctr_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None)
    assert find_ctr("") is None


def test_find_ctr_prefers_path(tmp_path: Path) -> None:
    ctr = _executable(tmp_path / "bin" / "ctr")
    assert find_ctr(str(tmp_path / "bin")) == str(ctr)


def test_find_ctr_beside_containerd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _executable(tmp_path / "bin" / "containerd")
    ctr = _executable(tmp_path / "bin" / "ctr")
    # Only containerd is "on PATH" (the real machine's /usr/bin/ctr must not be found).
    monkeypatch.setattr(
        shutil,
        "which",
        lambda name, path=None: str(tmp_path / "bin" / name) if name == "containerd" else None,
    )
    assert find_ctr("") == str(ctr)


# -- archctl watch-exits ----------------------------------------------------------------------


def test_archctl_watch_exits_runs_until_sigterm(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    log_file = tmp_path / "arch.log"
    config = tmp_path / "arch.toml"
    config.write_text(f'state_dir = "{state_dir}"\nlog_file = "{log_file}"\nlog_level = "info"\n')
    recorded = ContainerState(str(state_dir), "default", "killed")
    recorded.write_record({})
    ctr = fake_ctr(tmp_path, f"printf '%s\\n' '{KILLED_137}'\nexec sleep 1000\n")
    environment = {**os.environ, "ARCH_CONFIG": str(config)}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "arch.cli.main", "--address", "/x.sock", "watch-exits",
         "--ctr", ctr],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert wait_for(lambda: recorded.get(EXIT_STATUS) == "137"), watcher.poll()
        announced = running_watchers(str(state_dir))
        assert [(w["pid"], w["address"]) for w in announced] == [(watcher.pid, "/x.sock")]
        watcher.send_signal(signal.SIGTERM)
        output, _ = watcher.communicate(timeout=10)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()

    assert watcher.returncode == 0, output
    ctr_pid = int(ctr_runs(tmp_path)[0][0])
    assert wait_for(lambda: not _pid_alive(ctr_pid), 5)
    log = log_file.read_text()
    assert "recorded exit status 137 of default/killed" in log
    assert "exit watcher stopped" in log
    assert running_watchers(str(state_dir)) == []
    assert not [p for p in os.listdir(state_dir) if p.startswith(exit_watch.PRESENCE_PREFIX)]


def test_archctl_watch_exits_fails_on_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "arch.toml"
    config.write_text("state_dir = 3\n")
    completed = subprocess.run(
        [sys.executable, "-m", "arch.cli.main", "watch-exits", "--ctr", "/bin/true"],
        env={**os.environ, "ARCH_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 1
    assert "state_dir must be an absolute path" in completed.stderr
