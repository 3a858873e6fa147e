"""Migration between two containerd "nodes" (own root, state, socket, runc root and ARCH state)
that share one checkpoint directory, as hosts sharing EFS/NFS would.

The container carries ARCH_CHECKPOINT_ID, so that it finds its image under another container id
on another node; it hops A -> B -> A (a second checkpoint to the same image path replaces the
first). In shared-filesystem mode (ARCH_SHAREDFS_HOST_PATH + ARCH_WORKDIR_CONTAINER_PATH) the
image lives under <shared>/checkpoint/<ns>/<id> and the work directory, bind-mounted as the
container's cwd, moves with it.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

Nodes = tuple[ContainerdNode, ContainerdNode]
CHECKPOINT_ID = "job-42"
HELD_LOG = cr.HELD_FILE.lstrip("/")


def test_migration_from_a_to_b_and_back_to_a(
    two_nodes: Nodes,
    workload_image: cr.WorkloadImage,
    shared_checkpoints: Path,
    real_runc_binary: Path,
) -> None:
    a, b = two_nodes
    seed, mib = 4242, 32
    env = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": CHECKPOINT_ID}
    command = cr.memhold_workload(seed, mib, prepare=cr.FILESYSTEM_CHANGES)
    image_dir = shared_checkpoints / cr.NAMESPACE / CHECKPOINT_ID
    a.run_container(workload_image.name, "worker-a", command, env=env)
    rootfs = cr.rootfs_of(real_runc_binary, a, "worker-a")
    cr.wait_for(lambda: len(cr.held_ticks(rootfs)) >= 3, "memhold's third tick on a")

    hops = [(a, "worker-a"), (b, "worker-b"), (a, "worker-a")]
    for (source, source_id), (target, target_id) in zip(hops, hops[1:]):
        cr.checkpoint(source, source_id)
        source.wait_for_status(source_id, "STOPPED")
        held_before = (rootfs / HELD_LOG).read_text()
        listing_before = cr.tree_listing(rootfs, exclude=(HELD_LOG,))
        metadata = json.loads((image_dir / "metadata.json").read_text())
        assert (metadata["checkpoint_id"], metadata["container_id"]) == (CHECKPOINT_ID, source_id)
        assert cr.image_permission_problems(image_dir) == []
        cr.remove_container(source, source_id)

        target.run_container(workload_image.name, target_id, command, env=env)

        rootfs = cr.rootfs_of(real_runc_binary, target, target_id)
        last = cr.ticks(held_before)[-1].counter
        cr.wait_for(lambda r=rootfs, n=last: cr.held_ticks(r)[-1].counter > n + 2, "ticks")
        assert f"create default/{target_id}: restored from {image_dir}" in cr.arch_log(target)
        held = (rootfs / HELD_LOG).read_text()
        assert held.startswith(held_before)
        assert cr.held_log_problems(held, seed, mib) == [], held
        after = cr.tree_listing(rootfs, exclude=(HELD_LOG,))
        assert cr.listing_differences(listing_before, after) == []
    assert sorted(path.name for path in (shared_checkpoints / cr.NAMESPACE).iterdir()) == [
        CHECKPOINT_ID
    ], "leftovers next to the image"


def test_sharedfs_mode_moves_the_image_and_the_work_directory(
    two_nodes: Nodes,
    workload_image: cr.WorkloadImage,
    shared_checkpoints: Path,
    real_runc_binary: Path,
    tmp_path: Path,
) -> None:
    a, b = two_nodes
    sharedfs = tmp_path / "sharedfs"
    sharedfs.mkdir(mode=0o700)
    for node in two_nodes:
        cr.allow_roots(node, sharedfs)
    env = {
        "ARCH_ENABLE": "1",
        "ARCH_SHAREDFS_HOST_PATH": str(sharedfs),
        "ARCH_WORKDIR_CONTAINER_PATH": "/work",
        "ARCH_CHECKPOINT_ID": "sfs-job",
    }
    # Relative paths: the loop writes into its working directory, which must be /work.
    command = ["sh", "-c", f"pwd > where && {cr.count_loop('.')}"]
    workdir = sharedfs / "work" / cr.NAMESPACE / "sfs-job"
    image_dir = sharedfs / "checkpoint" / cr.NAMESPACE / "sfs-job"
    count_log = workdir / "count.log"
    a.run_container(workload_image.name, "sfs", command, env=env)
    cr.wait_for(lambda: cr.counted(cr.read_text(count_log).splitlines()) >= 5, "counting")
    assert (workdir / "where").read_text() == "/work\n"
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700

    cr.checkpoint(a, "sfs")

    a.wait_for_status("sfs", "STOPPED")
    at_checkpoint = cr.read_text(count_log).splitlines()
    assert (image_dir / "metadata.json").is_file(), cr.arch_log(a)
    assert cr.image_permission_problems(image_dir) == []
    assert list(shared_checkpoints.iterdir()) == [], "image written to the checkpoint root"
    cr.remove_container(a, "sfs")
    b.run_container(workload_image.name, "sfs", command, env=env)

    checkpointed = cr.counted(at_checkpoint)
    cr.wait_for(
        lambda: cr.counted(cr.read_text(count_log).splitlines()) >= checkpointed + 5,
        "the restored loop to count on in the shared work directory",
    )
    assert "create default/sfs: restored from" in cr.arch_log(b)
    lines = cr.read_text(count_log).splitlines()
    assert lines[: len(at_checkpoint)] == at_checkpoint
    assert lines == ["start", *map(str, range(1, len(lines)))], "the count restarted or jumped"
    bundle = Path(str(cr.runc_state(real_runc_binary, b, "sfs")["bundle"]))
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["cwd"] == "/work"
    work_mounts = [m for m in spec["mounts"] if m["destination"] == "/work"]
    assert [(m["source"], m["type"]) for m in work_mounts] == [(str(workdir), "bind")]
