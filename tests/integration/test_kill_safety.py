"""Kill-safety through real containerd, runc and CRIU: arch-runc SIGKILLed during a restore
(the `create` that restores) and during a checkpoint, at delays spread evenly over each call.

containerd kills a runtime call that takes too long; here the test does it. After every kill:
no runc or CRIU process of this node outlives the call; no process runs in the container's
cgroup unless containerd has the task running; the image is intact (a killed restore leaves it
byte for byte; a killed checkpoint leaves the previous image or a new complete one) and the next
create restores it, the counter going on from the checkpoint.

One container goes round: restore (killed) -> restore -> checkpoint (killed) -> checkpoint, so
each round gives one restore trial and one checkpoint trial.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import kill_trials as kt
from harness import procs
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

ROUNDS = 30
# Delays run a little past the call's measured length, so late kills (after runc is done) count.
SPREAD = 1.15
SETTLE_TIMEOUT = 30.0


class Job:
    """The counting container, under a unique id (its cgroup is /default/<id>)."""

    def __init__(self, node: ContainerdNode, image: cr.WorkloadImage, runc: Path) -> None:
        self.node = node
        self.image = image
        self.runc = runc
        self.id = f"ks-{uuid.uuid4().hex[:10]}"
        self.env = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": self.id}
        self.image_dir = node.arch.checkpoint_root / cr.NAMESPACE / self.id
        self.command = cr.shell_workload(prepare="")

    def run_argv(self) -> list[str]:
        args = self.node.run_args(self.image.name, self.id, self.command, env=self.env)
        return self.node.ctr_argv(*args)

    def start_run(self) -> subprocess.Popen[str]:
        self.node.track(cr.NAMESPACE, self.id)
        return subprocess.Popen(
            self.run_argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def start_checkpoint(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.node.ctr_argv("task", "checkpoint", self.id), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def forget_containerd_checkpoints(self) -> None:
        """containerd 1.6 refuses a checkpoint whose content it already holds: drop its copies."""
        names = self.node.ctr("images", "ls", "--quiet").stdout.split()
        stale = [name for name in names if name.startswith("containerd.io/checkpoint/")]
        if stale:
            self.node.ctr("images", "rm", *stale)

    def rootfs(self) -> Path:
        return cr.rootfs_of(self.runc, self.node, self.id)

    def counted(self) -> int:
        return cr.counted(cr.count_log(self.rootfs()))

    def remove(self) -> None:
        """Whatever state the task is in: kill it, delete task and container."""
        problems = self.node.remove_container(self.id)
        assert not problems, problems

    def restored_count(self) -> int:
        return cr.arch_log(self.node).count(f"create default/{self.id}: restored from")

    def leftovers(self) -> list[str]:
        """What a killed call must not leave running."""
        problems = [f"runtime process: {p}" for p in kt.runtime_processes(self.node)]
        if self.node.task_status(self.id) != "RUNNING":
            problems += [f"outside containerd: {p}" for p in kt.cgroup_processes(
                cr.NAMESPACE, self.id)]  # fmt: skip
        return problems


def settle(job: Job, caller: subprocess.Popen[str]) -> str:
    """Wait for ctr to give up or finish, and for containerd's clean-up calls to end."""
    try:
        _, stderr = caller.communicate(timeout=SETTLE_TIMEOUT)
    except subprocess.TimeoutExpired:
        caller.kill()
        _, stderr = caller.communicate()
    procs.wait_until(lambda: not job.leftovers(), 10, interval=0.05)
    job.forget_containerd_checkpoints()
    return stderr


def good_restore(job: Job, checkpointed: int) -> float:
    """Create the container again: it must restore and count on. Returns the call's length."""
    restores = job.restored_count()
    if job.id in job.node.container_ids(cr.NAMESPACE):
        job.node.ctr("containers", "delete", job.id)
    started = time.monotonic()
    created = procs.run(job.run_argv(), check=False)
    took = time.monotonic() - started
    assert created.returncode == 0, procs.describe(created) + cr.arch_log(job.node)[-3000:]
    assert job.restored_count() == restores + 1, cr.arch_log(job.node)[-3000:]
    cr.wait_for(lambda: job.counted() > checkpointed + 2, "the restored job to count on")
    lines = cr.count_log(job.rootfs())
    assert lines == ["start", *map(str, range(1, len(lines)))], "the count restarted or jumped"
    return took


def good_checkpoint(job: Job) -> tuple[int, float]:
    started = time.monotonic()
    cr.checkpoint(job.node, job.id)
    took = time.monotonic() - started
    job.node.wait_for_status(job.id, "STOPPED")
    job.forget_containerd_checkpoints()
    return job.counted(), took


def test_arch_runc_killed_during_restore_and_checkpoint_leaves_nothing_behind(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    job = Job(node, workload_image, real_runc_binary)
    procs.run(job.run_argv())
    node.track(cr.NAMESPACE, job.id)
    cr.wait_for(lambda: job.counted() >= 3, "the job to count")
    checkpointed, checkpoint_length = good_checkpoint(job)
    job.remove()
    restore_length = good_restore(job, checkpointed)
    outcomes: dict[str, list[bool]] = {"restore": [], "checkpoint": []}

    for round_number in range(ROUNDS):
        fraction = (round_number + 0.5) / ROUNDS * SPREAD
        # -- checkpoint, killed ------------------------------------------------------------
        cr.wait_for(lambda at=checkpointed: job.counted() > at + 1, "the job to count")
        before = kt.image_digest(job.image_dir)
        caller = job.start_checkpoint()
        outcome = kt.kill_call_after(node, "checkpoint", job.id, fraction * checkpoint_length,
                                     caller)  # fmt: skip
        outcomes["checkpoint"].append(outcome.killed)
        if not outcome.killed:  # it ran to its end: that is the call's length to spread over
            checkpoint_length = outcome.seconds
        settle(job, caller)
        where = (f"round {round_number}, checkpoint killed after {outcome.seconds:.3f}s "
                 f"(task {node.task_status(job.id)})")
        assert job.leftovers() == [], f"{where}: {job.leftovers()}"
        status = node.task_status(job.id)
        after = kt.image_digest(job.image_dir)
        if status == "STOPPED":  # the kill came after the checkpoint completed
            assert after != before and "metadata.json" in after, where
            checkpointed = job.counted()
        else:
            assert status == "RUNNING", f"{where}: task is {status}"
            now = job.counted()
            cr.wait_for(lambda now=now: job.counted() > now + 1, f"{where}: the job to go on")
            assert "metadata.json" in after, f"{where}: no image left"
            checkpointed, _ = good_checkpoint(job)
        job.remove()
        # -- restore, killed -----------------------------------------------------------------
        before = kt.image_digest(job.image_dir)
        caller = job.start_run()
        outcome = kt.kill_call_after(node, "create", job.id, fraction * restore_length, caller)
        outcomes["restore"].append(outcome.killed)
        if not outcome.killed:
            restore_length = outcome.seconds
        settle(job, caller)
        where = (f"round {round_number}, restore killed after {outcome.seconds:.3f}s "
                 f"(task {node.task_status(job.id)})")
        assert job.leftovers() == [], f"{where}: {job.leftovers()}"
        assert kt.image_digest(job.image_dir) == before, f"{where}: the image changed"
        if node.task_status(job.id) == "RUNNING":  # the kill came after the restore completed
            cr.wait_for(lambda at=checkpointed: job.counted() > at + 1, f"{where}: counting")
        else:
            job.remove()
            good_restore(job, checkpointed)

    # The kills hit the calls, not only their ends.
    for kind, killed in outcomes.items():
        assert sum(killed) >= ROUNDS // 2, f"{kind}: only {sum(killed)} of {ROUNDS} calls killed"
    leftovers = [p.name for p in job.image_dir.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
