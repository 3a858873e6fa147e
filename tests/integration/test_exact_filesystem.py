"""The filesystem a restore leaves, end to end through real containerd/Docker, runc and CRIU.

- Real files with whiteout-like names (`.wh.NAME`, `.wh..wh..opq`, ...) come back as files, and
  `.wh.keep.txt` does not delete `keep.txt`.
- Restart in place: the same container started again with its writable layer kept (`ctr task
  start` of the same container, `docker start`) after it ran on from a restore and changed its
  files: the restore leaves exactly the checkpoint's filesystem, later files gone.
- A job that rewrote a large file of its image restores although its rollback material is far
  larger than ARCH's state directory (here a 16 MiB tmpfs standing in for /run): nothing of it
  goes there.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.containerd import ContainerdNode
from harness.docker import DOCKER_NAMESPACE, DockerDaemon
from harness.images import BusyboxImage, oci_layout_tar_bytes

from arch.appliance.oci_image import tar_entry

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

ARCH_ENV = {"ARCH_ENABLE": "1"}
BIG_IMAGE_NAME = "docker.io/arch-test/bigfile:latest"
BIG_FILE = "data/big.bin"
BIG_FILE_MIB = 64
STATE_DIR_TMPFS = "16m"

# Real files (and a directory) whose names look like OCI whiteouts; /data/keep.txt is a file of
# the workload image that `.wh.keep.txt` must not delete.
WHITEOUT_LIKE = " && ".join(
    [
        "echo literal > /data/.wh.keep.txt",
        "echo opaque-name > /data/.wh..wh..opq",
        "echo fuse > /data/.wh..wh.cache",
        "mkdir -p /wh/.wh.dir",
        "echo inner > /wh/.wh.dir/inner",
        "echo escape-prefix > /wh/.arch.x",
        "ln /data/.wh.keep.txt /wh/link-to-literal",
    ]
)


def restored_count(node: ContainerdNode, container_id: str) -> int:
    return cr.arch_log(node).count(f"create {cr.NAMESPACE}/{container_id}: restored from")


def test_whiteout_like_names_survive_checkpoint_and_restore(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    command = cr.shell_workload(prepare=f"{cr.FILESYSTEM_CHANGES} && {WHITEOUT_LIKE}")
    node.run_container(workload_image.name, "wh", command, env=ARCH_ENV)
    rootfs = cr.rootfs_of(real_runc_binary, node, "wh")
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, "the loop to count")
    cr.checkpoint(node, "wh")
    node.wait_for_status("wh", "STOPPED")
    before = cr.tree_listing(rootfs, exclude=cr.COUNT_LIVE_FILES)
    cr.remove_container(node, "wh")

    node.run_container(workload_image.name, "wh", command, env=ARCH_ENV)

    restored = cr.rootfs_of(real_runc_binary, node, "wh")
    assert restored_count(node, "wh") == 1, cr.arch_log(node)
    assert cr.listing_differences(before, cr.tree_listing(restored, cr.COUNT_LIVE_FILES)) == []
    assert (restored / "data/keep.txt").read_text() == "kept as it is\n"
    assert (restored / "data/.wh.keep.txt").read_text() == "literal\n"
    assert (restored / "data/.wh..wh..opq").read_text() == "opaque-name\n"
    assert (restored / "wh/.wh.dir/inner").read_text() == "inner\n"


# Changes the restored job makes before it is killed and started again with its layer kept.
LATER_CHANGES = {
    "later.txt": "created",
    "data/keep.txt": "modified (an image file the checkpoint had not changed)",
    "new/deep/er/est/file.txt": "deleted (created before the checkpoint, hard-linked)",
    "data/delete-me.txt": "created again (deleted before the checkpoint)",
    "data/dir-replace/new.txt": "deleted (in a directory made opaque before the checkpoint)",
    "data/keep-link": "deleted (an image symlink)",
}


def change_later(rootfs: Path) -> None:
    (rootfs / "later.txt").write_text("written after the restore\n")
    (rootfs / "data/keep.txt").write_text("changed after the restore\n")
    (rootfs / "new/deep/er/est/file.txt").unlink()
    (rootfs / "data/delete-me.txt").write_text("back again\n")
    (rootfs / "data/dir-replace/new.txt").unlink()
    (rootfs / "data/keep-link").unlink()
    (rootfs / "data").chmod(0o700)


def test_task_start_in_place_leaves_exactly_the_checkpointed_filesystem(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    node.run_container(workload_image.name, "inplace", cr.shell_workload(), env=ARCH_ENV)
    rootfs = cr.rootfs_of(real_runc_binary, node, "inplace")
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, "the loop to count")
    cr.checkpoint(node, "inplace")
    node.wait_for_status("inplace", "STOPPED")
    at_checkpoint = cr.count_log(rootfs)
    before = cr.tree_listing(rootfs, exclude=cr.COUNT_LIVE_FILES)
    node.ctr("task", "delete", "inplace")
    node.ctr("task", "start", "--detach", "inplace")  # the same container: its layer is kept
    assert restored_count(node, "inplace") == 1, cr.arch_log(node)
    cr.wait_for(
        lambda: cr.counted(cr.count_log(rootfs)) > cr.counted(at_checkpoint) + 3,
        "the restored loop to count on",
    )
    change_later(rootfs)
    node.ctr("task", "kill", "--signal", "SIGKILL", "inplace")  # exit 137: the image stays
    node.wait_for_status("inplace", "STOPPED")
    node.ctr("task", "delete", "inplace")

    node.ctr("task", "start", "--detach", "inplace")

    assert restored_count(node, "inplace") == 2, cr.arch_log(node)
    after = cr.tree_listing(rootfs, exclude=cr.COUNT_LIVE_FILES)
    assert cr.listing_differences(before, after) == [], LATER_CHANGES
    cr.wait_for(
        lambda: cr.counted(cr.count_log(rootfs)) > cr.counted(at_checkpoint) + 2,
        "the loop restored again to count on",
    )
    lines = cr.count_log(rootfs)
    assert lines[: len(at_checkpoint)] == at_checkpoint
    assert lines == ["start", *map(str, range(1, len(lines)))], "the count restarted or jumped"


DOCKER_SCRIPT = r"""
echo boot >> /boots
token=$(cat /proc/sys/kernel/random/uuid)
echo "$token" > /token
echo "added by the workload" >> /etc/group
rm /etc/passwd
i=0
while true; do
  i=$((i + 1))
  echo "$token $i" > /state.new
  mv /state.new /state
  sleep 0.1
done
"""
DOCKER_LIVE_FILES = ("state", "state.new")


@pytest.mark.docker
def test_docker_start_in_place_leaves_exactly_the_checkpointed_filesystem(
    docker_daemon: DockerDaemon, test_image: BusyboxImage
) -> None:
    node = docker_daemon.node
    docker_daemon.run_container(
        "job",
        test_image.docker_name,
        ["sh", "-c", DOCKER_SCRIPT],
        detach=True,
        extra_args=["--env", "ARCH_ENABLE=1"],
    )
    container_id = docker_daemon.container_id("job")
    merged = Path(
        docker_daemon.docker(
            "inspect", "--format", "{{.GraphDriver.Data.MergedDir}}", "job"
        ).stdout.strip()
    )
    cr.wait_for(lambda: cr.read_text(merged / "state").strip() != "", "the counter to start")
    node.ctr("task", "checkpoint", container_id, namespace=DOCKER_NAMESPACE, timeout=120)
    wait_docker_exited(docker_daemon, "job")
    docker_daemon.docker("start", "job")  # restore 1: the layer Docker kept is the checkpoint's
    token = cr.read_text(merged / "token")
    before = cr.tree_listing(merged, exclude=DOCKER_LIVE_FILES)
    (merged / "later.txt").write_text("written after the restore\n")
    (merged / "token").write_text("changed after the restore\n")
    (merged / "etc/passwd").write_text("created again after the restore\n")
    (merged / "etc/group").unlink()
    docker_daemon.docker("kill", "job")
    wait_docker_exited(docker_daemon, "job")

    docker_daemon.docker("start", "job")

    log = cr.arch_log(node)
    assert log.count(f"create {DOCKER_NAMESPACE}/{container_id}: restored from") == 2, log
    assert cr.listing_differences(before, cr.tree_listing(merged, DOCKER_LIVE_FILES)) == []
    assert cr.read_text(merged / "boots") == "boot\n"
    assert cr.read_text(merged / "token") == token
    previous = cr.read_text(merged / "state")
    cr.wait_for(lambda: cr.read_text(merged / "state") not in ("", previous), "the count")
    assert cr.read_text(merged / "state").split()[0] == token.strip()


def wait_docker_exited(daemon: DockerDaemon, name: str) -> None:
    def exited() -> bool:
        running = daemon.docker("inspect", "--format", "{{.State.Running}}", name).stdout
        return running.strip() == "false"

    assert procs.wait_until(exited, cr.EVENT_TIMEOUT), f"{name} did not exit"


# -- a rollback larger than the state directory --------------------------------------------


@pytest.fixture(scope="module")
def big_file_image(test_image: BusyboxImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox image plus a 64 MiB /data/big.bin (and /state for the counting loop)."""
    buffer = io.BytesIO(test_image.rootfs_tar.read_bytes())
    with tarfile.open(fileobj=buffer, mode="a", format=tarfile.PAX_FORMAT) as archive:
        for directory in ("data", "state"):
            archive.addfile(tar_entry(directory, tarfile.DIRTYPE, 0o755))
        content = big_content()
        archive.addfile(
            tar_entry(BIG_FILE, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content)
        )
    oci_archive = tmp_path_factory.mktemp("big-image") / "bigfile-oci.tar"
    oci_archive.write_bytes(oci_layout_tar_bytes(buffer.getvalue(), BIG_IMAGE_NAME))
    return oci_archive


def big_content() -> bytes:
    block = hashlib.sha256(b"big file of the image").digest() * 32768  # 1 MiB
    return block * BIG_FILE_MIB


@pytest.fixture
def small_state_dir(node: ContainerdNode) -> Iterator[Path]:
    """ARCH's state directory on a 16 MiB tmpfs (mounted before any container exists)."""
    with cr.tmpfs_mounted(node.arch.state_dir, STATE_DIR_TMPFS) as state_dir:
        try:
            yield state_dir
        finally:
            node.remove_all_containers()


def test_rollback_larger_than_the_state_dir_restores_without_touching_it(
    node: ContainerdNode, big_file_image: Path, small_state_dir: Path, real_runc_binary: Path
) -> None:
    node.import_image(big_file_image)
    rewrite = f"echo appended by the job >> /{BIG_FILE}"
    command = cr.shell_workload(prepare=rewrite)
    node.run_container(BIG_IMAGE_NAME, "big", command, env=ARCH_ENV)
    rootfs = cr.rootfs_of(real_runc_binary, node, "big")
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, "the loop to count")
    cr.checkpoint(node, "big")
    node.wait_for_status("big", "STOPPED")
    at_checkpoint = cr.count_log(rootfs)
    cr.remove_container(node, "big")

    node.run_container(BIG_IMAGE_NAME, "big", command, env=ARCH_ENV)

    restored = cr.rootfs_of(real_runc_binary, node, "big")
    assert restored_count(node, "big") == 1, cr.arch_log(node)
    assert (restored / BIG_FILE).read_bytes() == big_content() + b"appended by the job\n"
    cr.wait_for(
        lambda: cr.counted(cr.count_log(restored)) > cr.counted(at_checkpoint) + 2,
        "the restored loop to count on",
    )
    assert list(small_state_dir.rglob(".arch-rollback-*")) == []
    assert "rollback" not in " ".join(path.name for path in small_state_dir.rglob("*"))
