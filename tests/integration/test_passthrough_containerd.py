"""Pass-through through real containerd: `ctr run --runc-binary <arch-runc>` containers behave as
with runc (run, exec, ps, pause/resume, kill, exit status, delete), with and without ARCH_ENABLE."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import procs
from harness.containerd import ContainerdNode, runc_options
from harness.images import BusyboxImage

pytestmark = [pytest.mark.root, pytest.mark.containerd]

LONG_RUNNING = ["sh", "-c", "echo ready > /tmp/x; sleep 1000"]


def start_long_running(
    node: ContainerdNode,
    image: BusyboxImage,
    container_id: str,
    *,
    namespace: str = "default",
    env: dict[str, str] | None = None,
) -> None:
    node.run_container(image.name, container_id, LONG_RUNNING, namespace=namespace, env=env)
    node.wait_for_status(container_id, "RUNNING", namespace=namespace)


def exec_output(
    node: ContainerdNode, container_id: str, exec_id: str, *command: str, namespace: str = "default"
) -> str:
    completed = node.ctr(
        "task", "exec", "--exec-id", exec_id, container_id, *command, namespace=namespace
    )
    return completed.stdout


def wait_for_ready_file(node: ContainerdNode, container_id: str, namespace: str = "default") -> str:
    """Poll (bounded) until the container's init has written /tmp/x; return its content."""
    attempt = iter(range(1000))

    def ready() -> bool:
        probe = node.ctr(
            "task",
            "exec",
            "--exec-id",
            f"probe{next(attempt)}",
            container_id,
            "cat",
            "/tmp/x",
            namespace=namespace,
            check=False,
        )
        return probe.returncode == 0

    assert procs.wait_until(ready, timeout=15), f"{container_id} never wrote /tmp/x"
    return exec_output(node, container_id, "read-x", "cat", "/tmp/x", namespace=namespace)


def task_pid(node: ContainerdNode, container_id: str, namespace: str = "default") -> int:
    for row in node.ctr("task", "ls", namespace=namespace).stdout.splitlines()[1:]:
        columns = row.split()
        if columns[0] == container_id:
            return int(columns[1])
    raise AssertionError(f"no task {container_id}")


def runc_state(real_runc: Path, node: ContainerdNode, container_id: str) -> dict[str, object]:
    """The container's state as the real runc sees it under the node's runc root."""
    completed = procs.run(
        [str(real_runc), "--root", str(node.runc_root / "default"), "state", container_id]
    )
    state: dict[str, object] = json.loads(completed.stdout)
    return state


def test_containerd_runs_container_through_arch_runc(
    containerd_node: ContainerdNode, test_image: BusyboxImage, arch_runc_binary: Path
) -> None:
    start_long_running(containerd_node, test_image, "proof")

    options = runc_options(containerd_node.container_info("proof"))
    assert options.get("binary_name") == str(arch_runc_binary)
    # Only arch-runc reaches the recorder that the node's arch.toml names as `runc`: with plain
    # runc as the runtime binary these calls would not have been logged.
    calls = containerd_node.arch.runc_calls_for("proof")
    assert calls, (
        f"{arch_runc_binary} never called the runc named in $ARCH_CONFIG "
        f"({containerd_node.arch.config_file}): is it really arch-runc?"
    )
    assert containerd_node.arch.subcommands_for("proof")[:2] == ["create", "start"], calls
    assert calls[0][:2] == ["--root", str(containerd_node.runc_root / "default")]


def test_exec_output_comes_back(containerd_node: ContainerdNode, test_image: BusyboxImage) -> None:
    start_long_running(containerd_node, test_image, "execs")

    assert wait_for_ready_file(containerd_node, "execs") == "ready\n"
    assert (
        exec_output(containerd_node, "execs", "e2", "sh", "-c", "echo out; echo err >&2") == "out\n"
    )
    failed = containerd_node.ctr(
        "task", "exec", "--exec-id", "e3", "execs", "sh", "-c", "exit 5", check=False
    )
    assert failed.returncode == 5, procs.describe(failed)
    assert "exec" in containerd_node.arch.subcommands_for("execs")


def test_task_ps_lists_the_init_process(
    containerd_node: ContainerdNode, test_image: BusyboxImage
) -> None:
    start_long_running(containerd_node, test_image, "ps")

    listing = containerd_node.ctr("task", "ps", "ps").stdout.splitlines()
    pids = {int(row.split()[0]) for row in listing[1:] if row.split()}
    assert task_pid(containerd_node, "ps") in pids, listing


def test_pause_and_resume(
    containerd_node: ContainerdNode, test_image: BusyboxImage, real_runc_binary: Path
) -> None:
    start_long_running(containerd_node, test_image, "pausing")

    containerd_node.ctr("task", "pause", "pausing")
    containerd_node.wait_for_status("pausing", "PAUSED")
    assert runc_state(real_runc_binary, containerd_node, "pausing")["status"] == "paused"

    containerd_node.ctr("task", "resume", "pausing")
    containerd_node.wait_for_status("pausing", "RUNNING")
    assert runc_state(real_runc_binary, containerd_node, "pausing")["status"] == "running"
    assert exec_output(containerd_node, "pausing", "after", "echo", "alive") == "alive\n"
    assert {"pause", "resume"} <= set(containerd_node.arch.subcommands_for("pausing"))


def test_exit_status_of_foreground_run_propagates(
    containerd_node: ContainerdNode, test_image: BusyboxImage
) -> None:
    completed = containerd_node.run_container(
        test_image.name, "exits3", ["sh", "-c", "echo bye; exit 3"], detach=False, check=False
    )

    assert completed.returncode == 3, procs.describe(completed)
    assert completed.stdout == "bye\n"


def test_exit_status_of_detached_task_is_reported_at_delete(
    containerd_node: ContainerdNode, test_image: BusyboxImage
) -> None:
    containerd_node.run_container(test_image.name, "detached3", ["sh", "-c", "exit 3"])
    containerd_node.wait_for_status("detached3", "STOPPED")

    deleted = containerd_node.ctr("task", "delete", "detached3")
    assert re.search(r"exit code 3\b", deleted.stderr), procs.describe(deleted)


def test_kill_ends_the_task_and_its_exit_status_propagates(
    containerd_node: ContainerdNode, test_image: BusyboxImage
) -> None:
    foreground = containerd_node.spawn_foreground_run(test_image.name, "killed", ["sleep", "1000"])
    try:
        containerd_node.wait_for_status("killed", "RUNNING")
        containerd_node.ctr("task", "kill", "--signal", "SIGKILL", "killed")
        assert foreground.wait(timeout=30) == 128 + 9
    finally:
        procs.stop_process(foreground)
    assert "kill" in containerd_node.arch.subcommands_for("killed")


def test_delete_removes_task_container_and_runc_state(
    containerd_node: ContainerdNode, test_image: BusyboxImage
) -> None:
    start_long_running(containerd_node, test_image, "doomed")
    runc_state_dir = containerd_node.runc_root / "default" / "doomed"
    assert runc_state_dir.is_dir()

    containerd_node.ctr("task", "kill", "--signal", "SIGKILL", "doomed")
    containerd_node.wait_for_status("doomed", "STOPPED")
    containerd_node.ctr("task", "delete", "doomed", check=False)
    containerd_node.ctr("containers", "delete", "doomed")

    assert containerd_node.task_status("doomed") is None
    assert "doomed" not in containerd_node.container_ids("default")
    assert not runc_state_dir.exists()
    assert "delete" in containerd_node.arch.subcommands_for("doomed")


def test_arch_enabled_container_with_nothing_to_checkpoint_behaves_the_same(
    containerd_node: ContainerdNode, test_image: BusyboxImage
) -> None:
    start_long_running(containerd_node, test_image, "enabled", env={"ARCH_ENABLE": "1"})

    assert wait_for_ready_file(containerd_node, "enabled") == "ready\n"
    containerd_node.ctr("task", "kill", "--signal", "SIGKILL", "enabled")
    containerd_node.wait_for_status("enabled", "STOPPED")
    containerd_node.ctr("task", "delete", "enabled", check=False)
    containerd_node.ctr("containers", "delete", "enabled")
    assert "enabled" not in containerd_node.container_ids("default")

    completed = containerd_node.run_container(
        test_image.name,
        "enabled3",
        ["sh", "-c", "echo fine; exit 3"],
        detach=False,
        env={"ARCH_ENABLE": "true"},
        check=False,
    )
    assert (completed.returncode, completed.stdout) == (3, "fine\n"), procs.describe(completed)
    assert not list(containerd_node.arch.checkpoint_root.rglob("metadata.json"))


def test_same_id_in_two_namespaces_runs_concurrently(
    containerd_node: ContainerdNode, test_image: BusyboxImage
) -> None:
    for namespace in ("ns1", "ns2"):
        containerd_node.import_image(test_image.oci_archive, namespace=namespace)
        start_long_running(
            containerd_node, test_image, "twin", namespace=namespace, env={"WHERE": namespace}
        )

    for namespace in ("ns1", "ns2"):
        assert containerd_node.task_status("twin", namespace) == "RUNNING"
        assert (
            exec_output(
                containerd_node, "twin", "where", "sh", "-c", "echo $WHERE", namespace=namespace
            )
            == f"{namespace}\n"
        )
    assert task_pid(containerd_node, "twin", "ns1") != task_pid(containerd_node, "twin", "ns2")

    containerd_node.ctr("task", "kill", "--signal", "SIGKILL", "twin", namespace="ns1")
    containerd_node.wait_for_status("twin", "STOPPED", namespace="ns1")
    assert containerd_node.task_status("twin", "ns2") == "RUNNING"


def test_two_nodes_run_the_same_id_side_by_side(
    containerd_nodes: Callable[..., ContainerdNode], test_image: BusyboxImage, tmp_path: Path
) -> None:
    shared_checkpoints = tmp_path / "checkpoints"
    nodes = [containerd_nodes(name, checkpoint_root=shared_checkpoints) for name in ("a", "b")]
    assert nodes[0].address != nodes[1].address

    for node in nodes:
        start_long_running(node, test_image, "same")
    for node in nodes:
        assert node.task_status("same") == "RUNNING"
        assert node.arch.checkpoint_root == shared_checkpoints
        assert node.arch.subcommands_for("same")[:2] == ["create", "start"]
    assert task_pid(nodes[0], "same") != task_pid(nodes[1], "same")
