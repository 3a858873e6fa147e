"""Two hosts on storage that behaves like NFS/EFS (harness/nfs_like.py: no RENAME_EXCHANGE,
flock per mount, silly rename of open-unlinked files, attribute caching), each host with its
own mount, its own host identity (as ARCH tells hosts apart) and its own containerd.

A job migrates A -> B -> A, each checkpoint replacing the image the other host published (the
publication takes the rename-aside path, RENAME_EXCHANGE being refused); every restore takes
the newest generation and counts on; nothing is left next to the image.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.containerd import ContainerdNode
from harness.faults import image_state

from arch import host_identity

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

HARNESS = Path(__file__).resolve().parent


@contextlib.contextmanager
def nfs_like_mount(backing: Path, mountpoint: Path) -> Iterator[Path]:
    """One host's mount of the shared directory; unmounted (by its own path) afterwards."""
    pytest.importorskip("fuse", reason="fusepy is not installed (tests/run.sh installs it)")
    mountpoint.mkdir(parents=True)
    log = mountpoint.parent / f"{mountpoint.name}.fuse.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "harness.nfs_like", str(backing), str(mountpoint)],
            cwd=HARNESS, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        assert procs.wait_until(lambda: os.path.ismount(mountpoint), 30, 0.1), procs.tail(log)
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False,
                       capture_output=True)  # fmt: skip
        procs.stop_process(process)


def forget_containerd_checkpoints(node: ContainerdNode) -> None:
    """containerd 1.6 refuses a checkpoint whose content it already holds: drop its copies."""
    names = node.ctr("images", "ls", "--quiet").stdout.split()
    stale = [name for name in names if name.startswith("containerd.io/checkpoint/")]
    if stale:
        node.ctr("images", "rm", *stale)


@pytest.fixture
def nfs_nodes(
    working_criu: None,
    containerd_nodes: object,
    workload_image: cr.WorkloadImage,
    tmp_path: Path,
) -> Iterator[tuple[ContainerdNode, ContainerdNode, Path]]:
    assert callable(containerd_nodes)
    backing = tmp_path / "server"
    backing.mkdir(mode=0o700)
    with contextlib.ExitStack() as stack:
        nodes = []
        for name in ("a", "b"):
            mount = stack.enter_context(nfs_like_mount(backing, tmp_path / f"mnt-{name}"))
            node: ContainerdNode = containerd_nodes(f"nfs{name}", checkpoint_root=mount,
                                                    image=False)  # fmt: skip
            node.arch.state_dir.mkdir(parents=True, exist_ok=True)
            host_identity.write_cache(str(node.arch.state_dir), f"nfs-host-{name}")
            node.import_image(workload_image.oci_archive)
            stack.enter_context(cr.watched(node, tmp_path / f"watch-exits-{name}.out"))
            nodes.append(node)
        yield nodes[0], nodes[1], backing


def test_a_job_migrates_back_and_forth_on_nfs_like_storage(
    nfs_nodes: tuple[ContainerdNode, ContainerdNode, Path], real_runc_binary: Path
) -> None:
    a, b, backing = nfs_nodes
    job = f"nfs-{uuid.uuid4().hex[:8]}"
    env = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": job}
    on_server = backing / cr.NAMESPACE / job
    command = cr.shell_workload(prepare="")
    hosts = [a, b, a, b]
    counted = 0
    generation = 0
    for step, host in enumerate(hosts):
        container_id = f"{job}-{step}"
        host.run_container(cr.WORKLOAD_IMAGE_NAME, container_id, command, env=env)
        rootfs = cr.rootfs_of(real_runc_binary, host, container_id)
        if step:
            assert f"(generation {generation})" in cr.arch_log(host), cr.arch_log(host)[-2000:]
        cr.wait_for(lambda r=rootfs, n=counted: cr.counted(cr.count_log(r)) > n + 2, "counting")
        lines = cr.count_log(rootfs)
        assert lines == ["start", *map(str, range(1, len(lines)))], "restarted or jumped"
        cr.checkpoint(host, container_id)
        host.wait_for_status(container_id, "STOPPED")
        counted = cr.counted(cr.count_log(rootfs))
        published = image_state(on_server)
        assert published.generation == generation + 1, (step, published)
        generation = published.generation
        cr.remove_container(host, container_id)
        forget_containerd_checkpoints(host)
        leftovers = [p.name for p in on_server.parent.iterdir() if p.name.startswith(".")]
        assert leftovers == [], f"step {step}: {leftovers}"
        print(f"step {step}: host {host.name} published generation {generation} "
              f"(count {counted}) through the rename-aside path", flush=True)  # fmt: skip


def test_the_mounts_behave_like_nfs(tmp_path: Path) -> None:
    """What the two-host tests rely on: RENAME_EXCHANGE refused, flock per mount, silly rename
    of an open file that is unlinked."""
    import ctypes
    import errno
    import fcntl

    backing = tmp_path / "server"
    backing.mkdir()
    with nfs_like_mount(backing, tmp_path / "a") as a, nfs_like_mount(backing, tmp_path / "b") as b:
        (a / "x").mkdir()
        (a / "y").mkdir()
        (a / "x" / "f").write_text("data")
        libc = ctypes.CDLL(None, use_errno=True)
        dir_fd = os.open(a, os.O_RDONLY | os.O_DIRECTORY)
        try:
            exchanged = libc.renameat2(dir_fd, b"x", dir_fd, b"y", 2)  # RENAME_EXCHANGE
            assert exchanged == -1 and ctypes.get_errno() == errno.EINVAL
        finally:
            os.close(dir_fd)
        first, second = os.open(a / "x" / "f", os.O_RDONLY), os.open(b / "x" / "f", os.O_RDONLY)
        try:
            fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the other host's lock: free
            os.unlink(a / "x" / "f")
            hidden = os.listdir(backing / "x")
            assert len(hidden) == 1 and hidden[0].startswith(".fuse_hidden"), hidden
        finally:
            os.close(first)
            os.close(second)
        print("NFS-like mounts: RENAME_EXCHANGE -> EINVAL, flock per mount, silly rename "
              f"{hidden[0]}", flush=True)  # fmt: skip
