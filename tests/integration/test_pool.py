"""ARCH_CHECKPOINT_POOL on two containerd "nodes" sharing one checkpoint directory.

Every round, three replicas of one "task definition" (same env, same command) are created at
the same moment, two on node a and one on node b, while the pool holds two images: each image
goes to exactly one of them, each restores its own image (the token its first run wrote and the
count it had reached), and the third starts fresh. Then the two restored ones are checkpointed
into the pool again for the next round. At the end, exit 0 removes a claimed image and a failure
puts it back into the pool.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness.containerd import ContainerdNode

from arch import metrics
from arch.checkpoint.storage import pool

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

Nodes = tuple[ContainerdNode, ContainerdNode]
POOL = "web-service"
ENV = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_POOL": POOL}
# A replica: on its first start it draws a token (kept in its filesystem), then counts.
COMMAND = [
    "sh",
    "-c",
    "cat /proc/sys/kernel/random/uuid > /state/token && " + cr.count_loop(),
]
ROUNDS = 3


class Member:
    def __init__(self, node: ContainerdNode, container_id: str, rootfs: Path) -> None:
        self.node, self.container_id, self.rootfs = node, container_id, rootfs

    @property
    def token(self) -> str:
        return cr.read_text(self.rootfs / "state/token").strip()

    def count_log(self) -> list[str]:
        return cr.count_log(self.rootfs)


def start_at_once(placements: list[tuple[ContainerdNode, str]], real_runc: Path) -> list[Member]:
    """Create the containers from parallel threads released together."""
    barrier = threading.Barrier(len(placements))
    errors: list[BaseException] = []

    def run(node: ContainerdNode, container_id: str) -> None:
        try:
            barrier.wait()
            node.run_container(cr.WORKLOAD_IMAGE_NAME, container_id, COMMAND, env=ENV)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=placement) for placement in placements]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    members = [
        Member(node, container_id, cr.rootfs_of(real_runc, node, container_id))
        for node, container_id in placements
    ]
    for member in members:
        cr.wait_for(lambda m=member: m.token and cr.counted(m.count_log()) > 2, "counting")
    return members


def restored_from(member: Member) -> str | None:
    """The claimed image the member's create restored from, per its node's ARCH log."""
    prefix = f"create default/{member.container_id}: restored from "
    for line in cr.arch_log(member.node).splitlines():
        if prefix in line:
            return line.split(prefix, 1)[1].split(" (generation ", 1)[0].strip()
    return None


def pool_names(pool_dir: Path) -> list[str]:
    return sorted(path.name for path in pool_dir.iterdir()) if pool_dir.exists() else []


def test_replicas_never_share_an_image_and_each_restores_its_own(
    two_nodes: Nodes, shared_checkpoints: Path, real_runc_binary: Path
) -> None:
    a, b = two_nodes
    pool_dir = shared_checkpoints / cr.NAMESPACE / POOL
    # Round 0: an empty pool, two replicas start fresh and are checkpointed into it.
    members = start_at_once([(a, "r0-a"), (b, "r0-b")], real_runc_binary)
    assert [restored_from(m) for m in members] == [None, None]
    saved = checkpoint_into_pool(members, pool_dir)

    for round_number in range(1, ROUNDS + 1):
        placements = [(a, f"r{round_number}-a1"), (a, f"r{round_number}-a2"),
                      (b, f"r{round_number}-b")]  # fmt: skip
        members = start_at_once(placements, real_runc_binary)
        sources = [restored_from(member) for member in members]
        restored = [m for m, source in zip(members, sources) if source is not None]
        fresh = [m for m, source in zip(members, sources) if source is None]
        assert len(restored) == 2 and len(fresh) == 1, sources
        claimed = sorted(str(source) for source in sources if source is not None)
        assert len(set(claimed)) == 2, f"two containers restored the same image: {claimed}"
        assert sorted(m.token for m in restored) == sorted(saved), "restored from other images"
        for member in restored:
            before = saved[member.token]
            at_checkpoint = len(before)
            cr.wait_for(lambda m=member, n=at_checkpoint: len(m.count_log()) > n + 2, "counting on")
            assert member.count_log()[: len(before)] == before, "the count did not go on"
        assert fresh[0].token not in saved and fresh[0].count_log()[0] == "start"
        assert "no unclaimed image in pool" in cr.arch_log(fresh[0].node)
        # Both images are claimed (renamed), none is left for a fourth replica.
        assert pool.unclaimed_entries(str(pool_dir)) == []
        assert sorted(str(pool_dir / n) for n in pool_names(pool_dir)) == claimed
        finish(fresh[0], "5")  # holds no image: nothing to remove or release
        saved = checkpoint_into_pool(restored, pool_dir)

    # Exit 0 removes the claimed image; a failure releases it into the pool under its old name.
    finishing = start_at_once([(a, "end-a"), (b, "end-b")], real_runc_binary)
    entries = {m.container_id: Path(str(restored_from(m))) for m in finishing}
    for member, code in zip(finishing, ("0", "3")):
        finish(member, code)
    released = pool.parse_claimed(entries["end-b"].name)
    assert released is not None
    assert pool_names(pool_dir) == [released.entry]
    # Both nodes counted their checkpoints and restores in their metrics files.
    totals = {"checkpoint": 2 + 2 * ROUNDS, "restore": 2 * ROUNDS + 2}
    for operation, expected in totals.items():
        key = f'arch_{operation}s_total{{result="ok"}}'
        counted = sum(metrics.read_samples(str(n.arch.metrics_file)).get(key, 0) for n in two_nodes)
        assert counted == expected, key


def finish(member: Member, exit_code: str) -> None:
    """Let the member's loop exit with `exit_code`, then delete it (the watcher saw the exit)."""
    (member.rootfs / "state/exit").write_text(exit_code)
    member.node.wait_for_status(member.container_id, "STOPPED")
    # delete waits only briefly for the exit status; on a loaded machine the watcher may be later.
    recorded = member.node.arch.state_dir / cr.NAMESPACE / member.container_id / "exit_status"
    cr.wait_for(recorded.exists, f"the exit status of {member.container_id}")
    cr.remove_container(member.node, member.container_id)


def drop_containerd_checkpoint_images(node: ContainerdNode) -> None:
    """containerd 1.6 keeps a copy of each checkpoint in its content store; replicas' copies
    share blobs, and a second checkpoint then fails with "already exists" (ARCH needs none)."""
    names = node.ctr("images", "ls", "--quiet").stdout.split()
    copies = [name for name in names if name.startswith("containerd.io/checkpoint/")]
    if copies:
        node.ctr("images", "rm", "--sync", *copies)


def checkpoint_into_pool(members: list[Member], pool_dir: Path) -> dict[str, list[str]]:
    """Checkpoint each member; returns token -> count log at the checkpoint."""
    saved = {}
    before = set(pool.unclaimed_entries(str(pool_dir)))
    for member in members:
        cr.checkpoint(member.node, member.container_id)
        member.node.wait_for_status(member.container_id, "STOPPED")
        drop_containerd_checkpoint_images(member.node)
        saved[member.token] = member.count_log()
        cr.remove_container(member.node, member.container_id)
    entries = set(pool.unclaimed_entries(str(pool_dir)))
    assert len(entries - before) == len(members), pool_names(pool_dir)
    assert pool_names(pool_dir) == sorted(entries), "claimed or leftover entries remain"
    for entry in entries:
        assert cr.image_permission_problems(pool_dir / entry) == []
    return saved
