"""Every fault point x action (arch.failpoints) through real containerd, runc and CRIU.

For each point an operation passes, the operation is run with the point armed (`kill`: arch-runc
or archctl SIGKILLs itself there; `EIO`: the step fails with EIO), containerd's own follow-up
calls run as they do (a failed checkpoint is followed by `resume`, a failed create by
`delete --force`), and then the four invariants of the README are checked:

1. a container never runs on past a published image of itself: when the image at the path
   changed, the task is not running (and stays so);
2. a restore always uses the newest image of the job: the next create restores the generation
   now at the path (ARCH's log names it), the count goes on without a gap, and every
   publication raised the generation by one;
3. nothing removes another writer's image or staging: no staging or swapped-out copy of the job
   is left behind to be brought back, the published image is intact;
4. exactly one live container per image: no process runs in the container's cgroup unless
   containerd has the task running, and a pool image goes to one member.

Each trial prints that its point fired (from ARCH's log) and what followed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import kill_trials as kt
from harness import procs
from harness.containerd import ContainerdNode
from harness.faults import Faults, ImageState, image_state

from arch import failpoints

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

ACTIONS = ("kill", "EIO")
CALL_TIMEOUT = 180.0
STILL_STOPPED_AFTER = 1.0


def points(operation: str) -> list[str]:
    return [point.name for point in failpoints.POINTS if point.operation == operation]


@pytest.fixture
def faults(node: ContainerdNode, arch_runc_binary: Path) -> Faults:
    return Faults(node, arch_runc_binary)


class Job:
    """The counting container, created through the fault-point wrapper."""

    def __init__(self, node: ContainerdNode, faults: Faults, runc: Path, env: dict[str, str],
                 container_id: str) -> None:  # fmt: skip
        self.node, self.faults, self.runc = node, faults, runc
        self.id = container_id
        self.env = env
        self.image_dir = node.arch.checkpoint_root / cr.NAMESPACE / env.get(
            "ARCH_CHECKPOINT_ID", container_id)  # fmt: skip
        self.command = cr.shell_workload(prepare="")
        self.restored_generation = 0  # what the running container was restored from

    def run(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.node.track(cr.NAMESPACE, self.id)
        args = self.node.run_args(cr.WORKLOAD_IMAGE_NAME, self.id, self.command, env=self.env,
                                  runtime_binary=self.faults.wrapper)  # fmt: skip
        return self.node.ctr(*args, check=check, timeout=CALL_TIMEOUT)

    def checkpoint(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.node.ctr("task", "checkpoint", self.id, check=check, timeout=CALL_TIMEOUT)

    def status(self) -> str | None:
        return self.node.task_status(self.id)

    def counted(self) -> int:
        return cr.counted(cr.count_log(cr.rootfs_of(self.runc, self.node, self.id)))

    def count_log(self) -> list[str]:
        return cr.count_log(cr.rootfs_of(self.runc, self.node, self.id))

    def remove(self) -> None:
        problems = self.node.remove_container(self.id)
        assert not problems, problems

    def restores(self) -> list[str]:
        marker = f"create {cr.NAMESPACE}/{self.id}: restored from"
        return [line for line in cr.arch_log(self.node).splitlines() if marker in line]

    def settle(self) -> None:
        """Wait until no runc/CRIU of this node runs and containerd's follow-ups are done."""
        assert procs.wait_until(lambda: not kt.runtime_processes(self.node), 60, 0.05), (
            kt.runtime_processes(self.node))  # fmt: skip
        names = self.node.ctr("images", "ls", "--quiet").stdout.split()
        stale = [name for name in names if name.startswith("containerd.io/checkpoint/")]
        if stale:
            self.node.ctr("images", "rm", *stale)

    def outside_containerd(self) -> list[str]:
        if self.status() == "RUNNING":
            return []
        return kt.cgroup_processes(cr.NAMESPACE, self.id)

    def leftovers(self) -> list[str]:
        """Staging dirs or swapped-out copies of this job's image in its parent directory."""
        name = self.image_dir.name
        prefixes = (f".staging-{name}-", f".old-{name}-")
        names = [path.name for path in self.image_dir.parent.iterdir()]
        return sorted(name for name in names if name.startswith(prefixes))

    # -- steps that must work ---------------------------------------------------------------

    def good_checkpoint(self) -> ImageState:
        before = image_state(self.image_dir)
        cr.wait_for(lambda: self.counted() >= 2, "the job to count")
        self.checkpoint()
        self.node.wait_for_status(self.id, "STOPPED")
        self.settle()
        after = image_state(self.image_dir)
        assert after.identity not in (None, before.identity), "no new image published"
        assert after.generation == self.restored_generation + 1, (self.restored_generation, after)
        return after

    def restores_newest(self) -> None:
        """Create again: it restores the newest image at the path and counts on without a gap."""
        newest = image_state(self.image_dir)
        assert newest.identity is not None, "no image to restore"
        if self.id in self.node.container_ids(cr.NAMESPACE):
            self.remove()
        restores = len(self.restores())
        self.run()
        made = self.restores()
        assert len(made) == restores + 1, cr.arch_log(self.node)[-3000:]
        assert f"(generation {newest.generation})" in made[-1], (made[-1], newest)
        self.restored_generation = newest.generation or 0
        checkpointed = len(self.count_log())
        cr.wait_for(lambda: self.counted() > checkpointed, "the restored job to count on")
        lines = self.count_log()
        assert lines == ["start", *map(str, range(1, len(lines)))], "the count restarted or jumped"


def evidence(faults: Faults, seen: int, point: str, action: str) -> str:
    fired = faults.fired()[seen:]
    assert (point, action) in fired, f"{point}={action} did not fire (fired: {fired})"
    return f"{point}={action}: fired"


def started_job(node: ContainerdNode, faults: Faults, runc: Path) -> Job:
    job_id = f"fp-{uuid.uuid4().hex[:10]}"
    job = Job(node, faults, runc, {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": job_id}, job_id)
    job.run()
    job.good_checkpoint()
    job.restores_newest()
    return job


def checkpoint_trial(job: Job, point: str, action: str) -> str:
    before = image_state(job.image_dir)
    cr.wait_for(lambda: job.counted() >= 2, "the job to count")
    seen = len(job.faults.fired())
    job.faults.arm(point, action)
    try:
        job.checkpoint(check=False)
    finally:
        job.faults.disarm()
    job.settle()
    line = evidence(job.faults, seen, point, action)
    after = image_state(job.image_dir)
    assert job.leftovers() == [], f"{line}: {job.leftovers()}"
    assert job.outside_containerd() == [], f"{line}: {job.outside_containerd()}"
    if after.identity is None:  # published, not stoppable: withdrawn before it ran again
        assert "the image was withdrawn" in cr.arch_log(job.node), f"{line}: the image was lost"
        assert job.status() == "RUNNING", f"{line}: withdrawn, yet task is {job.status()}"
        published = job.good_checkpoint()
        outcome = ("the stop failed: image withdrawn, job ran on; next checkpoint: generation "
                   f"{published.generation}")  # fmt: skip
    elif after.identity != before.identity:  # published
        assert after.generation == job.restored_generation + 1, (line, job.restored_generation,
                                                                 after)  # fmt: skip
        assert job.status() != "RUNNING", f"{line}: the container runs past its published image"
        time.sleep(STILL_STOPPED_AFTER)
        assert job.status() != "RUNNING", f"{line}: the container ran again after publication"
        outcome = f"published generation {after.generation}, container {job.status()}"
    else:
        assert job.status() == "RUNNING", f"{line}: not published, yet task is {job.status()}"
        now = job.counted()
        cr.wait_for(lambda: job.counted() > now, f"{line}: the job to go on")
        published = job.good_checkpoint()
        outcome = f"not published, job ran on; next checkpoint: generation {published.generation}"
    job.restores_newest()
    return f"{line}; {outcome}; the next create restored the newest"


def restore_trial(job: Job, point: str, action: str) -> str:
    job.good_checkpoint()
    newest = image_state(job.image_dir)
    job.remove()
    seen = len(job.faults.fired())
    restores = len(job.restores())
    job.faults.arm(point, action)
    try:
        created = job.run(check=False)
    finally:
        job.faults.disarm()
    job.settle()
    line = evidence(job.faults, seen, point, action)
    assert job.outside_containerd() == [], f"{line}: {job.outside_containerd()}"
    assert image_state(job.image_dir) == newest, f"{line}: the image changed"
    status = job.status()
    if status == "RUNNING":
        restored = len(job.restores()) > restores
        outcome = "restored" if restored else "created fresh"
    else:
        outcome = f"create failed (ctr exit {created.returncode}), nothing left running"
    job.restores_newest()
    return f"{line}; {outcome}; the image intact and restored next"


def delete_trial(job: Job, point: str, action: str) -> str:
    """The job exits 0 on its own; its delete is hit. The image of a finished job must not be
    restored by the next create of the container, whatever happened to the delete."""
    rootfs = cr.rootfs_of(job.runc, job.node, job.id)
    (rootfs / "state" / "exit").write_text("0")
    job.node.wait_for_status(job.id, "STOPPED")
    seen = len(job.faults.fired())
    job.faults.arm(point, action)
    try:
        job.node.ctr("task", "delete", job.id, check=False, timeout=CALL_TIMEOUT)
    finally:
        job.faults.disarm()
    job.settle()
    line = evidence(job.faults, seen, point, action)
    job.remove()  # what containerd or the operator does next: delete again, then the container
    restores = len(job.restores())
    job.run()
    assert len(job.restores()) == restores, f"{line}: a finished job was restored"
    cr.wait_for(lambda: job.counted() >= 1, f"{line}: the fresh job to count")
    assert job.count_log()[:2] == ["start", "1"], f"{line}: not a fresh start"
    assert image_state(job.image_dir).identity is None, f"{line}: the finished job's image stays"
    return f"{line}; the finished job's image removed, the next create started fresh"


def test_checkpoint_fault_points(
    node: ContainerdNode, faults: Faults, workload_image: cr.WorkloadImage,
    real_runc_binary: Path,
) -> None:
    job = started_job(node, faults, real_runc_binary)
    for point in points("checkpoint"):
        for action in ACTIONS:
            print(checkpoint_trial(job, point, action), flush=True)


def test_restore_fault_points(
    node: ContainerdNode, faults: Faults, workload_image: cr.WorkloadImage,
    real_runc_binary: Path,
) -> None:
    job = started_job(node, faults, real_runc_binary)
    for point in points("restore"):
        for action in ACTIONS:
            print(restore_trial(job, point, action), flush=True)


def test_delete_fault_points(
    node: ContainerdNode, faults: Faults, workload_image: cr.WorkloadImage,
    real_runc_binary: Path,
) -> None:
    for point in points("delete"):
        for action in ACTIONS:
            job = started_job(node, faults, real_runc_binary)
            print(delete_trial(job, point, action), flush=True)
            job.remove()


def test_gc_fault_points(
    node: ContainerdNode, faults: Faults, workload_image: cr.WorkloadImage,
    real_runc_binary: Path,
) -> None:
    """gc removes an expired image that has an older complete `.old-` copy next to it (a
    publication killed after its rename leaves one): whatever happens to gc, that copy never
    comes back as the job's image."""
    for action in ACTIONS:
        job = started_job(node, faults, real_runc_binary)
        older = node.base_dir / f"older-{job.id}"
        shutil.copytree(job.image_dir, older)
        job.good_checkpoint()
        job.remove()
        old_copy = job.image_dir.parent / f".old-{job.image_dir.name}-{os.urandom(6).hex()}"
        older.rename(old_copy)
        time.sleep(2)
        gc = subprocess.run(
            [sys.executable, "-m", "arch.cli.main", "--address", node.address, "gc", "--root",
             str(node.arch.checkpoint_root), "--older-than", "1s"],
            env={**os.environ, **node.arch.environment,
                 failpoints.ENV: f"gc.renamed-aside={action}"},
            capture_output=True, text=True, timeout=CALL_TIMEOUT, check=False,
        )  # fmt: skip
        fired = f"failpoint gc.renamed-aside fired: {action}"
        assert fired in gc.stderr, f"{fired!r} not seen: {gc.stdout} {gc.stderr}"
        line = f"gc.renamed-aside={action}: fired"
        assert not old_copy.exists(), f"{line}: the older copy is still there"
        restores = len(job.restores())
        job.run()
        assert len(job.restores()) == restores, f"{line}: an older state came back"
        cr.wait_for(lambda j=job: j.counted() >= 1, f"{line}: the fresh job to count")
        assert job.count_log()[:2] == ["start", "1"], f"{line}: not a fresh start"
        print(f"{line} (gc exit {gc.returncode}); the older copy gone, the next create started "
              "fresh", flush=True)  # fmt: skip
        job.remove()


class Pool:
    """Members of one ARCH_CHECKPOINT_POOL on the node."""

    def __init__(self, node: ContainerdNode, faults: Faults, runc: Path) -> None:
        self.node, self.faults, self.runc = node, faults, runc
        self.name = f"pool-{uuid.uuid4().hex[:8]}"
        self.dir = node.arch.checkpoint_root / cr.NAMESPACE / self.name

    def member(self, container_id: str | None = None) -> Job:
        env = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_POOL": self.name}
        return Job(self.node, self.faults, self.runc, env,
                   container_id or f"pm-{uuid.uuid4().hex[:10]}")  # fmt: skip

    def images(self) -> dict[str, ImageState]:
        return {path.name: image_state(path) for path in sorted(self.dir.iterdir())
                if path.is_dir() and not path.name.startswith(".reading~")}  # fmt: skip

    def unclaimed(self) -> dict[str, ImageState]:
        return {name: s for name, s in self.images().items() if name.startswith("image-")}

    def check_newest_only(self, line: str) -> int:
        """One unclaimed image, of the newest generation in the pool; nothing claimed."""
        images = self.images()
        unclaimed = self.unclaimed()
        assert len(unclaimed) == 1, f"{line}: pool holds {images}"
        (newest,) = unclaimed.values()
        generations = [s.generation or 0 for s in images.values() if s.identity]
        assert newest.generation == max(generations), f"{line}: an older state is offered: {images}"
        assert set(images) == set(unclaimed), f"{line}: claimed by nobody: {images}"
        return newest.generation or 0

    def restores_into(self, member: Job, generation: int) -> None:
        restores = len(member.restores())
        member.run()
        made = member.restores()
        assert len(made) == restores + 1, cr.arch_log(self.node)[-3000:]
        assert f"(generation {generation})" in made[-1], made[-1]
        cr.wait_for(lambda: member.counted() >= 2, "the pool member to count on")
        lines = member.count_log()
        assert lines == ["start", *map(str, range(1, len(lines)))], "the count restarted or jumped"


def _checkpoint_member(member: Job) -> None:
    cr.wait_for(lambda: member.counted() >= 2, "the member to count")
    member.checkpoint()
    member.node.wait_for_status(member.id, "STOPPED")
    member.settle()


def test_pool_fault_points(
    node: ContainerdNode, faults: Faults, workload_image: cr.WorkloadImage,
    real_runc_binary: Path,
) -> None:
    pool = Pool(node, faults, real_runc_binary)
    first = pool.member()
    first.run()
    _checkpoint_member(first)
    first.remove()
    generation = pool.check_newest_only("first checkpoint")
    for point in ("pool.before-release", "pool.after-release"):
        for action in ACTIONS:
            member = pool.member()
            pool.restores_into(member, generation)
            seen = len(faults.fired())
            faults.arm(point, action)
            try:
                member.checkpoint(check=False)
            finally:
                faults.disarm()
            member.settle()
            line = evidence(faults, seen, point, action)
            assert member.status() != "RUNNING", f"{line}: the member runs past its image"
            assert member.outside_containerd() == [], line
            member.remove()
            newer = pool.check_newest_only(line)
            assert newer == generation + 1, f"{line}: generation {newer} after {generation}"
            generation = newer
            print(f"{line}; member stopped, the pool offers only generation {newer}", flush=True)
    for point in ("pool.before-claim", "pool.after-claim"):
        for action in ACTIONS:
            member = pool.member()
            seen = len(faults.fired())
            faults.arm(point, action)
            try:
                member.run(check=False)
            finally:
                faults.disarm()
            member.settle()
            line = evidence(faults, seen, point, action)
            assert member.outside_containerd() == [], line
            outcome = f"member {member.status()}"
            if member.status() == "RUNNING" and member.restores():
                _checkpoint_member(member)  # it took the image: its next state goes back
                generation += 1
            member.remove()
            # The same member created again (containerd or the operator retries).
            pool.restores_into(member, pool.check_newest_only(line))
            _checkpoint_member(member)
            member.remove()
            generation = pool.check_newest_only(line)
            print(f"{line}; {outcome}; no claim lost, the retry restored the newest", flush=True)
