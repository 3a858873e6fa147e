"""A real checkpoint/restore round trip of a tiny container on this host (`archctl selftest`).

Through this host's containerd (ctr from PATH), in a dedicated namespace: import a one-layer
image built offline from a static payload program (arch/appliance/selftest_payload.c, compiled
here with the host's C compiler, or given with --payload), run an opted-in container
(ARCH_ENABLE=1, a fresh ARCH_CHECKPOINT_ID) with arch-runc as its runc, let it change its
filesystem and count in memory, `ctr task checkpoint` it, delete its task and container, run it
again with the same id and environment, and show that the same process continued (its random
token and counter) and that its filesystem changes are back. Each step is reported; everything
is removed afterwards, pass or fail, unless --keep.

The workload never starts twice in a successful run: it draws a random token once and appends a
line to /selftest/boots at each fresh start, so a restore that silently fell back to a fresh
create shows up as a new token and two boots.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from arch.appliance import selftest_payload
from arch.appliance.oci_image import oci_layout_tar_bytes, program_rootfs_tar_bytes
from arch.config import ConfigError, HostConfig, load_config
from arch.container.identity import ImagePathError, validate_namespace

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType

DEFAULT_NAMESPACE = "arch-selftest"
DEFAULT_ARCH_RUNC = "/usr/local/bin/arch-runc"
OK, FAIL, SKIP = "ok", "FAIL", "skip"
COMMAND_TIMEOUT = 60.0
CHECKPOINT_TIMEOUT = 180.0
WAIT_TIMEOUT = 30.0
POLL_INTERVAL = 0.2
LOG_TAIL_RECORDS = 4
LOG_TAIL_LINES = 30
# arch.log records begin with the time, e.g. "2026-11-29 08:31:29,060 ERROR [17945] arch: ...".
_LOG_RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
STATE_FILE = "/selftest/state"
BOOTS_FILE = "/selftest/boots"
MISSING = b"\0missing"  # a path the container's report left out
# The workload (the payload's `run`, see selftest_payload.c) changes the filesystem in every way:
# a new directory and file holding the token, an image file modified, one deleted, one renamed.
# Memory: the token and the counter live only in the process; /selftest/state is rewritten
# (atomically, every 0.2 s) from them as "<token> <counter>\n".
_STATE_LINE = re.compile(rb"([0-9a-f]{32}) ([0-9]+)\n")
# The exact contents the filesystem check expects to read back ("{token}": the workload's token;
# None: no such file).
EXPECTED_FILES = {
    "/selftest/note": "{token}\n",
    "/etc/hostname": "changed by archctl selftest\n",
    "/selftest/renamed": "renamed\n",
    "/selftest/to-rename": None,
    "/etc/group": None,
    BOOTS_FILE: "boot\n",
}


class StepFailed(Exception):
    """The step did not hold; the message says what was seen."""


class Interrupted(Exception):
    """SIGTERM arrived: stop the round trip, but still clean up."""


class StepResult(NamedTuple):
    name: str
    status: str
    seconds: float
    detail: str


class Workload(NamedTuple):
    """What the workload last wrote: its token (drawn once per fresh start) and its counter."""

    token: str
    counter: int


class Settings(NamedTuple):
    address: str
    namespace: str
    arch_runc: str
    runc_root: str | None
    payload: str | None
    keep: bool


class SigtermInterrupts:
    """Turn SIGTERM into Interrupted for the duration, so that cleanup still runs."""

    def __enter__(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._raise)

    def __exit__(self, *exc_info: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    @staticmethod
    def _raise(number: int, frame: FrameType | None) -> None:
        del number, frame
        raise Interrupted("terminated (SIGTERM)")


class Ctr:
    """`ctr --address A --namespace N ...` with bounded runs."""

    def __init__(self, binary: str, address: str, namespace: str) -> None:
        self.binary = binary
        self.address = address
        self.namespace = namespace

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, "--address", self.address, "--namespace", self.namespace, *args]
        try:
            return subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise StepFailed(f"`{_command(args)}` did not finish in {timeout:.0f}s") from error

    def check(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run; its stdout, or StepFailed with ctr's error output."""
        completed = self.run(*args, timeout=timeout)
        if completed.returncode != 0:
            raise StepFailed(
                f"`{_command(args)}` exited {completed.returncode}: "
                f"{_last_lines(completed.stderr or completed.stdout, 15)}"
            )
        return completed.stdout

    def task_status(self, container_id: str) -> str | None:
        """STATUS of the container's task (RUNNING, STOPPED, ...), None when it has none."""
        for row in self.check("task", "ls").splitlines()[1:]:
            columns = row.split()
            if columns and columns[0] == container_id:
                return columns[-1]
        return None

    def names(self, kind: str) -> list[str]:
        """`ctr <kind> ls --quiet` (containers, images, namespaces)."""
        return self.check(kind, "ls", "--quiet").split()


class Selftest:
    """One round trip; `run` returns every step's result, cleanup included."""

    def __init__(self, settings: Settings, report: Callable[[StepResult], None]) -> None:
        self.settings = settings
        self.report = report
        self.run_id = secrets.token_hex(4)
        self.container_id = f"selftest-{self.run_id}"
        self.image_name = f"localhost/arch-selftest:{self.run_id}"
        self.config = HostConfig("")
        self.ctr = Ctr("ctr", settings.address, settings.namespace)
        self.imported = False
        self.started = False
        self.checkpointed: Workload | None = None
        self.payload = b""
        # Only a namespace this run created is removed at cleanup.
        self.namespace_existed = True

    @property
    def image_dir(self) -> str:
        """Where ARCH puts the image: <checkpoint_root>/<namespace>/<checkpoint id>."""
        return os.path.join(self.config.checkpoint_root, self.settings.namespace, self.container_id)

    @property
    def where(self) -> str:
        return f"{self.settings.namespace}/{self.container_id}"

    def run(self) -> list[StepResult]:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("prerequisites", self.check_prerequisites),
            ("image", self.import_image),
            ("start", self.start_container),
            ("checkpoint", self.checkpoint),
            ("remove", self.remove_container),
            ("restore", self.restore),
            ("filesystem", self.check_filesystem),
        ]
        results: list[StepResult] = []
        try:
            for name, step in steps:
                if results and results[-1].status != OK:
                    results.append(self._emit(StepResult(name, SKIP, 0.0, "not run")))
                    continue
                results.append(self._timed(name, step))
        finally:
            results.append(self._timed("cleanup", self.clean_up))
        return results

    def _timed(self, name: str, step: Callable[[], str]) -> StepResult:
        started = time.monotonic()
        try:
            status, detail = OK, step()
        except (StepFailed, Interrupted, OSError) as error:
            status, detail = FAIL, str(error)
        except KeyboardInterrupt:
            status, detail = FAIL, "interrupted"
        except Exception as error:  # a selftest reports every failure as a step, never a trace
            status, detail = FAIL, f"{type(error).__name__}: {error}"
        return self._emit(StepResult(name, status, time.monotonic() - started, detail))

    def _emit(self, result: StepResult) -> StepResult:
        self.report(result)
        return result

    # -- steps -----------------------------------------------------------------------------

    def check_prerequisites(self) -> str:
        try:
            self.config = load_config()
        except ConfigError as error:
            raise StepFailed(str(error)) from error
        try:
            validate_namespace(self.settings.namespace)
        except ImagePathError as error:
            raise StepFailed(str(error)) from error
        ctr = shutil.which("ctr")
        if ctr is None:
            raise StepFailed("ctr (containerd's client) not found on PATH")
        self.ctr.binary = ctr
        arch_runc = self.settings.arch_runc
        if not os.path.isabs(arch_runc) or not os.access(arch_runc, os.X_OK):
            raise StepFailed(f"arch-runc {arch_runc!r} is not an executable (see --arch-runc)")
        payload = self._payload()
        version = self.ctr.run("version", timeout=15)
        if version.returncode != 0:
            raise StepFailed(
                f"containerd at {self.settings.address} does not answer: "
                f"{_last_lines(version.stderr, 3)}"
            )
        self.namespace_existed = self.settings.namespace in self.ctr.names("namespaces")
        return (
            f"containerd {_server_version(version.stdout)} at {self.settings.address}, "
            f"arch-runc {arch_runc}, images under {self.config.checkpoint_root} "
            f"({self.config.path}), {payload}"
        )

    def _payload(self) -> str:
        """Build (or load --payload) the container's program; what was done, for the report."""
        try:
            if self.settings.payload:
                self.payload = selftest_payload.load(self.settings.payload)
                return f"payload {self.settings.payload}"
            self.payload = selftest_payload.build()
        except selftest_payload.PayloadError as error:
            raise StepFailed(str(error)) from error
        return f"payload built with {selftest_payload.COMPILER} -static"

    def import_image(self) -> str:
        layer = program_rootfs_tar_bytes(
            selftest_payload.IMAGE_PATH, self.payload, "arch-selftest"
        )
        image = oci_layout_tar_bytes(
            layer, self.image_name, "archctl selftest", selftest_payload.RUN_COMMAND
        )
        with tempfile.TemporaryDirectory(prefix="arch-selftest-") as work_dir:
            archive = os.path.join(work_dir, "image.tar")
            with open(archive, "wb") as archive_file:
                archive_file.write(image)
            self.imported = True
            self.ctr.check("images", "import", archive, timeout=120)
        return f"{self.image_name} ({len(layer) // 1024} KiB) in namespace {self.ctr.namespace}"

    def start_container(self) -> str:
        self._run_container()
        workload = self._wait_for_workload(above=2)
        return f"container {self.container_id} running, counter at {workload.counter}"

    def checkpoint(self) -> str:
        before = self._wait_for_workload(above=0)
        completed = self.ctr.run(
            "task", "checkpoint", self.container_id, timeout=CHECKPOINT_TIMEOUT
        )
        if completed.returncode != 0:
            raise StepFailed(
                f"`ctr task checkpoint` exited {completed.returncode}: "
                f"{_last_lines(completed.stderr, 15)}{self._log_excerpt()}"
            )
        self.checkpointed = before
        self._wait_for(lambda: self.ctr.task_status(self.container_id) == "STOPPED",
                       "the checkpointed container did not stop")  # fmt: skip
        metadata = self._image_metadata()
        filesystem = metadata.get("filesystem", {}).get("mode")
        return (
            f"image at {self.image_dir} ({_tree_size(self.image_dir) // 1024} KiB, filesystem: "
            f"{filesystem}), counter was {before.counter}, container stopped"
        )

    def remove_container(self) -> str:
        self.ctr.check("task", "delete", self.container_id)
        self.ctr.check("containers", "delete", self.container_id)
        self._image_metadata()
        return "task and container deleted, the image stays"

    def restore(self) -> str:
        assert self.checkpointed is not None
        self._run_container()
        first = self._wait_for_workload(above=0)
        if first.token != self.checkpointed.token:
            boots = (self._report(BOOTS_FILE)[BOOTS_FILE] or b"").count(b"boot")
            raise StepFailed(
                f"the container started fresh instead of continuing (new token, {boots} boots)"
                f"{self._log_excerpt()}"
            )
        if first.counter < self.checkpointed.counter:
            raise StepFailed(
                f"counter went back: {first.counter} < {self.checkpointed.counter}"
                f"{self._log_excerpt()}"
            )
        now = self._wait_for_workload(above=first.counter)
        return (
            f"the same process continued: counter {self.checkpointed.counter} before the "
            f"checkpoint, {first.counter} at restore, {now.counter} now"
        )

    def check_filesystem(self) -> str:
        assert self.checkpointed is not None
        token = self.checkpointed.token
        expected = {
            path: None if content is None else content.format(token=token).encode()
            for path, content in EXPECTED_FILES.items()
        }
        found = self._report(*expected)
        wrong = [
            f"{path}: expected {_describe(want)}, found {_describe(found.get(path, MISSING))}"
            for path, want in expected.items()
            if found.get(path, MISSING) != want
        ]
        if wrong:
            raise StepFailed("; ".join(wrong))
        return "created, modified, deleted and renamed files are as the container left them"

    def clean_up(self) -> str:
        if self.settings.keep:
            return self._kept()
        removed: list[str] = []
        problems: list[str] = []
        if self.started:
            self._remove_container_and_task(removed, problems)
        if self.imported:
            self._remove_images(removed, problems)
        self._remove_image_dir(removed, problems)
        self._remove_arch_state(problems)
        if self.imported and not self.namespace_existed:
            self._remove_namespace(removed)
        if problems:
            raise StepFailed("left behind: " + "; ".join(problems))
        return "removed " + ", ".join(removed) if removed else "nothing to remove"

    # -- helpers ---------------------------------------------------------------------------

    def _run_container(self) -> None:
        args = ["run", "--detach", "--runc-binary", self.settings.arch_runc]
        if self.settings.runc_root:
            args += ["--runc-root", self.settings.runc_root]
        args += ["--env", "ARCH_ENABLE=1", "--env", f"ARCH_CHECKPOINT_ID={self.container_id}"]
        self.started = True
        try:
            self.ctr.check(
                *args, self.image_name, self.container_id, *selftest_payload.RUN_COMMAND
            )
        except StepFailed as error:
            raise StepFailed(f"{error}{self._log_excerpt()}") from error

    def _report(self, *paths: str) -> dict[str, bytes | None]:
        """The exact contents of `paths` in the container (None: no such file), read by the
        payload's `report` mode through `ctr task exec`."""
        exec_id = f"probe-{secrets.token_hex(4)}"
        output = self.ctr.check(
            "task", "exec", "--exec-id", exec_id, self.container_id,
            *selftest_payload.REPORT_COMMAND, *paths,
        )  # fmt: skip
        try:
            return selftest_payload.parse_report(output)
        except selftest_payload.PayloadError as error:
            raise StepFailed(str(error)) from error

    def _read_workload(self) -> Workload | None:
        """The workload's state; None until it wrote one (or while exec is not possible yet)."""
        try:
            state = self._report(STATE_FILE).get(STATE_FILE)
        except StepFailed:
            return None
        match = _STATE_LINE.fullmatch(state or b"")
        if match is None:
            return None
        return Workload(match.group(1).decode(), int(match.group(2)))

    def _wait_for_workload(self, above: int) -> Workload:
        """The workload's state once its counter is above `above` (it keeps counting)."""
        seen: list[Workload] = []

        def counted() -> bool:
            if self.ctr.task_status(self.container_id) not in ("RUNNING", None):
                raise StepFailed(
                    f"the container is {self.ctr.task_status(self.container_id)}"
                    f"{self._log_excerpt()}"
                )
            workload = self._read_workload()
            if workload is not None:
                seen.append(workload)
            return workload is not None and workload.counter > above

        self._wait_for(counted, f"the workload's counter did not pass {above}")
        return seen[-1]

    @staticmethod
    def _wait_for(predicate: Callable[[], bool], failure: str) -> None:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while not predicate():
            if time.monotonic() > deadline:
                raise StepFailed(f"{failure} within {WAIT_TIMEOUT:.0f}s")
            time.sleep(POLL_INTERVAL)

    def _image_metadata(self) -> dict[str, Any]:
        path = os.path.join(self.image_dir, "metadata.json")
        try:
            with open(path, "rb") as metadata_file:
                document: dict[str, Any] = json.loads(metadata_file.read())
        except FileNotFoundError as error:
            raise StepFailed(
                f"no checkpoint image at {self.image_dir} (does containerd's arch-runc use "
                f"{self.config.path}?){self._log_excerpt()}"
            ) from error
        except ValueError as error:
            raise StepFailed(f"{path}: not JSON: {error}") from error
        return document

    def _log_excerpt(self) -> str:
        """ARCH's last log records about this container, to say why a step failed."""
        records = _log_records_about(self.config.log_file, self.where)[-LOG_TAIL_RECORDS:]
        if not records:
            return f"\n(nothing about {self.where} in {self.config.log_file})"
        lines = "\n".join(records).splitlines()
        if len(lines) > LOG_TAIL_LINES:
            lines = ["...", *lines[-LOG_TAIL_LINES:]]
        return f"\nARCH log ({self.config.log_file}):\n" + "\n".join(lines)

    def _remove_container_and_task(self, removed: list[str], problems: list[str]) -> None:
        if self.ctr.run("task", "ls").returncode != 0:
            problems.append(f"container {self.container_id}: containerd does not answer")
            return
        if self.ctr.task_status(self.container_id) is not None:
            self.ctr.run("task", "kill", "--signal", "SIGKILL", self.container_id)
            deleted = self.ctr.run("task", "delete", "--force", self.container_id)
            if self.ctr.task_status(self.container_id) is not None:
                problems.append(f"task {self.container_id}: {_last_lines(deleted.stderr, 3)}")
            else:
                removed.append("the task")
        if self.container_id in self.ctr.names("containers"):
            deleted = self.ctr.run("containers", "delete", self.container_id)
            if deleted.returncode != 0:
                problems.append(f"container {self.container_id}: {_last_lines(deleted.stderr, 3)}")
            else:
                removed.append(f"container {self.container_id}")

    def _remove_images(self, removed: list[str], problems: list[str]) -> None:
        # Ours: the base image, and the checkpoint image `ctr task checkpoint` names after the
        # container (containerd records the checkpoint in its content store too).
        ours = [name for name in self.ctr.names("images") if self.run_id in name]
        if ours:
            self.ctr.run("images", "remove", "--sync", *ours, timeout=120)
        left = [name for name in self.ctr.names("images") if self.run_id in name]
        if left:
            problems.append(f"images {' '.join(left)}")
        elif ours:
            removed.append(f"images {' '.join(ours)}")

    def _remove_image_dir(self, removed: list[str], problems: list[str]) -> None:
        from arch.checkpoint.storage.beneath import opened_root
        from arch.checkpoint.storage.store import remove

        if not self.config.path:  # the configuration never loaded: ARCH never ran
            return
        relative = f"{self.settings.namespace}/{self.container_id}"
        try:
            with opened_root(self.config.checkpoint_root) as root_fd:
                removed_image = remove(root_fd, relative)
        except FileNotFoundError:
            return  # no checkpoint root: no image either
        except OSError as error:
            problems.append(f"checkpoint image {self.image_dir}: {error}")
            return
        if removed_image:
            removed.append(f"checkpoint image {self.image_dir}")
        with contextlib.suppress(OSError):  # kept when not empty (other images in it)
            os.rmdir(os.path.dirname(self.image_dir))
        if os.path.lexists(self.image_dir):
            problems.append(f"checkpoint image {self.image_dir}")

    def _remove_arch_state(self, problems: list[str]) -> None:
        """ARCH's state of the container, when runc could not delete it (a create that failed
        leaves its record behind if even `runc delete --force` fails)."""
        from arch.container.state import ContainerState, StateError

        if not self.config.path or (self.started and self._container_may_exist()):
            return
        try:
            ContainerState(
                self.config.state_dir, self.ctr.namespace, self.container_id
            ).remove_all()
        except (StateError, OSError) as error:
            problems.append(f"ARCH state of {self.where}: {error}")

    def _container_may_exist(self) -> bool:
        listing = self.ctr.run("containers", "ls", "--quiet")
        return listing.returncode != 0 or self.container_id in listing.stdout.split()

    def _remove_namespace(self, removed: list[str]) -> None:
        namespace = self.ctr.namespace
        if self.ctr.names("containers") or self.ctr.names("images"):
            removed.append(f"(namespace {namespace} kept: it holds other containers or images)")
            return
        deleted = self.ctr.run("namespaces", "remove", namespace)
        if deleted.returncode == 0:
            removed.append(f"namespace {namespace}")
        else:
            removed.append(f"(namespace {namespace} kept: {_last_lines(deleted.stderr, 2)})")

    def _kept(self) -> str:
        ctr = f"ctr --address {self.settings.address} -n {self.ctr.namespace}"
        return (
            f"kept (--keep): container {self.container_id}, image {self.image_name}, "
            f"checkpoint image {self.image_dir}\n"
            f"remove with: {ctr} task delete --force {self.container_id}; "
            f"{ctr} containers delete {self.container_id}; {ctr} images remove --sync "
            f"{self.image_name}; rm -rf {self.image_dir}"
        )


def _server_version(ctr_version_output: str) -> str:
    """containerd's version from `ctr version` (the Server section's Version line)."""
    server = ctr_version_output.split("Server:", 1)[-1]
    for line in server.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Version":
            return value.strip()
    return "(version unknown)"


def _command(args: Sequence[str]) -> str:
    """`ctr ARGS` for messages."""
    return " ".join(["ctr", *args])


def _last_lines(text: str, count: int) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:]) if lines else "(no output)"


def _log_records_about(log_file: str, where: str) -> list[str]:
    """The log records (a line and its continuation lines) whose first line names `where`."""
    records: list[str] = []
    try:
        with open(log_file, encoding="utf-8", errors="replace") as log:
            taking = False
            for line in log:
                if _LOG_RECORD_START.match(line):
                    taking = where in line
                    if taking:
                        records.append(line.rstrip("\n"))
                elif taking:
                    records[-1] += "\n" + line.rstrip("\n")
    except OSError:
        return []
    return records


def _tree_size(path: str) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        total += sum(os.lstat(os.path.join(directory, name)).st_size for name in files)
    return total


def _describe(content: bytes | None) -> str:
    if content == MISSING:
        return "nothing (not reported)"
    if content is None:
        return "no file"
    return repr(content.decode(errors="replace"))
