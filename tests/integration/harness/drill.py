"""The Spot field drill's hosts: each a containerd and a dockerd of its own (Docker's runtime
`arch` = the arch-runc under test), its own host name (a UTS namespace: pool claims and images
name the host), an IMDSv2 server, `archctl spot-watch` and `archctl watch-exits`, all on one
checkpoint storage shared with the other host; the ECS agent of the platform model
(platform_model.EcsAgent) on top. `end()` is the host's end at the notice's time: every process
of the host is killed, its daemons gone.

The workload writes a journal on the shared storage (a bind mount, the same path on both
hosts): one line per step, `<token> <counter> <host>`; the token is drawn once at a fresh start
and lives in memory, so a restored copy goes on with the same token and counter, a fresh start
shows a new token. `<host>` is read each step from /host-identity, a file each host binds into
its containers (A's says A, B's says B): a restored process reads the host it runs on now.
(Not a clock: CRIU restores a process into a time namespace that continues its own boot time.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from arch import host_identity
from tests.imds_server import ImdsServer
from tests.stack import current

from . import checkpointing as cr
from . import procs
from .archctl import archctl_argv, archctl_environment
from .containerd import ContainerdNode
from .docker import DockerDaemon
from .images import IMAGE_PATH_ENV, BusyboxImage

STACK = current()
JOURNAL_IN_CONTAINER = "/journal"
IDENTITY_IN_CONTAINER = "/host-identity"
CGROUP_ROOT = Path("/sys/fs/cgroup")
_LONG_ID = re.compile(r"\b[0-9a-f]{64}\b")
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ \[\d+\] [\w.]+: (.*)$")


def uts_wrapper(hostname: str) -> list[str]:
    """Run a daemon in a UTS namespace of its own with `hostname` (its children inherit it)."""
    return ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]


def journal_workload(*, exit_0_on_term: bool = False, ballast_mib: int = 0) -> list[str]:
    """The journal writer; `ballast_mib` of random data in its filesystem make its checkpoint
    take seconds (a bigger job)."""
    trap = "trap 'exit 0' TERM; " if exit_0_on_term else ""
    ballast = (f"dd if=/dev/urandom of=/state/ballast bs=1M count={ballast_mib} 2>/dev/null; "
               if ballast_mib else "")  # fmt: skip
    return ["sh", "-c", (
        f"{trap}tok=$(cat /proc/sys/kernel/random/uuid); i=0; mkdir -p /state; {ballast}"
        "while true; do i=$((i+1)); echo $i > /state/next; mv /state/next /state/counter; "
        f"read host < {IDENTITY_IN_CONTAINER}; "
        f"echo \"$tok $i $host\" >> {JOURNAL_IN_CONTAINER}/log; "
        f"if [ -f {JOURNAL_IN_CONTAINER}/finish ]; then exit 0; fi; sleep 0.2; done"
    )]  # fmt: skip


@dataclass(frozen=True)
class Line:
    token: str
    counter: int
    host: str


def read_journal(path: Path) -> list[Line]:
    lines = []
    for text in path.read_text().splitlines():
        token, counter, host = text.split()
        lines.append(Line(token, int(counter), host))
    return lines


@dataclass
class Timeline:
    """Events of one drill case on the wall clock; printed relative to the notice."""

    title: str
    events: list[tuple[float, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    notice_at: float | None = None

    def add(self, host: str, what: str, at: float | None = None) -> None:
        with self.lock:
            self.events.append((time.time() if at is None else at, host, what))

    def add_arch_log(self, host: str, log_file: Path, wanted: Sequence[str],
                     shared: Path | None = None) -> None:  # fmt: skip
        """ARCH's own log lines of a host that mention one of `wanted` (container ids cut to
        12 characters, the shared storage's path to <shared>)."""
        for line in cr.read_text(log_file).splitlines():
            match = _LOG_LINE.match(line)
            if match and any(word in match.group(3) for word in wanted):
                stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
                stamp += int(match.group(2)) / 1000
                text = _LONG_ID.sub(lambda m: m.group(0)[:12], match.group(3))
                if shared is not None:
                    text = text.replace(str(shared), "<shared>")
                self.add(host, "arch: " + text[:220], stamp)

    def render(self) -> str:
        zero = self.notice_at or min((at for at, _, _ in self.events), default=0.0)
        rows = [f"== timeline: {self.title} (t=0: the notice is posted) =="]
        for at, host, what in sorted(self.events):
            rows.append(f"{at - zero:+8.2f}s  {host:<3} {what}")
        return "\n".join(rows)


class DrillHost:
    """One host of the drill (see the module docstring)."""

    def __init__(self, name: str, *, arch_runc: Path, real_runc: Path, shared: Path,
                 platform: str, restore_wait: float, timeline: Timeline,
                 work_dir: Path) -> None:  # fmt: skip
        self.name = name
        self.hostname = f"drill-host-{name.lower()}"
        self.timeline = timeline
        self.work_dir = work_dir
        wrapper = uts_wrapper(self.hostname)
        config = [f'platform = "{platform}"', f"restore_wait = {restore_wait}"]
        self.node = ContainerdNode(f"drill{name}", arch_runc=arch_runc, real_runc=real_runc,
                                   checkpoint_root=shared, wrapper=wrapper,
                                   config_lines=config)  # fmt: skip
        # Two hosts as ARCH tells hosts apart (leases, pool claims): their own host identity.
        self.node.arch.state_dir.mkdir(parents=True, exist_ok=True)
        host_identity.write_cache(str(self.node.arch.state_dir), f"drill-{name.lower()}")
        self.docker = DockerDaemon(self.node, wrapper=wrapper)
        self.imds = ImdsServer()  # what the ECS agent (the model) reads
        self.watch_imds = ImdsServer()  # the same service, as spot-watch reads it (see below)
        self.spot_watch: subprocess.Popen[bytes] | None = None
        self.exit_watcher: cr.ExitWatcher | None = None
        self.ended = False
        self.containers: list[str] = []  # full ids of the tasks run here
        self._image = ""
        self.identity = work_dir / f"identity-{name}"
        self.identity.write_text(f"{name}\n")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, image: BusyboxImage) -> None:
        self.node.start()
        self.docker.start()
        self.docker.import_rootfs(image.rootfs_tar, image.docker_name, IMAGE_PATH_ENV)
        self._image = image.docker_name
        self.exit_watcher = cr.start_exit_watcher(self.node, self.work_dir / f"exits-{self.name}")
        self.imds.start()
        self.watch_imds.start()

    def start_spot_watch(self, *extra: str) -> None:
        argv = archctl_argv(self.node, "spot-watch", "--endpoint", self.watch_imds.endpoint,
                            "--interval", "1", *extra)  # fmt: skip
        with (self.work_dir / f"spot-watch-{self.name}.log").open("ab") as log:
            self.spot_watch = subprocess.Popen(
                [*uts_wrapper(self.hostname), *argv], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=archctl_environment(self.node),
            )  # fmt: skip
        self.timeline.add(self.name, "spot-watch started (polls every 1 s)")

    def post_notice(self, lead_seconds: float, *, watcher_too: bool = True) -> float:
        """IMDS starts answering a terminate notice for now + lead; returns that time.
        `watcher_too=False`: spot-watch sees it only at show_notice_to_watcher() (which of the
        two pollers reads it first is chance; a case can fix the order)."""
        action_time = int(time.time() + lead_seconds) + 1
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(action_time))
        self.imds.notice = {"action": "terminate", "time": when}
        self.imds.mode = "notice"
        if watcher_too:
            self.show_notice_to_watcher()
        self.timeline.notice_at = time.time()
        self.timeline.add(self.name, f"IMDS: Spot notice posted, terminate at {when}")
        return float(action_time)

    def show_notice_to_watcher(self) -> None:
        self.watch_imds.notice = dict(self.imds.notice)
        self.watch_imds.mode = "notice"

    def stop(self) -> None:
        """Teardown (after the drill, or after the host's end)."""
        problems: list[str] = []
        if self.spot_watch is not None:
            procs.stop_process(self.spot_watch)
        if self.exit_watcher is not None and not self.ended:
            try:
                self.exit_watcher.stop()
            except AssertionError as error:
                problems.append(str(error))
        self.imds.stop()
        self.watch_imds.stop()
        for step in (self.docker.stop, self.node.stop):
            try:
                step()
            except AssertionError as error:
                problems.append(str(error))
        for container in self.containers:
            problems += procs.remove_cgroups(f"/docker/{container}")
        if problems:
            raise AssertionError(f"drill host {self.name} teardown: " + "; ".join(problems))

    # -- tasks -----------------------------------------------------------------------------

    def run_task(self, name: str, env: dict[str, str], journal: Path, *,
                 exit_0_on_term: bool = False, extra: Sequence[str] = (),
                 ballast_mib: int = 0) -> str:  # fmt: skip
        """docker run (as the ECS agent starts a task's container); the full container id once
        it runs."""
        args = ["--detach", "-v", f"{journal}:{JOURNAL_IN_CONTAINER}",
                "-v", f"{self.identity}:{IDENTITY_IN_CONTAINER}:ro", *extra]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        self.timeline.add(self.name, f"docker run {name} (create)")
        command = journal_workload(exit_0_on_term=exit_0_on_term, ballast_mib=ballast_mib)
        self.docker.run_container(name, self._image, command, extra_args=args, timeout=600)
        container = self.docker.container_id(name)
        self.containers.append(container)
        self.timeline.add(self.name, f"{name} running")
        return container

    def stop_container(self, name: str, timeout: int) -> None:
        self.docker.docker("stop", "--time", str(timeout), name, timeout=timeout + 300)
        self.timeline.add(self.name, f"{name} stopped (docker stop returned)")

    def state(self, name: str) -> dict[str, object]:
        text = self.docker.docker("inspect", "--format", "{{json .State}}", name).stdout
        state: dict[str, object] = json.loads(text)
        return state

    # -- the host's end --------------------------------------------------------------------

    def end(self) -> None:
        """The instance goes at the notice's time: every process of this host is killed
        (containers, frozen or not, their shims, containerd, dockerd, spot-watch, the exit
        watcher); nothing of it runs on."""
        daemons = [p for p in (self.spot_watch, self.node.process, self.docker.process)
                   if p is not None]  # fmt: skip
        if self.exit_watcher is not None:
            daemons.append(self.exit_watcher.process)
        shims = procs.pids_with_argument(self.node.address)
        victims = set(shims) | set(_descendants(shims))
        cgroups = {cg for pid in victims for cg in _freezer_cgroups(pid)}
        for process in daemons:
            _sigkill(process.pid)
        for pid in victims:
            _sigkill(pid)
        for cgroup in cgroups:  # cgroup v1: a frozen task dies only once thawed
            _write(cgroup / "freezer.state", "THAWED")
        for process in daemons:
            process.wait(timeout=60)
        if self.exit_watcher is not None:
            for pid in self.exit_watcher.ctr_pids():
                _sigkill(pid)
        def all_gone() -> bool:
            return not any(procs.pid_is_alive(pid) and not _zombie(pid) for pid in victims)

        assert procs.wait_until(all_gone, 60), "host processes live on"
        self.ended = True
        self.timeline.add(self.name, f"HOST END: {len(victims)} container/shim processes, "
                                     "containerd, dockerd, spot-watch killed")  # fmt: skip


def _descendants(roots: Sequence[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _freezer_cgroups(pid: int) -> list[Path]:
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(",") and path != "/":
            found.append(CGROUP_ROOT / "freezer" / path.lstrip("/"))
    return found


def _sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _write(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        path.write_text(text)

