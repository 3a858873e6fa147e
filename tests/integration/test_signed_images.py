"""Signed images between two containerd nodes that share one checkpoint directory and one key.

Whoever can write the shared storage tries to control a restore: a tar changed with its checksum
recomputed in metadata.json, an image without signature, a CRIU file changed in place. Each is
refused (the container starts fresh, the reason in the log); an untouched signed image restores
on the node that made it and on the other one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness.arch_host import set_config_value
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

Nodes = tuple[ContainerdNode, ContainerdNode]
EVIL_FILE = "evil"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "image.key"
    path.write_text(os.urandom(32).hex() + "\n")
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def signing_nodes(two_nodes: Nodes, key_file: Path) -> Nodes:
    """The two nodes sharing one checkpoint root (conftest), both given the same key."""
    for node in two_nodes:
        set_config_value(node.arch.config_file, "image_key_file", json.dumps(str(key_file)))
        cr.store_uncompressed(node)  # tampering names uncompressed files
    return two_nodes


def run_job(node: ContainerdNode, image: cr.WorkloadImage, container_id: str, job: str) -> None:
    env = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": job}
    node.run_container(image.name, container_id, cr.shell_workload(), env=env)


def checkpoint_job(node: ContainerdNode, container_id: str, real_runc: Path) -> int:
    """Checkpoint once the loop counts; the container is removed after. Returns the count."""
    rootfs = cr.rootfs_of(real_runc, node, container_id)
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, "the loop to count")
    cr.checkpoint(node, container_id)
    node.wait_for_status(container_id, "STOPPED")
    counted = cr.counted(cr.count_log(rootfs))
    cr.remove_container(node, container_id)
    return counted


def test_a_signed_image_restores_on_the_other_node_and_back(
    signing_nodes: Nodes,
    workload_image: cr.WorkloadImage,
    shared_checkpoints: Path,
    real_runc_binary: Path,
) -> None:
    """a signs, b verifies and restores; b signs, a verifies and restores (one checkpoint per
    node: containerd refuses a second, identical checkpoint record on one node)."""
    a, b = signing_nodes
    image_dir = shared_checkpoints / cr.NAMESPACE / "signed"
    run_job(a, workload_image, "signed-first", "signed")
    checkpoint_job(a, "signed-first", real_runc_binary)
    assert (image_dir / "metadata.sig").read_text().startswith("hmac-sha256-v2:")
    listed = json.loads((image_dir / "metadata.json").read_text())["process"]["criu_files"]
    assert listed and all(len(entry["sha256"]) == 64 for entry in listed)

    run_job(b, workload_image, "signed-moved", "signed")
    assert f"create default/signed-moved: restored from {image_dir}" in cr.arch_log(b)
    checkpointed = checkpoint_job(b, "signed-moved", real_runc_binary)
    run_job(a, workload_image, "signed-back", "signed")
    assert f"create default/signed-back: restored from {image_dir}" in cr.arch_log(a)
    rootfs = cr.rootfs_of(real_runc_binary, a, "signed-back")
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) > checkpointed + 3, "counting on a")
    assert cr.count_log(rootfs).count("start") == 1


def tamper_tar(image_dir: Path) -> None:
    """Add a file to the tar and recompute its sha256 and size in metadata.json."""
    tar_path = image_dir / "rootfs-diff.tar"
    with tarfile.open(tar_path, "a", format=tarfile.PAX_FORMAT) as archive:
        member = tarfile.TarInfo(EVIL_FILE)
        payload = b"#!/bin/sh\necho owned\n"
        member.size, member.mode = len(payload), 0o4755
        archive.addfile(member, io.BytesIO(payload))
    metadata_path = image_dir / "metadata.json"
    document = json.loads(metadata_path.read_text())
    data = tar_path.read_bytes()
    document["filesystem"].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    metadata_path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def remove_signature(image_dir: Path) -> None:
    (image_dir / "metadata.sig").unlink()


def tamper_criu_file(image_dir: Path) -> None:
    """Change the memory pages in place: same size, metadata and signature untouched."""
    pages = max(image_dir.glob("pages-*.img"), key=lambda path: path.stat().st_size)
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pages.write_bytes(bytes(data))


TAMPERING = {
    "tar-with-recomputed-checksum": (
        tamper_tar, "the image's signature does not verify with this host's key"
    ),
    "unsigned": (remove_signature, "the image is not signed, and this host requires signed images"),
    "criu-file-changed": (tamper_criu_file, "contents differ from the sha256 in the metadata"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_a_tampered_or_unsigned_image_starts_the_container_fresh(
    signing_nodes: Nodes,
    workload_image: cr.WorkloadImage,
    shared_checkpoints: Path,
    real_runc_binary: Path,
    case: str,
) -> None:
    a, b = signing_nodes
    tamper, reason = TAMPERING[case]
    image_dir = shared_checkpoints / cr.NAMESPACE / "signed-job"
    run_job(a, workload_image, "signed-src", "signed-job")
    checkpoint_job(a, "signed-src", real_runc_binary)
    tamper(image_dir)

    run_job(b, workload_image, "signed-dst", "signed-job")

    log = cr.arch_log(b)
    assert reason in log, log
    assert "restored from" not in log
    assert not any("restore" in call for call in b.arch.runc_calls_for("signed-dst"))
    assert b.task_status("signed-dst") == "RUNNING"
    rootfs = cr.rootfs_of(real_runc_binary, b, "signed-dst")
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 1, "the fresh loop to count")
    assert cr.count_log(rootfs)[:2] == ["start", "1"]
    assert not (rootfs / EVIL_FILE).exists()
