"""Two publishers of one location at once: two hosts (two containerd nodes sharing one
checkpoint root, as hosts sharing EFS/NFS) running containers with the same checkpoint id, as
replicas do, through real containerd, runc and CRIU.

Each round starts one container per host with different identities, kept both in the
filesystem (/state/who) and in shell memory ($who, written to /state/live with its count),
checkpoints both at the same moment, and restores the one image left into a third container of
the publisher's job: the image is whole (filesystem and processes from the one container its
metadata names: the count goes on), restores, and no staging or swapped-out directory remains.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

ROUNDS = 3
CHECKPOINT_ID = f"replicated-{uuid.uuid4().hex[:8]}"
ENV = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": CHECKPOINT_ID}


def workload(who: str) -> list[str]:
    return [
        "sh",
        "-c",
        f"who={who}; echo $who > /state/who; i=0; "
        'while true; do i=$((i+1)); echo "$who $i" > /state/live; sleep 0.05; done',
    ]


def live(rootfs: Path) -> tuple[str, int]:
    words = cr.read_text(rootfs / "state/live").split()
    return (words[0], int(words[1])) if len(words) == 2 else ("", 0)


def test_two_hosts_checkpointing_to_one_location_leave_one_whole_image(
    two_nodes: tuple[ContainerdNode, ContainerdNode],
    workload_image: cr.WorkloadImage,
    shared_checkpoints: Path,
    real_runc_binary: Path,
) -> None:
    image_dir = shared_checkpoints / cr.NAMESPACE / CHECKPOINT_ID
    suffix = uuid.uuid4().hex[:8]  # container ids unique on this host (cgroup paths)
    for round_number in range(ROUNDS):
        members = {
            f"a{round_number}-{suffix}": (two_nodes[0], f"A{round_number}"),
            f"b{round_number}-{suffix}": (two_nodes[1], f"B{round_number}"),
        }
        for container_id, (node, who) in members.items():
            node.run_container(workload_image.name, container_id, workload(who), env=ENV)
        for container_id, (node, _) in members.items():
            rootfs = cr.rootfs_of(real_runc_binary, node, container_id)
            cr.wait_for(lambda root=rootfs: live(root)[1] >= 3, f"{container_id} counting")

        checkpoints = [
            subprocess.Popen(node.ctr_argv("task", "checkpoint", container_id),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for container_id, (node, _) in members.items()
        ]  # fmt: skip
        results = [(c.wait(timeout=120), c.communicate()[1]) for c in checkpoints]
        assert [status for status, _ in results] == [0, 0], results

        metadata = json.loads((image_dir / "metadata.json").read_text())
        publisher = metadata["container_id"]
        assert publisher in members, metadata
        publisher_node, who = members[publisher]
        at_checkpoint = live(cr.rootfs_of(real_runc_binary, publisher_node, publisher))[1]
        for container_id, (node, _) in members.items():
            cr.remove_container(node, container_id)
            stale = [n for n in node.ctr("images", "ls", "--quiet").stdout.split()
                     if n.startswith("containerd.io/checkpoint/")]  # fmt: skip
            if stale:
                node.ctr("images", "rm", *stale)

        # The same job (an image restores only into its own command) on either host.
        node = two_nodes[round_number % 2]
        restored_id = f"c{round_number}-{suffix}"
        node.run_container(workload_image.name, restored_id, workload(who), env=ENV)
        assert f"create default/{restored_id}: restored from" in cr.arch_log(node)
        rootfs = cr.rootfs_of(real_runc_binary, node, restored_id)
        cr.wait_for(lambda root=rootfs: live(root)[0] != "", "the restored job to count")
        in_memory, counted = live(rootfs)
        on_disk = cr.read_text(rootfs / "state/who").strip()
        assert in_memory == on_disk == who, (in_memory, on_disk, publisher)
        assert counted >= at_checkpoint, "the count restarted: not the checkpointed processes"
        leftovers = [p.name for p in image_dir.parent.iterdir() if p.name.startswith(".")]
        assert leftovers == [], leftovers
        assert node.remove_container(restored_id) == []  # killed: exit 137, the image stays
        procs.run(["rm", "-rf", str(image_dir)])  # the next round starts both fresh
