"""Pass-through through real dockerd: `docker run --runtime arch` (arch-runc) containers behave as
with runc: output, exit codes, exec, stop. Docker's containers live in containerd namespace moby."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import procs
from harness.containerd import runc_options
from harness.docker import DOCKER_NAMESPACE, DockerDaemon
from harness.images import BusyboxImage

pytestmark = [pytest.mark.root, pytest.mark.docker]


def container_state(daemon: DockerDaemon, name: str) -> dict[str, object]:
    state: dict[str, object] = json.loads(
        daemon.docker("inspect", "--format", "{{json .State}}", name).stdout
    )
    return state


def test_docker_run_echoes_through_arch_runc(
    docker_daemon: DockerDaemon, test_image: BusyboxImage
) -> None:
    completed = docker_daemon.run_container(
        "echoer", test_image.docker_name, ["sh", "-c", "echo hello from arch"]
    )

    assert completed.stdout == "hello from arch\n"
    container_id = docker_daemon.container_id("echoer")
    arch = docker_daemon.node.arch
    assert arch.subcommands_for(container_id)[:2] == ["create", "start"], (
        f"arch-runc did not call the runc named in $ARCH_CONFIG for {container_id}: "
        f"{arch.runc_calls()}"
    )
    assert arch.runc_calls_for(container_id)[0][:2] == ["--root", str(docker_daemon.runtime_root)]


def test_docker_exit_code_propagates(docker_daemon: DockerDaemon, test_image: BusyboxImage) -> None:
    completed = docker_daemon.run_container(
        "exits7", test_image.docker_name, ["sh", "-c", "exit 7"], check=False
    )

    assert completed.returncode == 7, procs.describe(completed)
    assert container_state(docker_daemon, "exits7")["ExitCode"] == 7


def test_docker_exec_in_running_container(
    docker_daemon: DockerDaemon, test_image: BusyboxImage
) -> None:
    docker_daemon.run_container("execs", test_image.docker_name, ["sleep", "1000"], detach=True)

    assert docker_daemon.docker("exec", "execs", "sh", "-c", "echo in; id -u").stdout == "in\n0\n"
    failed = docker_daemon.docker("exec", "execs", "sh", "-c", "exit 4", check=False)
    assert failed.returncode == 4, procs.describe(failed)
    assert "exec" in docker_daemon.node.arch.subcommands_for(docker_daemon.container_id("execs"))


def test_docker_stop_delivers_sigterm_then_sigkill(
    docker_daemon: DockerDaemon, test_image: BusyboxImage
) -> None:
    polite = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
    docker_daemon.run_container("polite", test_image.docker_name, polite, detach=True)
    docker_daemon.run_container("stubborn", test_image.docker_name, ["sleep", "1000"], detach=True)

    docker_daemon.docker("stop", "--time", "30", "polite")
    docker_daemon.docker("stop", "--time", "1", "stubborn")

    polite_state = container_state(docker_daemon, "polite")
    stubborn_state = container_state(docker_daemon, "stubborn")
    assert (polite_state["Running"], polite_state["ExitCode"]) == (False, 0)
    assert (stubborn_state["Running"], stubborn_state["ExitCode"]) == (False, 137)


def test_docker_container_is_a_moby_container_in_containerd(
    docker_daemon: DockerDaemon, test_image: BusyboxImage, arch_runc_binary: Path
) -> None:
    docker_daemon.run_container("visible", test_image.docker_name, ["sleep", "1000"], detach=True)
    container_id = docker_daemon.container_id("visible")

    node = docker_daemon.node
    assert container_id in node.container_ids(DOCKER_NAMESPACE)
    assert node.task_status(container_id, DOCKER_NAMESPACE) == "RUNNING"
    info = node.container_info(container_id, DOCKER_NAMESPACE)
    assert runc_options(info).get("binary_name") == str(arch_runc_binary)
