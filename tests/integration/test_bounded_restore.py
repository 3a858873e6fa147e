"""Restores and dumps that hang are cut off and cleaned up (real containerd, runc and CRIU).

CRIU is made to hang with SIGSTOP (harness/criu_stall.py: arch.toml's `criu` is a wrapper that
stops the CRIU runc starts for a restore once CRIU has mounted its cgroup yard, or the one for
a dump before it starts). Then:
- a restore past `restore_timeout` is cut off: the `create` ends in a fresh, running container;
  nothing runc or CRIU mounted stays mounted (the yard in ARCH's restore work directory under the
  state dir, runc's criu-root), the stopped CRIU and its runc are gone (checked by pid), the
  cut-off is logged and counted in the metrics, and the image stays for the next create;
- a restore whose arch-runc is killed while CRIU hangs (containerd then deletes the container) is
  cleaned up the same way, and the next create restores the untouched image;
- a dump past `checkpoint_timeout` is stopped the same way and the container keeps running;
- the leftover sweep of the exit watcher unmounts what a dead restore left in its work directory
  and reports it, without reaching into the mounted cgroup hierarchies.
Each test prints the times and the mounts it checked.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import kill_trials as kt
from harness import procs
from harness.containerd import ContainerdNode
from harness.criu_stall import CHECKPOINT, OFF, RESTORE, Stall, StallingCriu

from arch.checkpoint.storage.lease import LEASE_FILE
from tests.conftest import CgroupHierarchy

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

RESTORE_TIMEOUT = 10  # seconds; the stall comes well before it, even on a loaded machine
CHECKPOINT_TIMEOUT = 10
CALL_TIMEOUT = 180.0  # what ctr may take, however loaded the machine
CLEAN_UP_TIMEOUT = 60.0
# The workload notes the host's uptime when it starts fresh (a restored process never runs this).
BORN_FILE = "state/born"
PREPARE = f"cat /proc/uptime > /{BORN_FILE}"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


class Job:
    """The counting container under a unique id, with ARCH enabled."""

    def __init__(self, node: ContainerdNode, image: cr.WorkloadImage, runc: Path) -> None:
        self.node = node
        self.image = image
        self.runc = runc
        self.id = unique("hang")
        self.env = {"ARCH_ENABLE": "1"}
        self.image_dir = node.arch.checkpoint_root / cr.NAMESPACE / self.id

    def run_argv(self) -> list[str]:
        args = self.node.run_args(self.image.name, self.id, cr.shell_workload(prepare=PREPARE),
                                  env=self.env)  # fmt: skip
        return self.node.ctr_argv(*args)

    def start_run(self) -> subprocess.Popen[str]:
        self.node.track(cr.NAMESPACE, self.id)
        return subprocess.Popen(self.run_argv(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip

    def rootfs(self) -> Path:
        return cr.rootfs_of(self.runc, self.node, self.id)

    def counted(self) -> int:
        return cr.counted(cr.count_log(self.rootfs()))

    def born(self) -> float:
        """The host's uptime when the container's workload last started fresh."""
        return float(cr.read_text(self.rootfs() / BORN_FILE).split()[0])

    def run_and_checkpoint(self) -> int:
        """Start the job, let it count, checkpoint it (CRIU untouched); returns the count."""
        procs.run(self.run_argv())
        self.node.track(cr.NAMESPACE, self.id)
        cr.wait_for(lambda: self.counted() >= 3, "the job to count")
        cr.checkpoint(self.node, self.id)
        self.node.wait_for_status(self.id, "STOPPED")
        checkpointed = self.counted()
        assert self.node.remove_container(self.id) == []
        forget_containerd_checkpoints(self.node)
        assert (self.image_dir / "metadata.json").is_file()
        return checkpointed


def forget_containerd_checkpoints(node: ContainerdNode) -> None:
    """containerd 1.6 refuses a checkpoint whose content it already holds: drop its copies."""
    names = node.ctr("images", "ls", "--quiet").stdout.split()
    stale = [name for name in names if name.startswith("containerd.io/checkpoint/")]
    if stale:
        node.ctr("images", "rm", *stale)


def finish(caller: subprocess.Popen[str]) -> tuple[int, str, float]:
    """Wait for ctr: (exit status, stderr, seconds until it ended)."""
    started = time.monotonic()
    _, stderr = caller.communicate(timeout=CALL_TIMEOUT)
    return caller.returncode, stderr, time.monotonic() - started


def mounts_checked(node: ContainerdNode) -> dict[str, list[str]]:
    """What is mounted under ARCH's state dir (restore work dirs) and runc's root (criu-root)."""
    return {str(place): procs.mounts_under(place)
            for place in (node.arch.state_dir, node.runc_root)}  # fmt: skip


def print_mounts(
    stall: Stall, during: dict[str, list[str]], after: dict[str, list[str]]
) -> None:
    print(f"\nCRIU stopped (pid {stall.criu_pid}, runc pid {stall.runc_pid}); its cgroup yard "
          f"as CRIU saw it: {len(stall.yard_mounts)} mounts")  # fmt: skip
    for mount_point in stall.yard_mounts:
        print(f"  {mount_point}")
    for place, mounted in during.items():
        print(f"mounts under {place} while CRIU hung: {len(mounted)}")
        for mount_point in mounted:
            print(f"  {mount_point}")
    for place, mounted in after.items():
        print(f"mounts under {place} afterwards: {mounted or 'none'}")


def add_config(node: ContainerdNode, line: str) -> None:
    with node.arch.config_file.open("a") as config:
        config.write(line + "\n")


def metric(node: ContainerdNode, sample: str) -> float:
    for line in cr.read_text(node.arch.metrics_file).splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def stalling(node: ContainerdNode) -> Iterator[StallingCriu]:
    stall = StallingCriu.install(node)
    yield stall
    stall.set(OFF)  # the teardown's deletes must not stall


def test_a_restore_that_hangs_is_cut_off_and_the_container_starts_fresh(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path,
    stalling: StallingCriu,
) -> None:  # fmt: skip
    add_config(node, f"restore_timeout = {RESTORE_TIMEOUT}")
    job = Job(node, workload_image, real_runc_binary)
    job.run_and_checkpoint()
    image_before = kt.image_digest(job.image_dir)
    stalling.set(RESTORE)

    started, created_at = time.monotonic(), uptime()
    caller = job.start_run()  # ctr run --detach: create (restore, cut off, fresh), then start
    stall = stalling.wait_for_stall()
    during = mounts_checked(node)
    status, stderr, _ = finish(caller)
    create_to_fresh = time.monotonic() - started

    assert status == 0, stderr + cr.arch_log(node)[-3000:]
    assert len(stall.yard_mounts) >= 2, stall  # the fault: CRIU stopped inside its restore
    log = cr.arch_log(node)
    assert f"create default/{job.id}: restore refused, starting fresh" in log, log[-3000:]
    assert f"did not finish within restore_timeout ({RESTORE_TIMEOUT} s)" in log, log[-3000:]
    assert f"create default/{job.id}: restored from" not in log
    assert node.task_status(job.id) == "RUNNING"
    assert job.born() >= created_at - 1, "the workload was not started fresh"
    counted = job.counted()
    cr.wait_for(lambda: job.counted() > counted + 2, "the fresh job to count")
    after = mounts_checked(node)
    print_mounts(stall, during, after)
    print(f"create -> fresh start: {create_to_fresh:.2f} s (restore_timeout {RESTORE_TIMEOUT} s)")
    assert all(not mounted for mounted in after.values()), after
    assert stall.survivors() == [], stall
    assert kt.runtime_processes(node) == []
    assert kt.image_digest(job.image_dir) == image_before  # kept, untouched, for the next create
    assert metric(node, 'arch_failures_total{operation="restore",reason="timeout"}') == 1.0


def test_a_hung_restore_whose_arch_runc_is_killed_is_cleaned_up_and_restores_next_time(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path,
    stalling: StallingCriu,
) -> None:  # fmt: skip
    add_config(node, "restore_timeout = 0")  # no limit: only the kill ends it
    job = Job(node, workload_image, real_runc_binary)
    checkpointed = job.run_and_checkpoint()
    image_before = kt.image_digest(job.image_dir)
    stalling.set(RESTORE)

    caller = job.start_run()
    stall = stalling.wait_for_stall()
    during = mounts_checked(node)
    create_call = kt.arch_runc_call(node, "create", job.id)
    assert create_call is not None
    os.kill(create_call, 9)
    status, stderr, _ = finish(caller)

    assert status != 0, stderr  # containerd reports the killed create and deletes the container
    assert procs.wait_until(lambda: not any(mounts_checked(node).values()), CLEAN_UP_TIMEOUT)
    after = mounts_checked(node)
    print_mounts(stall, during, after)
    assert procs.wait_until(lambda: stall.survivors() == [], CLEAN_UP_TIMEOUT), stall
    assert kt.runtime_processes(node) == []
    log = cr.arch_log(node)
    assert f"restore of default/{job.id} was interrupted" in log, log[-3000:]
    # runc's death orphans its process group: the kernel sends the stopped CRIU SIGHUP and
    # SIGCONT, and CRIU removes its yard itself. runc's criu-root is ARCH's to unmount (before
    # `runc delete`, which would delete the container's files through it).
    for mount_point in during[str(node.runc_root)]:
        assert f"unmounted {mount_point}" in log, log[-3000:]
    assert kt.image_digest(job.image_dir) == image_before

    stalling.set(OFF)
    if job.id in node.container_ids(cr.NAMESPACE):
        node.ctr("containers", "delete", job.id)
    procs.run(job.run_argv())
    assert f"create default/{job.id}: restored from" in cr.arch_log(node)
    cr.wait_for(lambda: job.counted() > checkpointed + 2, "the restored job to count on")


def test_a_dump_that_hangs_is_cut_off_and_the_container_keeps_running(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path,
    stalling: StallingCriu,
) -> None:  # fmt: skip
    add_config(node, f"checkpoint_timeout = {CHECKPOINT_TIMEOUT}")
    job = Job(node, workload_image, real_runc_binary)
    procs.run(job.run_argv())
    node.track(cr.NAMESPACE, job.id)
    cr.wait_for(lambda: job.counted() >= 3, "the job to count")
    stalling.set(CHECKPOINT)

    started = time.monotonic()
    caller = subprocess.Popen(node.ctr_argv("task", "checkpoint", job.id),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    stall = stalling.wait_for_stall()
    during = mounts_checked(node)
    status, stderr, _ = finish(caller)
    took = time.monotonic() - started

    assert status != 0
    assert f"did not finish within checkpoint_timeout ({CHECKPOINT_TIMEOUT} s)" in stderr, stderr
    assert node.task_status(job.id) == "RUNNING"
    counted = job.counted()
    cr.wait_for(lambda: job.counted() > counted + 2, "the job to count on")
    after = mounts_checked(node)
    print_mounts(stall, during, after)
    print(f"checkpoint call -> failed, container running: {took:.2f} s "
          f"(checkpoint_timeout {CHECKPOINT_TIMEOUT} s)")  # fmt: skip
    assert all(not mounted for mounted in after.values()), after
    assert stall.survivors() == [], stall
    assert kt.runtime_processes(node) == []
    namespace_dir = node.arch.checkpoint_root / cr.NAMESPACE
    assert not namespace_dir.exists() or list(namespace_dir.iterdir()) == []
    assert metric(node, 'arch_failures_total{operation="checkpoint",reason="timeout"}') == 1.0


@pytest.fixture
def hierarchy() -> CgroupHierarchy:
    return CgroupHierarchy.find()


@pytest.fixture
def host_cgroup(hierarchy: CgroupHierarchy) -> Iterator[Path]:
    """An empty cgroup of this test's own in a hierarchy of the host: the sweep must not
    remove it through a cgroup yard that stayed mounted."""
    cgroup = hierarchy.host_mount / unique("arch-test")
    cgroup.mkdir()
    try:
        yield cgroup
    finally:
        cgroup.rmdir()


def test_the_sweep_unmounts_what_a_dead_restore_left_mounted_and_reports_it(
    containerd_nodes: object, tmp_path: Path, hierarchy: CgroupHierarchy, host_cgroup: Path
) -> None:
    """A restore work directory as a killed CRIU leaves it (its lease's holder dead, CRIU's
    cgroup yard still mounted: a tmpfs, a cgroup hierarchy in it), swept by the exit watcher."""
    assert callable(containerd_nodes)
    node: ContainerdNode = containerd_nodes("a", image=False)
    work = node.arch.state_dir / ".work" / "restore-dead01"
    yard = work / ".criu.cgyard.Ab12Cd"
    yard.mkdir(parents=True)
    (work / "restore.log").write_text("(00.01) cg: Preparing cgroups yard\n")
    leave_lease_of_a_dead_process(node, work)
    try:
        procs.run(["mount", "-t", "tmpfs", "none", str(yard)])
        (yard / hierarchy.name).mkdir()
        procs.run(["mount", *hierarchy.mount_args, str(yard / hierarchy.name)])
        left = procs.mounts_under(work)
        assert (yard / hierarchy.name / host_cgroup.name).is_dir()

        with sweeping(node, tmp_path / "watcher.out"):
            assert procs.wait_until(lambda: not work.exists(), CLEAN_UP_TIMEOUT), (
                cr.arch_log(node)[-3000:]
            )
        log = cr.arch_log(node)
        print(f"\nleft mounted by the 'dead restore': {left}")
        print("the sweep reported:")
        for line in log.splitlines():
            if "clean-up:" in line:
                print(f"  {line.split('clean-up: ', 1)[1]}")
        for mount_point in left:
            assert f"clean-up: unmounted {mount_point}" in log, log[-3000:]
        assert f"clean-up: removed {work}" in log
        assert procs.mounts_under(node.arch.state_dir) == []
        assert host_cgroup.is_dir()
    finally:
        if work.exists():
            procs.unmount_all_under(work)


def leave_lease_of_a_dead_process(node: ContainerdNode, directory: Path) -> None:
    """The lease a killed restore leaves: written by ARCH's own Lease in a process of the
    node's host (its host identity, boot id, pid and start time) that then dies at once."""
    script = ("import os, sys\n"
              "from arch.checkpoint.storage.lease import Lease\n"
              "Lease(sys.argv[1]).start()\n"
              "os._exit(0)\n")  # fmt: skip
    environment = {**os.environ, **node.arch.environment}
    subprocess.run([sys.executable, "-c", script, str(directory)], check=True, env=environment,
                   stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    assert (directory / LEASE_FILE).is_file()


@contextlib.contextmanager
def sweeping(node: ContainerdNode, output_file: Path) -> Iterator[None]:
    """`archctl watch-exits --sweep-interval 0.5` for the node while the caller runs."""
    environment = {**os.environ, **node.arch.environment}
    environment.pop("CONTAINERD_ADDRESS", None)
    with output_file.open("wb") as sink:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "arch.cli.main", "--address", node.address, "watch-exits",
             "--sweep-interval", "0.5"],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=environment,
        )  # fmt: skip
    try:
        yield
    finally:
        procs.stop_process(watcher)
    assert watcher.returncode == 0, output_file.read_text()
