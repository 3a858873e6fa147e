"""Uninstalling ARCH (arch_state: absent) refuses while ARCH containers still run.

Their shims call arch-runc for every later runc call (kill, delete, checkpoint): pulling it out
from under them would break those containers. The role's uninstall tasks run against a private
containerd node with one running ARCH container: the play must fail before it removes anything,
naming the container, and arch-runc must still serve that container afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from harness.containerd import ContainerdNode
from harness.images import BusyboxImage
from harness.role import run_role_tasks

pytestmark = [pytest.mark.root, pytest.mark.containerd]

PRIVATE_PATHS = (
    "arch_home", "arch_src_dir", "arch_runc_shim_path", "arch_config_dir", "arch_backup_dir",
    "arch_state_dir", "arch_exit_watch_pidfile", "arch_containerd_pidfile",
    "arch_containerd_config", "arch_docker_daemon_json", "arch_checkpoint_root",
)  # fmt: skip


def test_uninstall_refuses_while_an_arch_container_runs(
    containerd_node: ContainerdNode, test_image: BusyboxImage, tmp_path: Path
) -> None:
    containerd_node.run_container(test_image.name, "still-running", ["sleep", "1000"],
                                  env={"ARCH_ENABLE": "1"})  # fmt: skip
    containerd_node.wait_for_status("still-running", "RUNNING")
    archctl = Path(sys.executable).parent / "archctl"  # the archctl of the code under test
    sentinel = tmp_path / "venv-sentinel"
    sentinel.mkdir()

    output = run_role_tasks(
        tmp_path,
        "uninstall",
        {
            "arch_archctl_path": str(archctl),
            "arch_config_file": str(containerd_node.arch.config_file),
            "arch_containerd_socket": containerd_node.address,
            "arch_venv_dir": str(sentinel),
            "arch_systemd_running": False,
            # Should the guard ever let the play go on: the host's files stay out of reach.
            **{name: str(tmp_path / name) for name in PRIVATE_PATHS},
        },
        succeeds=False,
    )

    assert "ARCH containers still run through arch-runc (default/still-running)" in output, output
    assert sentinel.is_dir()  # nothing was removed
    assert containerd_node.task_status("still-running") == "RUNNING"
    containerd_node.ctr("task", "kill", "--signal", "SIGKILL", "still-running")
    containerd_node.wait_for_status("still-running", "STOPPED")
