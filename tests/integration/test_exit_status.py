"""`archctl watch-exits` against real containerd (and dockerd): the exit status of an ARCH
container's init process lands in its state (flag exit_status), for exit 0 (an event without an
exit_status field), exit 1 and SIGKILL (137); exec processes and containers without ARCH state
get nothing; the watcher follows a containerd restart and stops cleanly (with its ctr) on SIGTERM.
End to end, arch-runc's delete decides about the image from that status: a stand-in image that
create refused stays after any exit (a refused image is never removed because of a job that did
not restore it: it may be another job's); test_checkpoint_restore shows an exit 0 removing the
image the job was restored from.

The watcher runs as `python -m arch.cli.main --address <node> watch-exits` with ARCH_CONFIG naming
the node's arch.toml, so its log is the node's arch log. ARCH containers opt in with ARCH_ENABLE=1:
arch-runc's create writes their state record (no image exists, so they start fresh). A stand-in
"image" directory at the contract's default path <checkpoint_root>/<namespace>/<id> shows what
delete does with it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import procs
from harness.containerd import ContainerdNode
from harness.docker import DOCKER_NAMESPACE, RUNTIME_NAME, DockerDaemon
from harness.images import BusyboxImage

from arch.container.exit_watch import wait_for_exit_status
from arch.container.state import EXIT_STATUS, ContainerState

pytestmark = [pytest.mark.root, pytest.mark.containerd]

NAMESPACE = "default"
RECORD_TIMEOUT = 10.0
READY_TIMEOUT = 30.0
# containerd's dial timeout in ctr is 10 s; a reconnect may take that plus the backoff.
RECONNECT_TIMEOUT = 40.0
ARCH_ENV = {"ARCH_ENABLE": "1"}
CTR_PID = re.compile(r"watching containerd events at \S+ \(ctr pid (\d+)\)")


@dataclass
class Watcher:
    """A running `archctl watch-exits` for one node."""

    process: subprocess.Popen[bytes]
    log_file: Path
    output_file: Path
    state_dir: str

    def log_text(self) -> str:
        try:
            return self.log_file.read_text()
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        return (
            f"watcher exit status {self.process.poll()}\n--- arch log ---\n"
            f"{procs.tail(self.log_file)}\n--- watcher output ---\n{procs.tail(self.output_file)}"
        )

    def ctr_pids(self) -> list[int]:
        return [int(pid) for pid in CTR_PID.findall(self.log_text())]

    def state(self, container_id: str, namespace: str = NAMESPACE) -> ContainerState:
        return ContainerState(self.state_dir, namespace, container_id)

    def wait_until_subscribed(self, node: ContainerdNode, timeout: float = READY_TIMEOUT) -> None:
        """Probe with namespace label changes until the watcher has seen one (its debug log):
        `ctr events` gives no sign of when its subscription starts."""
        seen_before = self.log_text().count("event /namespaces/update")
        probe = iter(range(1_000_000))

        def probe_seen() -> bool:
            assert self.process.poll() is None, self.describe()
            node.ctr("namespaces", "label", NAMESPACE, f"arch-probe={next(probe)}")
            return procs.wait_until(
                lambda: self.log_text().count("event /namespaces/update") > seen_before, 0.5, 0.05
            )

        assert procs.wait_until(probe_seen, timeout, interval=0), (
            f"watcher did not see containerd events within {timeout}s\n{self.describe()}"
        )


def start_watcher(address: str, config_file: Path, state_dir: Path, work_dir: Path) -> Watcher:
    environment = {**os.environ, "ARCH_CONFIG": str(config_file)}
    environment.pop("CONTAINERD_ADDRESS", None)
    output_file = work_dir / "watch-exits.out"
    with output_file.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "arch.cli.main", "--address", address, "watch-exits"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    log_file = config_file.parent / "arch.log"
    return Watcher(process, log_file, output_file, str(state_dir))


def stop_watcher(watcher: Watcher) -> None:
    """SIGTERM the watcher (by its pid); it must exit 0 and take its ctr child with it."""
    procs.stop_process(watcher.process)
    leftover = [pid for pid in watcher.ctr_pids() if procs.pid_is_alive(pid)]
    for pid in leftover:
        procs.kill_pid(pid)
    assert watcher.process.returncode == 0, watcher.describe()
    assert not leftover, f"ctr still running after the watcher stopped: {leftover}"


@pytest.fixture
def watched_node(
    containerd_node: ContainerdNode, tmp_path: Path
) -> Iterator[tuple[ContainerdNode, Watcher]]:
    arch = containerd_node.arch
    watcher = start_watcher(containerd_node.address, arch.config_file, arch.state_dir, tmp_path)
    try:
        watcher.wait_until_subscribed(containerd_node)
        yield containerd_node, watcher
    finally:
        stop_watcher(watcher)


def recorded_status(watcher: Watcher, container_id: str, namespace: str = NAMESPACE) -> int | None:
    """The exit status the watcher recorded, through arch-runc's own helper (bounded wait)."""
    return wait_for_exit_status(watcher.state(container_id, namespace), timeout=RECORD_TIMEOUT)


def start_arch_container(
    node: ContainerdNode,
    image: BusyboxImage,
    container_id: str,
    command: list[str],
    namespace: str = NAMESPACE,
) -> ContainerState:
    """A detached opted-in container; its task stays until deleted (or teardown)."""
    node.run_container(image.name, container_id, command, namespace=namespace, env=ARCH_ENV)
    state = ContainerState(str(node.arch.state_dir), namespace, container_id)
    assert state.exists(), f"arch-runc create wrote no state for {namespace}/{container_id}"
    return state


def put_stand_in_image(checkpoint_root: Path, namespace: str, container_id: str) -> Path:
    """A directory at the container's default image path (what delete removes or keeps)."""
    image_dir = checkpoint_root / namespace / container_id
    image_dir.mkdir(parents=True, mode=0o700)
    (image_dir / "stand-in").write_text("not a real image\n")
    return image_dir


@pytest.mark.parametrize(("script", "expected"), [("exit 0", 0), ("exit 1", 1)])
def test_exit_status_is_recorded_and_decides_the_image(
    watched_node: tuple[ContainerdNode, Watcher],
    test_image: BusyboxImage,
    script: str,
    expected: int,
) -> None:
    node, watcher = watched_node
    # In place before the create (which finds it invalid and starts fresh): delete removes
    # only an image that was there when the instance was created.
    image_dir = put_stand_in_image(node.arch.checkpoint_root, NAMESPACE, "exits")
    start_arch_container(node, test_image, "exits", ["sh", "-c", script])
    node.wait_for_status("exits", "STOPPED")

    assert recorded_status(watcher, "exits") == expected, watcher.describe()
    assert f"recorded exit status {expected} of {NAMESPACE}/exits" in watcher.log_text()

    node.ctr("task", "delete", "exits")
    assert image_dir.exists(), watcher.describe()
    if expected == 0:
        assert "was refused at create" in watcher.log_text(), watcher.describe()


def test_killed_container_records_137_and_keeps_its_image(
    watched_node: tuple[ContainerdNode, Watcher], test_image: BusyboxImage
) -> None:
    node, watcher = watched_node
    state = start_arch_container(node, test_image, "killed", ["sleep", "1000"])
    node.wait_for_status("killed", "RUNNING")
    assert state.get(EXIT_STATUS) is None

    node.ctr("task", "kill", "--signal", "SIGKILL", "killed")
    node.wait_for_status("killed", "STOPPED")

    assert recorded_status(watcher, "killed") == 137, watcher.describe()
    image_dir = put_stand_in_image(node.arch.checkpoint_root, NAMESPACE, "killed")
    node.ctr("task", "delete", "killed")
    assert image_dir.exists()


def test_exec_exits_are_not_the_container_exit(
    watched_node: tuple[ContainerdNode, Watcher], test_image: BusyboxImage
) -> None:
    node, watcher = watched_node
    state = start_arch_container(node, test_image, "execs", ["sleep", "1000"])
    node.wait_for_status("execs", "RUNNING")

    failed = node.ctr(
        "task", "exec", "--exec-id", "fails", "execs", "sh", "-c", "exit 5", check=False
    )
    assert failed.returncode == 5, procs.describe(failed)
    node.ctr("task", "exec", "--exec-id", "succeeds", "execs", "true")
    assert procs.wait_until(
        lambda: "process succeeds not recorded" in watcher.log_text(), RECORD_TIMEOUT
    ), watcher.describe()
    assert "process fails not recorded" in watcher.log_text()
    assert state.get(EXIT_STATUS) is None

    node.ctr("task", "kill", "--signal", "SIGKILL", "execs")
    node.wait_for_status("execs", "STOPPED")
    assert recorded_status(watcher, "execs") == 137, watcher.describe()


def test_container_without_state_gets_nothing(
    watched_node: tuple[ContainerdNode, Watcher], test_image: BusyboxImage
) -> None:
    node, watcher = watched_node
    node.import_image(test_image.oci_archive, namespace="other")
    node.run_container(test_image.name, "plain", ["sh", "-c", "exit 3"])
    node.wait_for_status("plain", "STOPPED")
    node.run_container(test_image.name, "plain", ["sh", "-c", "exit 4"], namespace="other")
    node.wait_for_status("plain", "STOPPED", namespace="other")
    # The witness exits last: once its status is in, the earlier events were handled too.
    start_arch_container(node, test_image, "witness", ["sh", "-c", "exit 2"])
    node.wait_for_status("witness", "STOPPED")
    assert recorded_status(watcher, "witness") == 2, watcher.describe()

    log = watcher.log_text()
    assert f"exit of {NAMESPACE}/plain process plain not recorded" in log
    assert "exit of other/plain process plain not recorded" in log
    assert not watcher.state("plain").exists()
    assert not watcher.state("plain", "other").exists()
    namespaces = [name for name in os.listdir(watcher.state_dir) if not name.startswith(".")]
    assert sorted(namespaces) == [NAMESPACE]  # dot-named entries are ARCH's own, not namespaces


def test_every_namespace_is_watched(
    watched_node: tuple[ContainerdNode, Watcher], test_image: BusyboxImage
) -> None:
    node, watcher = watched_node
    node.import_image(test_image.oci_archive, namespace="tenant")
    start_arch_container(node, test_image, "elsewhere", ["sh", "-c", "exit 6"], "tenant")
    node.wait_for_status("elsewhere", "STOPPED", namespace="tenant")

    assert recorded_status(watcher, "elsewhere", namespace="tenant") == 6, watcher.describe()


def test_watcher_follows_a_containerd_restart(
    watched_node: tuple[ContainerdNode, Watcher], test_image: BusyboxImage
) -> None:
    node, watcher = watched_node
    assert node.process is not None
    procs.stop_process(node.process)
    node.start()
    assert procs.wait_until(lambda: len(watcher.ctr_pids()) >= 2, RECONNECT_TIMEOUT), (
        watcher.describe()
    )
    assert "reconnecting in" in watcher.log_text()
    watcher.wait_until_subscribed(node, timeout=RECONNECT_TIMEOUT)

    start_arch_container(node, test_image, "after-restart", ["sh", "-c", "exit 0"])
    node.wait_for_status("after-restart", "STOPPED")

    assert recorded_status(watcher, "after-restart") == 0, watcher.describe()


@pytest.mark.docker
@pytest.mark.parametrize(
    ("name", "code", "opted_in"), [("ok", 0, True), ("fails", 9, True), ("plain", 0, False)]
)
def test_docker_exit_decides_the_image_in_namespace_moby(
    docker_daemon: DockerDaemon,
    test_image: BusyboxImage,
    tmp_path: Path,
    name: str,
    code: int,
    opted_in: bool,
) -> None:
    node = docker_daemon.node
    watcher = start_watcher(node.address, node.arch.config_file, node.arch.state_dir, tmp_path)
    try:
        watcher.wait_until_subscribed(node)
        container_id = docker_create(docker_daemon, name, test_image, f"exit {code}", opted_in)
        # Docker creates, starts and deletes the task at once: the stand-in image must be in
        # place before `docker start` (arch-runc's create finds it invalid and starts fresh).
        image_dir = put_stand_in_image(node.arch.checkpoint_root, DOCKER_NAMESPACE, container_id)

        started = docker_daemon.docker("start", "--attach", name, check=False)

        assert started.returncode == code, procs.describe(started)
        where = f"{DOCKER_NAMESPACE}/{container_id}"
        expected_line = (
            f"recorded exit status {code} of {where}"
            if opted_in
            else f"exit of {where} process {container_id} not recorded"
        )
        assert procs.wait_until(lambda: expected_line in watcher.log_text(), RECORD_TIMEOUT), (
            f"no {expected_line!r}\n{watcher.describe()}"
        )
        assert procs.wait_until(
            lambda: node.task_status(container_id, DOCKER_NAMESPACE) is None, RECORD_TIMEOUT
        ), "Docker did not delete the exited task"
        assert image_dir.exists()  # refused at create (or not ARCH's): never removed
        if opted_in and code == 0:
            assert procs.wait_until(lambda: "was refused at create" in watcher.log_text(),
                                    RECORD_TIMEOUT), watcher.describe()  # fmt: skip
        assert not watcher.state(container_id, DOCKER_NAMESPACE).exists()
    finally:
        stop_watcher(watcher)


def docker_create(
    daemon: DockerDaemon, name: str, image: BusyboxImage, script: str, opted_in: bool
) -> str:
    """`docker create` with the arch runtime; the full id (the containerd id in moby)."""
    daemon.track(name)
    env = ["--env", "ARCH_ENABLE=1"] if opted_in else []
    created = daemon.docker(
        "create", "--runtime", RUNTIME_NAME, "--network", "none", "--name", name, *env,
        image.docker_name, "sh", "-c", script,
    )  # fmt: skip
    return created.stdout.strip()
