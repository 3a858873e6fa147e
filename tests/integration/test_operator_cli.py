"""`archctl list` and `archctl checkpoint` against a private containerd node with real runc/CRIU.

checkpoint goes through containerd with an image path: the task ends STOPPED, ARCH's image is
published, containerd's content store gets no checkpoint image, and the container restores.
Containers that did not opt in or do not run are reported and skipped; a real failure (the
checkpoint root read-only) exits 1 with the reason while the container keeps running.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.archctl import archctl, archctl_json, by_name, describe
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

NS = cr.NAMESPACE
OPTED = {"ARCH_ENABLE": "1"}


def start(node: ContainerdNode, image: cr.WorkloadImage, container_id: str, env: dict[str, str],
          real_runc: Path, namespace: str = NS) -> Path:  # fmt: skip
    node.run_container(image.name, container_id, cr.shell_workload(), namespace=namespace, env=env)
    rootfs = cr.rootfs_of(real_runc, node, container_id, namespace)
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, f"{container_id} to count")
    return rootfs


def content_store_checkpoints(node: ContainerdNode, namespace: str = NS) -> list[str]:
    names = node.ctr("images", "ls", "--quiet", namespace=namespace).stdout.split()
    return [name for name in names if "checkpoint" in name]


def test_list_then_checkpoint_named_then_restore(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    rootfs = start(node, workload_image, "opted", OPTED, real_runc_binary)
    start(node, workload_image, "plain", {}, real_runc_binary)
    node.import_image(workload_image.oci_archive, namespace="tenant")
    start(node, workload_image, "tenant-job", {**OPTED, "ARCH_CHECKPOINT_ID": "job-7"},
          real_runc_binary, namespace="tenant")  # fmt: skip

    start(node, workload_image, "replica", {**OPTED, "ARCH_CHECKPOINT_POOL": "web"},
          real_runc_binary)  # fmt: skip

    listed = by_name(archctl_json(node, "list"))
    assert set(listed) == {f"{NS}/opted", f"{NS}/replica", "tenant/tenant-job"}, listed
    assert (listed[f"{NS}/replica"]["pool"], listed[f"{NS}/replica"]["checkpoint_id"]) == (
        "web", None)  # fmt: skip
    assert listed[f"{NS}/opted"]["state"] == "running"
    assert listed[f"{NS}/opted"]["image_present"] is False
    assert listed["tenant/tenant-job"]["checkpoint_id"] == "job-7"
    table = archctl(node, "list")
    assert table.returncode == 0, describe(table)
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "CONTAINER", "CHECKPOINT", "ID/POOL", "STATE", "IMAGE"]
    assert ["tenant", "tenant-job", "job-7", "running", "no"] in [line.split() for line in lines]
    assert [NS, "replica", "pool:web", "running", "no"] in [line.split() for line in lines]

    document = archctl_json(node, "checkpoint", f"{NS}/opted", f"{NS}/plain", f"{NS}/replica")
    results = by_name(document)
    assert results[f"{NS}/opted"]["status"] == "ok", document
    assert results[f"{NS}/opted"]["image_bytes"] > 0
    assert results[f"{NS}/plain"]["status"] == "skipped"
    assert "not ARCH-enabled" in results[f"{NS}/plain"]["reason"]
    assert results[f"{NS}/replica"]["status"] == "ok", document
    assert document["summary"] == {"ok": 2, "failed": 0, "skipped": 1, "not_attempted": 0}
    pool_images = list((node.arch.checkpoint_root / NS / "web").iterdir())
    assert [(path / "metadata.json").is_file() for path in pool_images] == [True], pool_images
    node.wait_for_status("opted", "STOPPED")
    assert node.task_status("plain") == "RUNNING"
    assert node.task_status("tenant-job", namespace="tenant") == "RUNNING"
    assert content_store_checkpoints(node) == []
    image_dir = node.arch.checkpoint_root / NS / "opted"
    assert cr.image_permission_problems(image_dir) == []
    assert list((node.arch.state_dir / ".work").iterdir()) == []  # scratch image paths removed

    relisted = by_name(archctl_json(node, "list"))
    assert relisted[f"{NS}/opted"]["state"] == "stopped"
    assert relisted[f"{NS}/opted"]["image_present"] is True
    again = archctl(node, "checkpoint", f"{NS}/opted")  # table form; stopped: skipped
    assert again.returncode == 0, describe(again)
    assert again.stdout.splitlines()[-2].split()[:2] == ["skipped", f"{NS}/opted"]
    assert "0 ok, 0 failed, 0 not attempted, 1 skipped" in again.stdout

    checkpointed = cr.counted(cr.count_log(rootfs))
    cr.remove_container(node, "opted")
    start(node, workload_image, "opted", OPTED, real_runc_binary)
    restored = cr.rootfs_of(real_runc_binary, node, "opted")
    cr.wait_for(lambda: cr.counted(cr.count_log(restored)) >= checkpointed + 3, "counting on")
    assert cr.count_log(restored).count("start") == 1, "started fresh instead of restoring"


def test_checkpoint_failure_and_missing_container_exit_1(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    start(node, workload_image, "doomed", OPTED, real_runc_binary)
    readonly = node.arch.checkpoint_root / NS
    with cr.tmpfs_mounted(readonly, "1m"):
        procs.run(["mount", "-o", "remount,ro", str(readonly)])
        completed = archctl(node, "checkpoint", "--all")
        missing = archctl(node, "checkpoint", f"{NS}/no-such-container")
    assert completed.returncode == 1, describe(completed)
    row = [line for line in completed.stdout.splitlines() if f"{NS}/doomed" in line][-1]
    assert row.split()[0] == "failed", completed.stdout
    assert "Read-only file system" in completed.stdout, completed.stdout
    assert node.task_status("doomed") == "RUNNING"
    assert missing.returncode == 1, describe(missing)
    assert "no such container" in missing.stdout
