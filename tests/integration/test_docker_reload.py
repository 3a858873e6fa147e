"""The role changes daemon.json under a running dockerd without stopping its containers.

The role's own Docker task (configure-docker.yml) and its handler run against a private dockerd
(its daemon.json and pidfile) that runs a container: the dockerd must be reloaded (SIGHUP), not
restarted, so the same dockerd process keeps the same container running, and the new runtime is
usable at once. A restart would stop every container (ECS tasks) unless live-restore is on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from harness import procs
from harness.docker import DockerDaemon
from harness.images import BusyboxImage
from harness.role import run_role_tasks

from tests.conftest import STACK

pytestmark = [pytest.mark.root, pytest.mark.docker]

NEW_RUNTIME = "arch-reloaded"


def runtimes(daemon: DockerDaemon) -> dict[str, object]:
    listed = daemon.docker("info", "--format", "{{json .Runtimes}}").stdout
    found: dict[str, object] = json.loads(listed)
    return found


def test_daemon_json_change_reloads_dockerd_and_keeps_its_containers(
    docker_daemon: DockerDaemon, test_image: BusyboxImage, arch_runc_binary: Path, tmp_path: Path
) -> None:
    docker_daemon.run_container("keeps-running", test_image.docker_name, ["sleep", "1000"],
                                detach=True, runtime="runc")  # fmt: skip
    started_at = docker_daemon.docker(
        "inspect", "--format", "{{.State.StartedAt}}", "keeps-running"
    ).stdout.strip()
    assert docker_daemon.process is not None
    dockerd_pid = docker_daemon.process.pid
    assert NEW_RUNTIME not in runtimes(docker_daemon)

    output = run_role_tasks(
        tmp_path,
        "configure-docker",
        {
            "arch_docker_daemon_json": str(docker_daemon.config_file),
            "arch_docker_pidfile": str(docker_daemon.pidfile),
            "arch_os_dockerd_candidates": [STACK.dockerd],
            "arch_docker_runtime_name": NEW_RUNTIME,
            "arch_runc_shim_path": str(arch_runc_binary),
            "arch_backup_dir": str(tmp_path / "backup"),
            "arch_venv_dir": str(Path(sys.executable).parent.parent),
            "arch_docker_default_runtime": False,
            "arch_was_installed": False,
            "arch_systemd_running": False,
            "arch_in_chroot": False,
        },
    )

    assert "RUNNING HANDLER [arch : Reload the running dockerd (no systemd)]" in output, output
    assert procs.wait_until(lambda: NEW_RUNTIME in runtimes(docker_daemon), 30), output
    assert docker_daemon.process.poll() is None and docker_daemon.process.pid == dockerd_pid
    state = docker_daemon.docker(
        "inspect", "--format", "{{.State.Running}} {{.State.StartedAt}}", "keeps-running"
    ).stdout.split()
    assert state == ["true", started_at]  # the same container, never restarted
    ran = docker_daemon.run_container("via-new-runtime", test_image.docker_name, ["echo", "ok"],
                                      runtime=NEW_RUNTIME)  # fmt: skip
    assert ran.stdout.strip() == "ok"
