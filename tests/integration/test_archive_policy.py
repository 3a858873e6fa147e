"""The archive policy end to end (real containerd, runc and CRIU).

A job is checkpointed; then whoever can write the checkpoint storage (no image key here) adds a
member the job could not have created to the image's tar and recomputes its checksum in
metadata.json: a block device for a root job without CAP_MKNOD; a file in a directory of the
container image that belongs to uid 1000, for a root job without CAP_DAC_OVERRIDE, CAP_FOWNER
and CAP_CHOWN (root does not own that directory, so it could not have written there). The next
create must not apply it: it starts the job fresh and logs why.
(tests/unit/test_archive_policy.py and test_archive_permissions.py cover every rule on crafted
tars.)
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
from harness.images import BusyboxImage, oci_layout_tar_bytes

from arch.appliance.oci_image import tar_entry

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]


@pytest.fixture
def node(node: ContainerdNode) -> ContainerdNode:
    """Unsigned images allowed: a changed image must meet the archive policy, not the signature."""
    allow_unsigned(node.arch.config_file)
    return node


JOB = "policy-job"


def add_block_device(image_dir: Path, name: str) -> None:
    """Append a block device member to the image's tar; metadata.json's checksum follows."""
    device = tarfile.TarInfo(name)
    device.type, device.mode, device.devmajor, device.devminor = tarfile.BLKTYPE, 0o666, 8, 0
    append_member(image_dir, device)


def append_member(image_dir: Path, member: tarfile.TarInfo, content: bytes = b"") -> None:
    """Append a member to the image's tar; metadata.json's checksum and size follow."""
    tar_path = image_dir / "rootfs-diff.tar"
    data = io.BytesIO(tar_path.read_bytes())
    with tarfile.open(fileobj=data, mode="a", format=tarfile.PAX_FORMAT) as archive:
        member.size = len(content)
        archive.addfile(member, io.BytesIO(content))
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


OTHERS_DIRECTORY = "srv/app"  # in the container image: uid 1000's, 0755
OTHERS_IMAGE = "arch-test/others-dir:1"


def import_image_with_others_directory(node: ContainerdNode, base: BusyboxImage,
                                       work: Path) -> None:  # fmt: skip
    """The busybox image plus a directory that belongs to uid 1000 (as many images have for
    their service user)."""
    layer = io.BytesIO(base.rootfs_tar.read_bytes())
    with tarfile.open(fileobj=layer, mode="a", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(tar_entry("srv", tarfile.DIRTYPE, 0o755))
        directory = tar_entry(OTHERS_DIRECTORY, tarfile.DIRTYPE, 0o755)
        directory.uid = directory.gid = 1000
        directory.uname = directory.gname = ""
        archive.addfile(directory)
    archive_path = work / "others-dir-oci.tar"
    archive_path.write_bytes(oci_layout_tar_bytes(layer.getvalue(), OTHERS_IMAGE))
    node.import_image(archive_path)


def test_a_file_in_a_directory_the_job_may_not_write_is_refused(
    node: ContainerdNode, test_image: BusyboxImage, real_runc_binary: Path, tmp_path: Path
) -> None:
    """Parent-directory permission through the real stack: root without CAP_DAC_OVERRIDE,
    CAP_FOWNER and CAP_CHOWN cannot write into uid 1000's 0755 directory; before this rule an
    image could put a root-owned file there (its owner was the job's uid)."""
    cr.store_uncompressed(node)  # the tar is edited by its uncompressed name
    import_image_with_others_directory(node, test_image, tmp_path)
    command = cr.shell_workload(prepare="mkdir -p /state")
    run = ["--cap-drop", "CAP_DAC_OVERRIDE", "--cap-drop", "CAP_FOWNER", "--cap-drop",
           "CAP_CHOWN"]  # fmt: skip
    node.run_container(OTHERS_IMAGE, JOB, command, env={"ARCH_ENABLE": "1"}, extra_args=run)
    rootfs = cr.rootfs_of(real_runc_binary, node, JOB)
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, "the job to count to 3")
    cr.checkpoint(node, JOB)
    cr.remove_container(node, JOB)
    image_dir = node.arch.checkpoint_root / "default" / JOB
    append_member(image_dir, tar_entry(f"{OTHERS_DIRECTORY}/run.sh", tarfile.REGTYPE, 0o755),
                  b"#!/bin/sh\nexec /state/payload\n")  # fmt: skip

    node.run_container(OTHERS_IMAGE, JOB, command, env={"ARCH_ENABLE": "1"}, extra_args=run)
    fresh = cr.rootfs_of(real_runc_binary, node, JOB)
    cr.wait_for(lambda: cr.counted(cr.count_log(fresh)) >= 1, "the fresh job to count")
    log = cr.arch_log(node)
    expected = (
        f"create default/{JOB}: restore refused, starting fresh: filesystem changes not applied: "
        f"refusing '{OTHERS_DIRECTORY}/run.sh': a change in '{OTHERS_DIRECTORY}', a directory uid "
        "0 may not write, which the job could not have changed (archive policy)"
    )
    print(next((line for line in log.splitlines() if "refusing 'srv/app/run.sh'" in line), log))
    assert expected in log, log
    assert not (fresh / OTHERS_DIRECTORY / "run.sh").exists()
    assert cr.counted(cr.count_log(fresh)) < 100  # counting from 1 again, not from the image
