"""The symlink swap, carried out by the container itself, through real containerd, runc and CRIU.

A team directory inside an allowed root is bind-mounted into the container at /team, and the
container's ARCH paths point into it. Between create and checkpoint (or before its exit 0) the
container replaces a directory on the image's path with a symlink to a host directory outside
every allowed root. ARCH must then write and remove nothing there: the checkpoint fails with the
container still running, the delete keeps whatever is there, a later create with the shared work
directory is refused, and the reason is logged each time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

CHECKPOINT_ID = "job"
SWAPPED_MARK = "swapped"
REFUSAL = "does not resolve beneath its root"


class Attack:
    """The roots, the team directory bind-mounted into the container, and the victim outside."""

    def __init__(self, node: ContainerdNode, image: str, tmp_path: Path) -> None:
        self.node = node
        self.image = image
        self.allowed = tmp_path / "shared"
        self.team = self.allowed / "team1"
        self.team.mkdir(parents=True, mode=0o700)
        cr.allow_roots(node, self.allowed)
        self.outside = tmp_path / "outside"
        # What the attacker would like ARCH to replace or remove: <outside>/<ns>/<id>.
        victim = self.outside / cr.NAMESPACE / CHECKPOINT_ID
        victim.mkdir(parents=True)
        (victim / "precious").write_text("not ARCH's\n")
        self.before = cr.tree_listing(self.outside)

    def run(self, container_id: str, script: str, env: dict[str, str], then: str) -> None:
        """Start the container with /team bound: it runs `script`, creates /team/swapped, then
        runs `then`."""
        self.start(container_id, f"{script} && touch /team/{SWAPPED_MARK} && {then}", env)
        self.wait_for_swap()

    def start(self, container_id: str, script: str, env: dict[str, str]) -> None:
        self.node.run_container(
            self.image,
            container_id,
            ["sh", "-c", script],
            env={"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": CHECKPOINT_ID, **env},
            extra_args=["--mount", f"type=bind,src={self.team},dst=/team,options=rbind:rw"],
        )

    def wait_for_swap(self) -> None:
        cr.wait_for(lambda: (self.team / SWAPPED_MARK).exists(), "the container's swap")

    def outside_changes(self) -> list[str]:
        return cr.listing_differences(self.before, cr.tree_listing(self.outside))


@pytest.fixture
def attack(node: ContainerdNode, workload_image: cr.WorkloadImage, tmp_path: Path) -> Attack:
    return Attack(node, workload_image.name, tmp_path)


# The swap, as the container runs it: its checkpoint directory (ARCH_CHECKPOINT_HOST_PATH) or
# the namespace directory below it becomes a symlink to the victim's host path.
SWAPS = {
    "checkpoint-dir": "rm -rf /team/ckpt && ln -s {outside} /team/ckpt",
    "namespace-dir": "mkdir -p /team/ckpt && rm -rf /team/ckpt/{ns} && ln -s {outside} "
    "/team/ckpt/{ns}",
}


def swap_script(which: str, attack: Attack) -> str:
    target = attack.outside if which == "checkpoint-dir" else attack.outside / cr.NAMESPACE
    return SWAPS[which].format(outside=target, ns=cr.NAMESPACE)


@pytest.mark.parametrize("which", sorted(SWAPS))
def test_checkpoint_after_a_symlink_swap_fails_and_writes_nothing_outside(
    attack: Attack, which: str
) -> None:
    env = {"ARCH_CHECKPOINT_HOST_PATH": str(attack.team / "ckpt")}
    attack.run("swapper", swap_script(which, attack), env, then="exec sleep 1000")

    result = cr.checkpoint(attack.node, "swapper", check=False)

    assert result.returncode != 0, procs.describe(result)
    assert attack.outside_changes() == []
    assert attack.node.task_status("swapper") == "RUNNING"
    log = cr.arch_log(attack.node)
    assert "checkpoint failed, the container keeps running" in log
    assert REFUSAL in log


@pytest.mark.parametrize("which", sorted(SWAPS))
def test_delete_after_exit_0_removes_nothing_outside(attack: Attack, which: str) -> None:
    """The instance is restored from its own image, so its exit 0 removes that image; once
    restored, it swaps the image's path for a symlink and exits 0."""
    env = {"ARCH_CHECKPOINT_HOST_PATH": str(attack.team / "ckpt")}
    script = (
        "while [ ! -e /team/go ]; do sleep 0.2; done && "
        f"{swap_script(which, attack)} && touch /team/{SWAPPED_MARK} && exit 0"
    )
    attack.start("leaver", script, env)
    attack.node.wait_for_status("leaver", "RUNNING")
    cr.checkpoint(attack.node, "leaver")
    cr.remove_container(attack.node, "leaver")
    attack.start("leaver", script, env)
    assert "create default/leaver: restored from" in cr.arch_log(attack.node)

    (attack.team / "go").touch()
    attack.wait_for_swap()
    attack.node.wait_for_status("leaver", "STOPPED")
    attack.node.ctr("task", "delete", "leaver")

    assert attack.outside_changes() == []
    log = cr.arch_log(attack.node)
    assert "delete default/leaver: exited 0, image" in log and "kept" in log, log
    assert REFUSAL in log


def test_shared_work_directory_is_not_made_through_a_symlink(attack: Attack) -> None:
    """The swap made before the next create is seen when the location is decided (the swap
    racing that decision is refused when the directory is made: tests/unit/test_lifecycle)."""
    swap = f"mkdir -p /team/sfs/work && ln -s {attack.outside} /team/sfs/work/{cr.NAMESPACE}"
    attack.run("swapper", swap, {}, then="exec sleep 1000")
    env = {
        "ARCH_ENABLE": "1",
        "ARCH_SHAREDFS_HOST_PATH": str(attack.team / "sfs"),
        "ARCH_WORKDIR_CONTAINER_PATH": "/work",
        "ARCH_CHECKPOINT_ID": CHECKPOINT_ID,
    }

    created = attack.node.run_container(
        attack.image, "worker", ["sleep", "1000"], env=env, check=False
    )

    assert created.returncode != 0, procs.describe(created)
    assert "ARCH_SHAREDFS_HOST_PATH" in created.stderr, procs.describe(created)
    assert attack.node.task_status("worker") is None
    assert attack.outside_changes() == []
    assert "create default/worker: ARCH_SHAREDFS_HOST_PATH" in cr.arch_log(attack.node)
