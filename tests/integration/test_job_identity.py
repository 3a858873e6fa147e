"""An image restores only into its own job (real containerd, runc and CRIU).

One checkpoint of a counting job, then creates of the same container id that differ in one
identity field each: a changed command, a changed secret variable and another container image
start fresh, and the log names the field (and the variable), never a value. The unchanged job,
with a new AWS_BATCH_JOB_ATTEMPT and HOSTNAME as a Batch retry has, restores and counts on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness.containerd import ContainerdNode
from harness.images import BusyboxImage

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

JOB = "identity-job"
SECRET_VALUE = "s3cr3t-value-never-logged"
BASE_ENV = {
    "ARCH_ENABLE": "1",
    "API_TOKEN": SECRET_VALUE,
    "AWS_BATCH_JOB_ATTEMPT": "1",
    "HOSTNAME": "attempt-1",
}
REFUSED = f"create default/{JOB}: restore refused, starting fresh: the image was taken from "


def test_only_the_same_job_is_restored(
    node: ContainerdNode,
    workload_image: cr.WorkloadImage,
    test_image: BusyboxImage,
    real_runc_binary: Path,
) -> None:
    node.import_image(test_image.oci_archive)
    command = cr.shell_workload(prepare="mkdir -p /state")  # runs in both images
    node.run_container(workload_image.name, JOB, command, env=BASE_ENV)
    rootfs = cr.rootfs_of(real_runc_binary, node, JOB)
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, "the job to count to 3")
    cr.checkpoint(node, JOB)
    at_checkpoint = cr.count_log(rootfs)
    checkpointed = cr.counted(at_checkpoint)
    cr.remove_container(node, JOB)
    image_dir = node.arch.checkpoint_root / "default" / JOB
    assert (image_dir / "metadata.json").is_file(), cr.arch_log(node)

    changed_command = cr.shell_workload(prepare="mkdir -p /state && true")
    fresh_starts: list[tuple[str, Callable[[], None]]] = [
        ("command", lambda: node.run_container(workload_image.name, JOB, changed_command,
                                               env=BASE_ENV)),
        ("environment (API_TOKEN)", lambda: node.run_container(
            workload_image.name, JOB, command, env={**BASE_ENV, "API_TOKEN": "rotated"})),
        ("container image", lambda: node.run_container(test_image.name, JOB, command,
                                                       env=BASE_ENV)),
    ]  # fmt: skip
    for field, start in fresh_starts:
        log_before = len(cr.arch_log(node))
        start()
        fresh = cr.rootfs_of(real_runc_binary, node, JOB)
        cr.wait_for(
            lambda fresh=fresh: cr.counted(cr.count_log(fresh)) >= 1, "the fresh job to count"
        )
        new_log = cr.arch_log(node)[log_before:]
        assert f"{REFUSED}another job: it differs in {field}\n" in new_log, new_log
        assert SECRET_VALUE not in cr.arch_log(node) and "rotated" not in cr.arch_log(node)
        assert cr.count_log(fresh)[0] == "start"  # the workload began from scratch
        node.ctr("task", "kill", "--signal", "KILL", JOB)
        cr.remove_container(node, JOB)
        assert (image_dir / "metadata.json").is_file(), "a refused restore removed the image"

    retry_env = {**BASE_ENV, "AWS_BATCH_JOB_ATTEMPT": "2", "HOSTNAME": "attempt-2"}
    node.run_container(workload_image.name, JOB, command, env=retry_env)
    restored = cr.rootfs_of(real_runc_binary, node, JOB)
    cr.wait_for(
        lambda: cr.counted(cr.count_log(restored)) >= checkpointed + 2,
        "the restored job to count on",
    )
    assert f"create default/{JOB}: restored from" in cr.arch_log(node)
    assert cr.count_log(restored)[: len(at_checkpoint)] == at_checkpoint
