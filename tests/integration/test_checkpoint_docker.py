"""Checkpoint/restore of Docker containers (`docker run --runtime arch`) through containerd.

Docker has no checkpoint of its own here: the container is checkpointed through the containerd
Docker uses (`ctr -n moby task checkpoint <full id>`), which drives arch-runc's checkpoint; Docker
then sees the container exit. `docker start` issues `create` again, which arch-runc turns into a
restore: the shell's in-memory counter and its random token (drawn once, at its first start)
continue, and its filesystem changes are back.

Docker's rootfs is its own overlay2 mount (not a containerd snapshot) whose upper layer survives
`docker start` anyway. To prove the image's layer was applied, a file is overwritten through
`docker cp` while the container is stopped: the restore must bring the checkpointed content back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import procs
from harness.docker import DOCKER_NAMESPACE, DockerDaemon
from harness.images import BusyboxImage

from arch.container.state import ContainerState

pytestmark = [pytest.mark.root, pytest.mark.criu, pytest.mark.docker]

STATE_FILE = "/data/state"
READY_TIMEOUT = 30.0
# The workload: a random token drawn at its (only) start, an in-memory counter written with the
# token to /data/state every 0.1 s (atomically: write, then rename), one line in /data/boots per
# fresh start, and filesystem changes of every kind: created, modified (an image file), deleted
# (an image file) and renamed.
COUNTER_SCRIPT = r"""
mkdir -p /data
echo boot >> /data/boots
token=$(cat /proc/sys/kernel/random/uuid)
echo "$token" > /data/created
echo "added by the workload" >> /etc/group
rm /etc/passwd
echo "to be renamed" > /data/before-rename
mv /data/before-rename /data/after-rename
i=0
while true; do
  i=$((i + 1))
  echo "$token $i" > /data/state.new
  mv /data/state.new /data/state
  sleep 0.1
done
"""


def docker_exec(daemon: DockerDaemon, name: str, *command: str) -> str:
    return daemon.docker("exec", name, *command).stdout


def read_state(daemon: DockerDaemon, name: str) -> tuple[str, int] | None:
    """(token, counter) the workload last wrote, or None before its first write."""
    completed = daemon.docker("exec", name, "cat", STATE_FILE, check=False)
    fields = completed.stdout.split()
    if completed.returncode != 0 or len(fields) != 2:
        return None
    return fields[0], int(fields[1])


def wait_for_counter(daemon: DockerDaemon, name: str, above: int) -> tuple[str, int]:
    """Wait until the workload's counter exceeds `above`; its (token, counter)."""
    seen: list[tuple[str, int]] = []

    def counter_above() -> bool:
        state = read_state(daemon, name)
        if state is not None:
            seen.append(state)
        return state is not None and state[1] > above

    assert procs.wait_until(counter_above, READY_TIMEOUT, interval=0.2), (
        f"counter of {name} not above {above} within {READY_TIMEOUT}s; seen {seen[-3:]}"
    )
    return seen[-1]


def container_state(daemon: DockerDaemon, name: str) -> dict[str, object]:
    state: dict[str, object] = json.loads(
        daemon.docker("inspect", "--format", "{{json .State}}", name).stdout
    )
    return state


def wait_until_exited(daemon: DockerDaemon, name: str) -> dict[str, object]:
    assert procs.wait_until(
        lambda: container_state(daemon, name)["Running"] is False, READY_TIMEOUT
    ), f"{name} still running: {container_state(daemon, name)}"
    return container_state(daemon, name)


def arch_log(daemon: DockerDaemon) -> str:
    try:
        return daemon.node.arch.log_file.read_text()
    except FileNotFoundError:
        return ""


def run_counter(daemon: DockerDaemon, image: BusyboxImage, name: str, opted_in: bool) -> str:
    env = ["--env", "ARCH_ENABLE=1"] if opted_in else []
    daemon.run_container(
        name, image.docker_name, ["sh", "-c", COUNTER_SCRIPT], detach=True, extra_args=env
    )
    return daemon.container_id(name)


def test_docker_container_is_checkpointed_and_docker_start_restores_it(
    docker_daemon: DockerDaemon, test_image: BusyboxImage, tmp_path: Path
) -> None:
    node = docker_daemon.node
    container_id = run_counter(docker_daemon, test_image, "counter", opted_in=True)
    token, counter_before = wait_for_counter(docker_daemon, "counter", above=3)
    image_dir = node.arch.checkpoint_root / DOCKER_NAMESPACE / container_id

    node.ctr("task", "checkpoint", container_id, namespace=DOCKER_NAMESPACE, timeout=120)

    stopped = wait_until_exited(docker_daemon, "counter")
    assert stopped["ExitCode"] == 137, stopped
    assert (image_dir / "metadata.json").is_file(), arch_log(docker_daemon)
    metadata = json.loads((image_dir / "metadata.json").read_text())
    assert metadata["filesystem"]["mode"] == "overlay", metadata["filesystem"]
    assert (image_dir / "dump.log").is_file()
    # Docker deleted the exited task: a checkpointed container's image is kept at delete.
    assert procs.wait_until(
        lambda: node.task_status(container_id, DOCKER_NAMESPACE) is None, READY_TIMEOUT
    )
    assert image_dir.is_dir()
    tampered = tmp_path / "tampered"
    tampered.write_text("written while the container was stopped\n")
    docker_daemon.docker("cp", str(tampered), "counter:/data/created")

    docker_daemon.docker("start", "counter")

    restored_token, counter_at_restore = wait_for_counter(docker_daemon, "counter", above=0)
    assert restored_token == token, "the workload started fresh instead of being restored"
    assert counter_at_restore >= counter_before
    assert wait_for_counter(docker_daemon, "counter", counter_at_restore)[0] == token
    assert f"create {DOCKER_NAMESPACE}/{container_id}: restored from {image_dir}" in arch_log(
        docker_daemon
    )
    assert docker_exec(docker_daemon, "counter", "cat", "/data/boots") == "boot\n"
    assert docker_exec(docker_daemon, "counter", "cat", "/data/created") == f"{token}\n"
    assert docker_exec(docker_daemon, "counter", "cat", "/etc/group").endswith(
        "added by the workload\n"
    )
    assert docker_exec(docker_daemon, "counter", "cat", "/data/after-rename") == "to be renamed\n"
    listing = docker_exec(docker_daemon, "counter", "ls", "-a", "/data", "/etc").split()
    assert "before-rename" not in listing and "passwd" not in listing, listing
    assert not any(name.startswith(".wh.") for name in listing), listing
    assert container_state(docker_daemon, "counter")["Running"] is True
    # The restored container is an ordinary Docker container again: it stops on request.
    docker_daemon.docker("stop", "--time", "1", "counter")
    assert wait_until_exited(docker_daemon, "counter")["ExitCode"] == 137


def test_docker_container_not_opted_in_runs_normally(
    docker_daemon: DockerDaemon, test_image: BusyboxImage
) -> None:
    node = docker_daemon.node
    container_id = run_counter(docker_daemon, test_image, "plain", opted_in=False)
    token, _ = wait_for_counter(docker_daemon, "plain", above=2)

    state = ContainerState(str(node.arch.state_dir), DOCKER_NAMESPACE, container_id)
    assert not state.exists(), "arch-runc kept ARCH state for a container that did not opt in"
    assert docker_exec(docker_daemon, "plain", "sh", "-c", "echo in; exit 0") == "in\n"
    docker_daemon.docker("stop", "--time", "1", "plain")
    assert wait_until_exited(docker_daemon, "plain")["ExitCode"] == 137

    docker_daemon.docker("start", "plain")

    restarted_token, _ = wait_for_counter(docker_daemon, "plain", above=0)
    assert restarted_token != token, "a container that did not opt in must start fresh"
    assert docker_exec(docker_daemon, "plain", "cat", "/data/boots") == "boot\nboot\n"
    assert not (node.arch.checkpoint_root / DOCKER_NAMESPACE).exists()
    calls = node.arch.subcommands_for(container_id)
    assert calls.count("create") == 2 and calls.count("start") == 2, calls
