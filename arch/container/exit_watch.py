"""Exit statuses of ARCH containers, learnt from containerd's /tasks/exit events.

`runc delete` is not told how the container ended, but the image of an ARCH container may be
removed at delete only after an exit with code 0. containerd's shim publishes a TaskExit event
for every process that exits; `archctl watch-exits` follows `ctr events` (which covers every
namespace, whatever its -n) and records the init process's status in the container's state
(flag EXIT_STATUS). arch-runc's delete reads it with `wait_for_exit_status`.

A running watcher announces itself in the state dir (`.exit-watcher-<pid>`: its pid, start time,
boot and containerd address; see WatcherPresence). Without a live announcement no exit status
can arrive, so a delete does not wait for one, and `archctl verify` says the watcher is missing.

`ctr events` (containerd 1.6) prints one line per event:
    <Go time.String() timestamp> <namespace> <topic> <event as JSON>
e.g.
    2026-11-29 08:20:28.977529094 +0000 UTC default /tasks/exit {"container_id":"c1","id":"c1",
    "pid":30137,"exit_status":1,"exited_at":"2026-11-29T08:20:28.977133016Z"}
(on one line). The JSON omits zero values: an exit with code 0 has no "exit_status" at all.
"id" is the process id: the container id for the init process, the exec id for exec processes.

arch-runc imports this module on its delete path: module-level imports stay cheap; the watcher's
machinery (subprocess, selectors, signal, json) is imported where it is used.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from arch.container.state import EXIT_STATUS, ContainerState, StateError

if TYPE_CHECKING:
    import logging
    import subprocess
    from collections.abc import Callable

TASK_EXIT_TOPIC = "/tasks/exit"
CTR_NAME = "ctr"
CTR_ERROR_PREFIX = "ctr: "
CONTAINERD_NAME = "containerd"

# <timestamp: tokens without "/"> <namespace> </topic> [<JSON>]. The timestamp is matched lazily:
# the first "<token> /<token>" pair is namespace and topic (timestamps hold no "/").
_RFC3339 = re.compile(
    r"(?P<seconds>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?"
    r"(?P<zone>[Zz]|[+-]\d\d:\d\d)\Z"
)
_EVENT_LINE = re.compile(
    r"^(?P<timestamp>\S.*?) (?P<namespace>[^\s/]\S*) (?P<topic>/\S+)(?: (?P<payload>.*))?$"
)

DEFAULT_WAIT_TIMEOUT = 2.0
WAIT_INTERVAL = 0.01
# `<state_dir>/.exit-watcher-<pid>`: dot-named, so never a namespace of the state dir.
PRESENCE_PREFIX = ".exit-watcher-"
PRESENCE_MAX_BYTES = 4096

RETRY_DELAY_FIRST = 0.5
RETRY_DELAY_MAX = 30.0
# A ctr that ran this long was connected: its exit starts the backoff over.
STABLE_RUN_SECONDS = 30.0
MAX_LINE_BYTES = 1 << 20
READ_CHUNK = 65536
CTR_STOP_TIMEOUT = 5.0


class EventParseError(ValueError):
    """A line of `ctr events` output that is not an event in the expected form."""


class Event(NamedTuple):
    """One line of `ctr events`: the payload is the event's JSON text ("" when ctr printed none)."""

    timestamp: str
    namespace: str
    topic: str
    payload: str


class TaskExit(NamedTuple):
    """A /tasks/exit event: `process_id` equals `container_id` for the container's init."""

    namespace: str
    container_id: str
    process_id: str
    pid: int
    exit_status: int
    exited_at: str

    @property
    def is_init(self) -> bool:
        return self.process_id == self.container_id


# -- parsing (pure) ---------------------------------------------------------------------------


def parse_event_line(line: str) -> Event:
    """Split one `ctr events` line; EventParseError when it is not in that format."""
    match = _EVENT_LINE.match(line.rstrip("\r\n"))
    if match is None:
        raise EventParseError(f"not a ctr events line: {_excerpt(line)}")
    return Event(
        timestamp=match["timestamp"],
        namespace=match["namespace"],
        topic=match["topic"],
        payload=match["payload"] or "",
    )


def parse_task_exit(event: Event) -> TaskExit:
    """The TaskExit carried by a /tasks/exit event; EventParseError when its JSON is unusable."""
    import json

    if event.topic != TASK_EXIT_TOPIC:
        raise EventParseError(f"topic {event.topic}, not {TASK_EXIT_TOPIC}")
    try:
        fields = json.loads(event.payload)
    except ValueError as error:
        raise EventParseError(
            f"{TASK_EXIT_TOPIC} payload is not JSON: {_excerpt(event.payload)}"
        ) from error
    if not isinstance(fields, dict):
        raise EventParseError(
            f"{TASK_EXIT_TOPIC} payload is not an object: {_excerpt(event.payload)}"
        )
    return TaskExit(
        namespace=event.namespace,
        container_id=_text_field(fields, "container_id"),
        process_id=_text_field(fields, "id"),
        pid=_count_field(fields, "pid"),
        # Omitted when zero (protobuf JSON conventions): absent means exit code 0.
        exit_status=_count_field(fields, "exit_status"),
        exited_at=str(fields.get("exited_at", "")),
    )


def task_exit_from_line(line: str) -> TaskExit | None:
    """The TaskExit of a /tasks/exit line, None for other events; EventParseError if malformed."""
    event = parse_event_line(line)
    if event.topic != TASK_EXIT_TOPIC:
        return None
    return parse_task_exit(event)


def _text_field(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise EventParseError(f"{TASK_EXIT_TOPIC}: field {name!r} missing or not text: {fields}")
    return value


def _count_field(fields: dict[str, Any], name: str) -> int:
    value = fields.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EventParseError(f"{TASK_EXIT_TOPIC}: field {name!r} is not a count: {fields}")
    return value


def _excerpt(text: str, limit: int = 200) -> str:
    stripped = text.rstrip("\r\n")
    return repr(stripped if len(stripped) <= limit else stripped[:limit] + "...")


# -- recording and reading --------------------------------------------------------------------


def new_instance(pid_file: str | None) -> dict[str, object]:
    """What `create` records about the container instance it makes: when it was created and
    where runc writes its init's pid. An exit belongs to the instance only if it happened
    after that and (while the pid file is there) by that pid."""
    return {"created_ns": time.time_ns(), "pid_file": pid_file}


def belongs_to_instance(record: dict[str, Any], task_exit: TaskExit) -> bool:
    """Whether the exit is of the instance the record describes (not of an earlier container
    of the same id whose event arrives late)."""
    instance = record.get("instance")
    if not isinstance(instance, dict):
        return True  # written before instances were recorded
    created = instance.get("created_ns")
    exited = rfc3339_ns(task_exit.exited_at)
    if isinstance(created, int) and exited is not None and exited < created:
        return False
    pid_file = instance.get("pid_file")
    if isinstance(pid_file, str) and task_exit.pid:
        recorded_pid = _read_pid(pid_file)
        if recorded_pid is not None and recorded_pid != task_exit.pid:
            return False
    return True


def rfc3339_ns(text: str) -> int | None:
    """Nanoseconds since the epoch of containerd's exited_at ("2026-11-29T08:20:28.977133016Z"),
    None when it is not such a time."""
    from datetime import datetime, timezone

    match = _RFC3339.match(text)
    if match is None:
        return None
    zone = "+00:00" if match["zone"] in ("Z", "z") else match["zone"]
    try:
        seconds = datetime.fromisoformat(match["seconds"] + zone)
    except ValueError:
        return None
    whole = int((seconds - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds())
    return whole * 1_000_000_000 + int((match["fraction"] or "").ljust(9, "0")[:9])


def _read_pid(path: str) -> int | None:
    try:
        with open(path, "rb") as pid_file:
            text = pid_file.read(64).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def record_exit(state_dir: str, task_exit: TaskExit) -> bool:
    """Store the init process's exit status in an ARCH container's state.

    False (nothing written) for exec processes, for containers without ARCH state (ids that
    cannot be ARCH state names are containers ARCH never recorded either) and for the exit of
    an earlier instance of the same id.
    """
    if not task_exit.is_init:
        return False
    try:
        state = ContainerState(state_dir, task_exit.namespace, task_exit.container_id)
    except StateError:
        return False
    # Not set(): a delete may have removed the state meanwhile, and must not see it come back;
    # the instance is checked under the lock a new create's record is written under.
    return state.set_if_record(
        EXIT_STATUS,
        str(task_exit.exit_status),
        lambda record: belongs_to_instance(record, task_exit),
    )


def wait_for_exit_status(
    state: ContainerState, timeout: float = DEFAULT_WAIT_TIMEOUT
) -> int | None:
    """The recorded exit status of the container's init, polling up to `timeout` seconds.

    containerd publishes the exit event around the time it asks for delete, so the status can
    arrive a little after the delete call. None when it stays unknown (an event missed while
    the watcher reconnected, a malformed value) or the state is gone; at once when no watcher
    runs for this state dir (nothing could record it).
    """
    deadline = time.monotonic() + timeout
    value = state.get(EXIT_STATUS)
    if value is None and not running_watchers(state.state_dir):
        return None
    while True:
        if value is not None:
            return _exit_status_value(value)
        if time.monotonic() >= deadline or not state.exists():
            return None
        time.sleep(WAIT_INTERVAL)
        value = state.get(EXIT_STATUS)


def _exit_status_value(text: str) -> int | None:
    stripped = text.strip()
    return int(stripped) if stripped.isdigit() else None


# -- the watcher's presence -------------------------------------------------------------------


class WatcherPresence:
    """A watcher's announcement in the state dir: `.exit-watcher-<pid>` holding
    {"pid", "start" (clock ticks after boot), "boot" (boot id), "address"}, written at start
    and removed at stop. A file whose process is gone (a killed watcher) counts for nothing and
    is removed by the next watcher's announce()."""

    def __init__(self, state_dir: str, address: str) -> None:
        from arch.runc.process_group import ProcessIdentity

        self.state_dir = state_dir
        self.address = address
        self.identity = ProcessIdentity.own()
        self.path = os.path.join(state_dir, f"{PRESENCE_PREFIX}{self.identity.pid}")

    def announce(self) -> list[str]:
        """Write this watcher's file; returns the stale files of dead watchers it removed."""
        import json

        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        removed = _remove_dead_presences(self.state_dir)
        document = {
            "pid": self.identity.pid,
            "start": self.identity.start,
            "boot": _boot_id(),
            "address": self.address,
        }
        temp = f"{self.path}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600)
        try:
            os.write(fd, json.dumps(document).encode("utf-8"))
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        return removed

    def withdraw(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return


def running_watchers(state_dir: str) -> list[dict[str, Any]]:
    """The announcements of watchers that run now for `state_dir` (pid + start time + boot)."""
    return [document for document, alive in _presences(state_dir) if alive]


def _presences(state_dir: str) -> list[tuple[dict[str, Any], bool]]:
    """(announcement, whether its process runs) of every presence file in the state dir."""
    try:
        names = [name for name in os.listdir(state_dir) if _is_presence_name(name)]
    except OSError:
        return []
    found = []
    for name in sorted(names):
        document = _read_presence(os.path.join(state_dir, name))
        if document is not None:
            document["file"] = name
            found.append((document, _presence_alive(document)))
    return found


def _is_presence_name(name: str) -> bool:
    return name.startswith(PRESENCE_PREFIX) and name[len(PRESENCE_PREFIX) :].isdigit()


def _read_presence(path: str) -> dict[str, Any] | None:
    from arch import bounded_json

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        data = os.read(fd, PRESENCE_MAX_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        document = bounded_json.loads(data)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _presence_alive(document: dict[str, Any]) -> bool:
    from arch.runc.process_group import ProcessIdentity

    pid, start = document.get("pid"), document.get("start")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    if isinstance(start, bool) or not isinstance(start, int):
        return False
    return document.get("boot") == _boot_id() and ProcessIdentity(pid, start).alive()


def _remove_dead_presences(state_dir: str) -> list[str]:
    removed = []
    for document, alive in _presences(state_dir):
        if not alive:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(state_dir, document["file"]))
            removed.append(str(document["file"]))
    return removed


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            return boot.read().strip()
    except OSError:
        return ""


# -- the watcher ------------------------------------------------------------------------------


def find_ctr(search_path: str | None = None) -> str | None:
    """`ctr` on PATH (plus the sbin directories), else the one beside containerd."""
    import shutil

    path = os.pathsep.join(
        [
            search_path if search_path is not None else os.environ.get("PATH", ""),
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
    )
    found = shutil.which(CTR_NAME, path=path)
    if found is not None:
        return found
    containerd = shutil.which(CONTAINERD_NAME, path=path)
    if containerd is None:
        return None
    beside = os.path.join(os.path.dirname(os.path.realpath(containerd)), CTR_NAME)
    return beside if os.access(beside, os.X_OK) else None


class StopRequest:
    """A stop flag whose setting also wakes a select() (safe to set from a signal handler)."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.requested = False

    def request(self) -> None:
        self.requested = True
        try:
            os.write(self._write_fd, b"x")
        except BlockingIOError:
            return  # already woken: the pipe is full of earlier requests

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, returning early (True) when a stop is requested."""
        import select

        if not self.requested:
            select.select([self.read_fd], [], [], seconds)
        return self.requested

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self._write_fd)


class ExitWatcher:
    """Follows `ctr --address A events` and records exits; restarts ctr with backoff.

    With `sweep`, also runs it at start and then every `sweep_interval` seconds (the host's
    clean-up of what killed operations left: arch.checkpoint.storage.sweep).
    """

    def __init__(
        self,
        ctr: str,
        address: str,
        state_dir: str,
        logger: logging.Logger,
        stop: StopRequest,
        sweep: Callable[[], None] | None = None,
        sweep_interval: float = 300.0,
    ) -> None:
        self.ctr = ctr
        self.address = address
        self.state_dir = state_dir
        self.logger = logger
        self.stop = stop
        self.sweep = sweep
        self.sweep_interval = sweep_interval
        self._next_sweep = time.monotonic()

    def sweep_if_due(self) -> None:
        if self.sweep is None or time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.sweep_interval
        try:
            self.sweep()
        except Exception:  # the watcher must go on recording exits; the sweep retries later
            self.logger.exception("the periodic clean-up failed")

    def _until_sweep(self) -> float | None:
        if self.sweep is None:
            return None
        return max(0.0, self._next_sweep - time.monotonic())

    def run(self) -> None:
        """Watch until a stop is requested."""
        delay = RETRY_DELAY_FIRST
        while not self.stop.requested:
            started = time.monotonic()
            status = self._follow_one_ctr()
            if self.stop.requested:
                break
            if time.monotonic() - started >= STABLE_RUN_SECONDS:
                delay = RETRY_DELAY_FIRST
            self.logger.warning(
                "ctr events (containerd %s) ended with status %s; reconnecting in %.1fs",
                self.address,
                status,
                delay,
            )
            self.sweep_if_due()
            self.stop.wait(delay)
            delay = min(delay * 2, RETRY_DELAY_MAX)
        self.logger.info("exit watcher stopped")

    def handle_line(self, line: str) -> None:
        """Record the exit a line reports, if it is an ARCH container's init; never raises for
        a malformed line or a state that cannot be written."""
        try:
            event = parse_event_line(line)
            if event.topic != TASK_EXIT_TOPIC:
                self.logger.debug("event %s in namespace %s", event.topic, event.namespace)
                return
            task_exit = parse_task_exit(event)
        except EventParseError as error:
            if line.startswith(CTR_ERROR_PREFIX):  # ctr's own complaint (stderr), e.g. a dial error
                self.logger.warning("%s", line.rstrip("\r\n"))
            else:
                self.logger.warning("ignoring ctr events output: %s", error)
            return
        try:
            recorded = record_exit(self.state_dir, task_exit)
        except (OSError, StateError) as error:
            self.logger.warning(
                "cannot record exit status %d of %s/%s: %s",
                task_exit.exit_status,
                task_exit.namespace,
                task_exit.container_id,
                error,
            )
            return
        if recorded:
            self.logger.info(
                "recorded exit status %d of %s/%s (pid %d, exited at %s)",
                task_exit.exit_status,
                task_exit.namespace,
                task_exit.container_id,
                task_exit.pid,
                task_exit.exited_at,
            )
        else:
            self.logger.debug(
                "exit of %s/%s process %s not recorded (exec process, earlier instance or "
                "not ARCH)",
                task_exit.namespace,
                task_exit.container_id,
                task_exit.process_id,
            )

    def _follow_one_ctr(self) -> int | None:
        """Run one `ctr events` until it exits or a stop is requested; its exit status."""
        import subprocess

        argv = [self.ctr, "--address", self.address, "events"]
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # ctr's complaints become logged "ignoring" lines
                close_fds=True,
            )
        except OSError as error:
            self.logger.warning("cannot run %s: %s", self.ctr, error)
            return None
        self.logger.info("watching containerd events at %s (ctr pid %d)", self.address, process.pid)
        try:
            self._read_lines(process)
        finally:
            _end_process(process)
        return process.returncode

    def _read_lines(self, process: subprocess.Popen[bytes]) -> None:
        import selectors

        assert process.stdout is not None
        output_fd = process.stdout.fileno()
        pending = b""
        with selectors.DefaultSelector() as selector:
            selector.register(output_fd, selectors.EVENT_READ)
            selector.register(self.stop.read_fd, selectors.EVENT_READ)
            while not self.stop.requested:
                self.sweep_if_due()
                ready = {key.fd for key, _ in selector.select(self._until_sweep())}
                if output_fd not in ready:
                    continue
                chunk = os.read(output_fd, READ_CHUNK)
                if not chunk:
                    if pending:
                        self.handle_line(pending.decode("utf-8", "replace"))
                    return
                pending = self._handle_complete_lines(pending + chunk)

    def _handle_complete_lines(self, data: bytes) -> bytes:
        """Handle every complete line in `data`; return the incomplete rest."""
        *lines, rest = data.split(b"\n")
        for line in lines:
            self.handle_line(line.decode("utf-8", "replace"))
        if len(rest) > MAX_LINE_BYTES:
            self.logger.warning(
                "ignoring ctr events output: a line longer than %d bytes", MAX_LINE_BYTES
            )
            return b""
        return rest


def _end_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate our ctr child (if still running) and reap it."""
    import subprocess

    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=CTR_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
