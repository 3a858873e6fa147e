"""Spot interruption notices end to end: a real IMDSv2 server on 127.0.0.1 (tests/imds_server.py),
`archctl spot-watch`, real containerd, dockerd, runc and CRIU.

- No notice: nothing happens. A notice: every running ARCH container, started through containerd
  and through Docker, is checkpointed and stopped (containers that did not opt in keep running),
  and each restores.
- While the notice is active, `docker stop` of an ARCH container ends in a restorable image.
- The reclaim drill: node A runs a Batch-like job (AWS_BATCH_JOB_ID) and gets a notice; the job
  is checkpointed to shared storage; node B creates the job again (same job id, new container
  id) and it continues where it stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.archctl import archctl, describe
from harness.containerd import ContainerdNode
from harness.docker import DOCKER_NAMESPACE, DockerDaemon
from harness.images import BusyboxImage
from test_checkpoint_docker import run_counter, wait_for_counter, wait_until_exited

from arch.spot.notice import notice_active, read_marker, remove_marker, write_marker
from tests.imds_server import ImdsServer

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu, pytest.mark.docker]

NodeFactory = Callable[..., ContainerdNode]
NS = cr.NAMESPACE
OPTED = {"ARCH_ENABLE": "1"}
COUNT = ["sh", "-c", "mkdir -p /state && " + cr.count_loop()]



@contextlib.contextmanager
def notice_cleared(node: ContainerdNode) -> Iterator[None]:
    """Remove the notice marker at the end, so that teardown's kills are plain kills again."""
    try:
        yield
    finally:
        remove_marker(str(node.arch.state_dir))


def spot_watch_once(node: ContainerdNode, imds: ImdsServer) -> str:
    completed = archctl(node, "spot-watch", "--once", "--endpoint", imds.endpoint)
    assert completed.returncode == 0, describe(completed)
    return completed.stderr


def run_counting(node: ContainerdNode, image: str, container_id: str, env: dict[str, str],
                 real_runc: Path) -> Path:  # fmt: skip
    node.run_container(image, container_id, COUNT, env=env)
    rootfs = cr.rootfs_of(real_runc, node, container_id)
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, f"{container_id} to count")
    return rootfs


def test_notice_checkpoints_containerd_and_docker_containers_and_docker_stop_too(
    working_criu: None,
    docker_daemon: DockerDaemon,
    test_image: BusyboxImage,
    imds: ImdsServer,
    real_runc_binary: Path,
) -> None:
    node = docker_daemon.node
    node.import_image(test_image.oci_archive)
    rootfs = run_counting(node, test_image.name, "svc", OPTED, real_runc_binary)
    run_counting(node, test_image.name, "plain", {}, real_runc_binary)
    web_id = run_counter(docker_daemon, test_image, "web", opted_in=True)
    run_counter(docker_daemon, test_image, "web-plain", opted_in=False)
    token, _ = wait_for_counter(docker_daemon, "web", above=2)
    wait_for_counter(docker_daemon, "web-plain", above=2)

    with notice_cleared(node):
        # No notice: nothing happens.
        spot_watch_once(node, imds)
        assert not notice_active(str(node.arch.state_dir))
        assert node.task_status("svc") == "RUNNING"
        assert node.task_status(web_id, DOCKER_NAMESPACE) == "RUNNING"
        assert not (node.arch.checkpoint_root / NS).exists()

        imds.mode = "notice"
        log = spot_watch_once(node, imds)

        marker = read_marker(str(node.arch.state_dir))
        assert marker is not None and marker["outcome"]["ok"] is True, (marker, log)
        assert marker["outcome"]["summary"] == {"ok": 2, "failed": 0, "skipped": 0,
                                                "not_attempted": 0}
        node.wait_for_status("svc", "STOPPED")
        assert wait_until_exited(docker_daemon, "web")["ExitCode"] == 137
        assert node.task_status("plain") == "RUNNING"
        assert docker_daemon.docker("inspect", "-f", "{{.State.Running}}", "web-plain").stdout \
            .strip() == "true"  # fmt: skip
        web_image = node.arch.checkpoint_root / DOCKER_NAMESPACE / web_id
        assert (web_image / "metadata.json").is_file(), cr.arch_log(node)
        assert (node.arch.checkpoint_root / NS / "svc" / "metadata.json").is_file()

        # While the notice is active this host restores nothing: the job's image is for the
        # next host, and the job is not started here.
        checkpointed = cr.counted(cr.count_log(rootfs))
        cr.remove_container(node, "svc")
        refused = node.run_container(test_image.name, "svc", COUNT, env=OPTED, check=False)
        assert refused.returncode != 0
        assert "a Spot notice is active on this host" in refused.stderr, refused.stderr
        assert not node.remove_container("svc")

        # The notice goes away (withdrawn): each restores, ctr creates svc again, docker start
        # creates web again.
        imds.mode = "none"
        spot_watch_once(node, imds)
        assert not notice_active(str(node.arch.state_dir))
        restored = run_counting(node, test_image.name, "svc", OPTED, real_runc_binary)
        cr.wait_for(lambda: cr.counted(cr.count_log(restored)) > checkpointed + 2, "svc counts on")
        assert cr.count_log(restored).count("start") == 1, "svc started fresh"
        docker_daemon.docker("start", "web")
        assert wait_for_counter(docker_daemon, "web", above=0)[0] == token, "web started fresh"

        # A notice again: `docker stop` of an ARCH container is a checkpoint too, and a
        # container that did not opt in just stops.
        write_marker(str(node.arch.state_dir), {"notice": imds.notice})
        first_image = (web_image / "metadata.json").stat().st_ino  # kept after the restore
        _, counter_before_stop = wait_for_counter(docker_daemon, "web", above=0)
        docker_daemon.docker("stop", "--time", "30", "web", timeout=120)
        assert wait_until_exited(docker_daemon, "web")["ExitCode"] == 137
        assert (web_image / "metadata.json").stat().st_ino != first_image, cr.arch_log(node)
        assert f"kill {DOCKER_NAMESPACE}/{web_id} during a Spot notice: checkpointed" in \
            cr.arch_log(node)  # fmt: skip
        docker_daemon.docker("stop", "--time", "1", "web-plain")
        plain_id = docker_daemon.container_id("web-plain")
        assert not (node.arch.checkpoint_root / DOCKER_NAMESPACE / plain_id).exists()

        remove_marker(str(node.arch.state_dir))  # restored elsewhere; here, once it is gone
        docker_daemon.docker("start", "web")
        restored_token, counter = wait_for_counter(docker_daemon, "web", above=0)
        assert restored_token == token, "web started fresh after docker stop during the notice"
        assert counter >= counter_before_stop


@pytest.fixture
def two_nodes(
    working_criu: None, containerd_nodes: NodeFactory, test_image: BusyboxImage, tmp_path: Path
) -> tuple[ContainerdNode, ContainerdNode, Path]:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    a = containerd_nodes("a", checkpoint_root=shared)
    b = containerd_nodes("b", checkpoint_root=shared)
    return a, b, shared


def test_reclaim_drill_batch_job_moves_to_another_node(
    two_nodes: tuple[ContainerdNode, ContainerdNode, Path],
    test_image: BusyboxImage,
    imds: ImdsServer,
    real_runc_binary: Path,
) -> None:
    a, b, shared = two_nodes
    job = {**OPTED, "AWS_BATCH_JOB_ID": "3f6e2a1c-batch-job"}
    rootfs_a = run_counting(a, test_image.name, "attempt-1-on-a", job, real_runc_binary)
    imds.mode = "notice"

    with notice_cleared(a):
        spot_watch_once(a, imds)
        a.wait_for_status("attempt-1-on-a", "STOPPED")
    image = shared / NS / "3f6e2a1c-batch-job"
    assert (image / "metadata.json").is_file(), cr.arch_log(a)
    stopped_at = cr.counted(cr.count_log(rootfs_a))
    cr.remove_container(a, "attempt-1-on-a")  # node A goes away

    rootfs_b = run_counting(b, test_image.name, "attempt-2-on-b", job, real_runc_binary)

    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs_b)) > stopped_at + 2, "the job on B")
    log_b = cr.count_log(rootfs_b)
    assert log_b.count("start") == 1, "the job started over on B"
    numbers = [int(line) for line in log_b if line.isdigit()]
    assert numbers == list(range(1, numbers[-1] + 1)), "the count skipped or repeated"
    assert procs.wait_until(lambda: "restored from" in cr.arch_log(b), 10)
