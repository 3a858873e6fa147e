"""Failure paths end in the documented outcome, with one line of reason on stderr and in runc's
log, never a traceback (real containerd, runc and CRIU):

- a dump that outlives `checkpoint_timeout`: runc and CRIU are stopped before anything is
  removed, nothing is published, no staging directory stays, the container keeps running with
  its memory intact;
- stopping the container fails after the image was published (injected: the configured runc
  refuses `kill`): the image stays published and restores, the container keeps running.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import kill_trials as kt
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

ARCH_ENV = {"ARCH_ENABLE": "1"}
SEED = 777
MEMHOLD_MIB = 256


def unique(name: str) -> str:
    """Container ids unique on this host: cgroup paths (/<namespace>/<id>) are host-wide, shared
    with other containerd instances' containers of the same name."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def one_line_reason(stderr: str) -> str:
    """ctr's error line carrying arch-runc's reason; asserts there is no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "arch-runc:" in line]
    assert lines, stderr
    return lines[0]


def test_a_dump_past_checkpoint_timeout_is_stopped_and_the_container_keeps_running(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    with node.arch.config_file.open("a") as config:
        config.write("checkpoint_timeout = 0.2\n")  # a 256 MiB dump takes longer
    slow = unique("slow")
    command = cr.memhold_workload(SEED, MEMHOLD_MIB, interval_ms=50)
    node.run_container(workload_image.name, slow, command, env=ARCH_ENV)
    rootfs = cr.rootfs_of(real_runc_binary, node, slow)
    cr.wait_for(lambda: len(cr.held_ticks(rootfs)) >= 2, "memhold's ticks")

    checkpointed = cr.checkpoint(node, slow, check=False)

    assert checkpointed.returncode != 0
    reason = one_line_reason(checkpointed.stderr)
    assert "did not finish within checkpoint_timeout (0.2 s)" in reason, reason
    assert "the container keeps running" in reason
    assert kt.runtime_processes(node) == []
    namespace_dir = node.arch.checkpoint_root / cr.NAMESPACE
    assert not namespace_dir.exists() or list(namespace_dir.iterdir()) == []
    assert node.task_status(slow) == "RUNNING"
    ticks = len(cr.held_ticks(rootfs))
    cr.wait_for(lambda: len(cr.held_ticks(rootfs)) >= ticks + 3, "memhold to tick on")
    held = (rootfs / cr.HELD_FILE.lstrip("/")).read_text()
    assert cr.held_log_problems(held, SEED, MEMHOLD_MIB) == [], held
    runc_log = runc_log_of(node, slow)
    assert "did not finish within checkpoint_timeout" in runc_log, runc_log


def runc_log_of(node: ContainerdNode, container_id: str) -> str:
    bundle = node.state / "io.containerd.runtime.v2.task" / cr.NAMESPACE / container_id
    return cr.read_text(bundle / "log.json")


def refuse_kill(node: ContainerdNode) -> None:
    """Make the configured runc (the recorder) fail `kill <id> KILL`, ARCH's own stop."""
    recorder = node.arch.config_file.parent / "runc-recorder"
    text = recorder.read_text()
    refusal = (
        'for arg in "$@"; do [ "$arg" = KILL ] && { echo "injected: kill refused" >&2; '
        "exit 1; }; done\n"
    )
    recorder.write_text(text.replace("exec ", refusal + "exec ", 1))
    os.chmod(recorder, 0o755)


def test_a_failed_stop_after_publication_withdraws_the_image(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    """The image was published but the container could not be stopped: it runs on past that
    image, so the image is withdrawn before it does (a container never runs on past a published
    image of itself, README "Data safety"), and the next create starts fresh."""
    job = unique("job")
    node.run_container(workload_image.name, job, cr.shell_workload(prepare=""), env=ARCH_ENV)
    rootfs = cr.rootfs_of(real_runc_binary, node, job)
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, "the job to count")
    refuse_kill(node)

    checkpointed = cr.checkpoint(node, job, check=False)

    assert checkpointed.returncode != 0
    reason = one_line_reason(checkpointed.stderr)
    image_dir = node.arch.checkpoint_root / cr.NAMESPACE / job
    assert f"the image is published at {image_dir}" in reason, reason
    assert "the image was withdrawn" in cr.arch_log(node), cr.arch_log(node)[-2000:]
    assert not (image_dir / "metadata.json").exists()
    assert node.task_status(job) == "RUNNING"
    counted = cr.counted(cr.count_log(rootfs))
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) > counted + 2, "the job to go on")
    assert node.remove_container(job) == []  # containerd's kill (signal 9) is not refused

    node.run_container(workload_image.name, job, cr.shell_workload(prepare=""), env=ARCH_ENV)
    assert f"create default/{job}: restored from" not in cr.arch_log(node)
