"""An exit status belongs to one container instance, through real containerd, runc and CRIU.

- A /tasks/exit event of an earlier container with the same id that reaches the watcher late
  (after the next instance was created; here: replayed, the exact line containerd printed) is
  not recorded for the new instance, so it cannot make the new instance's delete remove the
  image it was restored from.
- After exit 0, delete removes only the image the instance was created against: one that
  another container with the same checkpoint id published there since stays.
"""

from __future__ import annotations

import logging
import subprocess
import uuid
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.containerd import ContainerdNode

from arch.container.exit_watch import ExitWatcher, StopRequest, task_exit_from_line
from arch.container.state import EXIT_STATUS, ContainerState

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

# Ids unique on this host: cgroup paths (/<namespace>/<id>) are shared with other containerd
# instances' containers of the same name.
SUFFIX = uuid.uuid4().hex[:8]
CHECKPOINT_ID = f"shared-job-{SUFFIX}"
ENV = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": CHECKPOINT_ID}
INST, FIRST, SECOND, THIRD = (f"{name}-{SUFFIX}" for name in ("inst", "first", "second", "third"))
COMMAND = cr.shell_workload(prepare="")


def run(node: ContainerdNode, image: cr.WorkloadImage, container_id: str) -> None:
    node.run_container(image.name, container_id, COMMAND, env=ENV)


def exit_with(node: ContainerdNode, runc: Path, container_id: str, code: int) -> None:
    rootfs = cr.rootfs_of(runc, node, container_id)
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 2, "the job to count")
    (rootfs / "state/exit").write_text(f"{code}\n")
    node.wait_for_status(container_id, "STOPPED")


def checkpoint_and_remove(node: ContainerdNode, runc: Path, container_id: str) -> None:
    rootfs = cr.rootfs_of(runc, node, container_id)
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 2, "the job to count")
    cr.checkpoint(node, container_id)
    cr.remove_container(node, container_id)
    names = node.ctr("images", "ls", "--quiet").stdout.split()
    stale = [name for name in names if name.startswith("containerd.io/checkpoint/")]
    if stale:
        node.ctr("images", "rm", *stale)


def test_a_late_exit_of_an_earlier_instance_does_not_cost_the_new_one_its_image(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    image_dir = node.arch.checkpoint_root / cr.NAMESPACE / CHECKPOINT_ID
    events = subprocess.Popen(
        node.ctr_argv("events"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )
    try:
        run(node, workload_image, INST)  # instance 1: ends with exit 0
        exit_with(node, real_runc_binary, INST, 0)
        cr.remove_container(node, INST)
    finally:
        events.terminate()
        output, _ = events.communicate(timeout=30)
    earlier_exit = next(
        line for line in output.splitlines() if "/tasks/exit" in line and f'"{INST}"' in line
    )
    assert task_exit_from_line(earlier_exit) is not None
    assert task_exit_from_line(earlier_exit).exit_status == 0  # type: ignore[union-attr]

    run(node, workload_image, INST)  # instance 2 makes the image
    checkpoint_and_remove(node, real_runc_binary, INST)
    run(node, workload_image, INST)  # instance 3, restored from it
    assert f"create default/{INST}: restored from" in cr.arch_log(node)
    watcher = ExitWatcher("ctr", node.address, str(node.arch.state_dir),
                          logging.getLogger("arch"), StopRequest())  # fmt: skip
    state = ContainerState(str(node.arch.state_dir), cr.NAMESPACE, INST)

    watcher.handle_line(earlier_exit)  # instance 1's exit, arriving late
    assert state.get(EXIT_STATUS) is None

    node.ctr("task", "kill", "--signal", "SIGKILL", INST)
    node.wait_for_status(INST, "STOPPED")
    procs.wait_until(lambda: state.get(EXIT_STATUS) == "137", 10)
    watcher.handle_line(earlier_exit)  # ... or even later, after instance 3's own exit
    assert state.get(EXIT_STATUS) == "137"
    node.ctr("task", "delete", INST)
    assert (image_dir / "metadata.json").is_file(), cr.arch_log(node)[-2000:]
    assert f"delete default/{INST}: exit status 137, image" in cr.arch_log(node)


def test_exit_0_keeps_an_image_another_container_published_since(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    image_dir = node.arch.checkpoint_root / cr.NAMESPACE / CHECKPOINT_ID
    run(node, workload_image, FIRST)
    checkpoint_and_remove(node, real_runc_binary, FIRST)
    run(node, workload_image, FIRST)  # created against the image
    run(node, workload_image, SECOND)  # a replica with the same checkpoint id
    checkpoint_and_remove(node, real_runc_binary, SECOND)  # publishes a newer image
    newer = (image_dir / "metadata.json").read_text()
    assert f'"container_id": "{SECOND}"' in newer

    exit_with(node, real_runc_binary, FIRST, 0)
    node.ctr("task", "delete", FIRST)

    assert (image_dir / "metadata.json").read_text() == newer
    assert "is not the one it was created against: kept" in cr.arch_log(node)
    run(node, workload_image, THIRD)  # the kept image restores
    assert f"create default/{THIRD}: restored from" in cr.arch_log(node)
    exit_with(node, real_runc_binary, THIRD, 0)
    node.ctr("task", "delete", THIRD)
    assert not image_dir.exists(), cr.arch_log(node)[-2000:]
