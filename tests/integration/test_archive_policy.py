"""The archive policy end to end (real containerd, runc and CRIU).

A root job without CAP_MKNOD is checkpointed; then whoever can write the checkpoint storage
(no image key here) adds a block device node to the image's tar and recomputes its checksum in
metadata.json. The next create must not create the device: it starts the job fresh and logs
why. (tests/unit/test_archive_policy.py covers every case of the policy on crafted tars.)
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness.arch_host import allow_unsigned
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]


@pytest.fixture
def node(node: ContainerdNode) -> ContainerdNode:
    """Unsigned images allowed: a changed image must meet the archive policy, not the signature."""
    allow_unsigned(node.arch.config_file)
    return node


JOB = "policy-job"


def add_block_device(image_dir: Path, name: str) -> None:
    """Append a block device member to the image's tar; metadata.json's checksum follows."""
    tar_path = image_dir / "rootfs-diff.tar"
    data = io.BytesIO(tar_path.read_bytes())
    with tarfile.open(fileobj=data, mode="a", format=tarfile.PAX_FORMAT) as archive:
        device = tarfile.TarInfo(name)
        device.type, device.mode, device.devmajor, device.devminor = tarfile.BLKTYPE, 0o666, 8, 0
        archive.addfile(device)
    tar_path.write_bytes(data.getvalue())
    metadata_path = image_dir / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["filesystem"]["sha256"] = hashlib.sha256(data.getvalue()).hexdigest()
    metadata["filesystem"]["size"] = len(data.getvalue())
    metadata_path.write_text(json.dumps(metadata))


def test_a_device_node_the_job_could_not_create_is_refused(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    cr.store_uncompressed(node)  # the tar is edited by its uncompressed name
    command = cr.shell_workload(prepare="mkdir -p /state")
    run = ["--cap-drop", "CAP_MKNOD"]
    node.run_container(workload_image.name, JOB, command, env={"ARCH_ENABLE": "1"},
                       extra_args=run)  # fmt: skip
    rootfs = cr.rootfs_of(real_runc_binary, node, JOB)
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, "the job to count to 3")
    cr.checkpoint(node, JOB)
    cr.remove_container(node, JOB)
    image_dir = node.arch.checkpoint_root / "default" / JOB
    add_block_device(image_dir, "state/disk")

    node.run_container(workload_image.name, JOB, command, env={"ARCH_ENABLE": "1"},
                       extra_args=run)  # fmt: skip
    fresh = cr.rootfs_of(real_runc_binary, node, JOB)
    cr.wait_for(lambda: cr.counted(cr.count_log(fresh)) >= 1, "the fresh job to count")
    log = cr.arch_log(node)
    assert (
        f"create default/{JOB}: restore refused, starting fresh: filesystem changes not applied: "
        "refusing 'state/disk': a block device without CAP_MKNOD, which the job could not have "
        "created (archive policy)"
    ) in log, log
    assert not (fresh / "state" / "disk").exists()
    assert cr.count_log(fresh) == ["start", *cr.count_log(fresh)[1:]]
    assert cr.counted(cr.count_log(fresh)) < 100  # counting from 1 again, not from the image
