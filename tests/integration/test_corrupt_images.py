"""Images that must not be restored, and checkpoints that must not leave an image.

A corrupted image (a truncated CRIU file, garbled CRIU data, a tar whose sha256 does not match,
no metadata.json, an unknown format version) is refused at `ctr run`: the container starts
fresh (its count restarts, its rootfs is the image's, with nothing of the refused image's
filesystem changes left behind) and arch-runc's log says why.

A checkpoint that fails (the checkpoint root is a 1 MiB tmpfs that a 16 MiB dump fills) leaves
the container running where it was, and neither an image nor a staging directory behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness.arch_host import allow_unsigned
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]


@pytest.fixture
def node(node: ContainerdNode) -> ContainerdNode:
    """Unsigned images allowed: a changed image must meet validation and CRIU, not the signature."""
    allow_unsigned(node.arch.config_file)
    return node


NodeFactory = Callable[..., ContainerdNode]
ARCH_ENV = {"ARCH_ENABLE": "1"}
# One command for both runs (an image restores only into the same job), but the fresh run (a
# second attempt: AWS_BATCH_JOB_ATTEMPT is not part of the job's identity) only counts, so the
# filesystem changes in its rootfs can only come from the image.
COMMAND = cr.shell_workload(
    prepare=f'if [ "$AWS_BATCH_JOB_ATTEMPT" = 1 ]; then {cr.FILESYSTEM_CHANGES}; fi'
)
FIRST_ATTEMPT = {**ARCH_ENV, "AWS_BATCH_JOB_ATTEMPT": "1"}
FRESH_ATTEMPT = {**ARCH_ENV, "AWS_BATCH_JOB_ATTEMPT": "2"}


# -- corruptions: each damages a published image and names the reason the log must give: ----
# the first string on the create's log line, the others anywhere in the log (multi-line tails).
Reasons = tuple[str, ...]


def truncate_criu_file(image_dir: Path) -> Reasons:
    pages = max(image_dir.glob("pages-*.img"), key=lambda path: path.stat().st_size)
    os.truncate(pages, pages.stat().st_size // 2)
    return (f"{pages.name} has {pages.stat().st_size} bytes",)


def garble_criu_file(image_dir: Path) -> Reasons:
    """Same size, wrong content in a file ARCH does not read itself (the credentials check
    reads pstree.img and core-*.img): only CRIU can notice, after the filesystem changes were
    applied (so this exercises their rollback). The log carries restore.log's verdict."""
    inventory = image_dir / "inventory.img"
    inventory.write_bytes(b"\xff" * inventory.stat().st_size)
    return ("restore refused, starting fresh: runc restore exited", "restore.log", "inventory.img")


def garble_process_image(image_dir: Path) -> Reasons:
    """pstree.img, which the credentials check decodes before anything is applied."""
    pstree = image_dir / "pstree.img"
    pstree.write_bytes(b"\xff" * pstree.stat().st_size)
    return ("restore refused, starting fresh: the image's process credentials cannot be read: "
            "pstree.img: not this kind of CRIU image",)  # fmt: skip


def flip_tar_byte(image_dir: Path) -> Reasons:
    tar = image_dir / "rootfs-diff.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    return ("restore refused, starting fresh: filesystem changes not applied", "sha256")


def remove_metadata(image_dir: Path) -> Reasons:
    (image_dir / "metadata.json").unlink()
    return ("metadata.json is missing",)


def future_format_version(image_dir: Path) -> Reasons:
    metadata_file = image_dir / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["format_version"] = 999
    metadata_file.write_text(json.dumps(metadata))
    return ("format_version 999 is not supported",)


CORRUPTIONS: dict[str, Callable[[Path], Reasons]] = {
    "truncated-criu-file": truncate_criu_file,
    "garbled-criu-file": garble_criu_file,
    "garbled-process-image": garble_process_image,
    "bad-tar-checksum": flip_tar_byte,
    "missing-metadata": remove_metadata,
    "wrong-format-version": future_format_version,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_image_is_refused_and_the_container_starts_fresh(
    node: ContainerdNode,
    workload_image: cr.WorkloadImage,
    real_runc_binary: Path,
    corruption: str,
) -> None:
    cr.store_uncompressed(node)  # the corruptions name uncompressed files
    node.run_container(workload_image.name, "pristine", ["sleep", "1000"], env=ARCH_ENV)
    pristine = cr.tree_listing(cr.rootfs_of(real_runc_binary, node, "pristine"))
    node.run_container(workload_image.name, "job", COMMAND, env=FIRST_ATTEMPT)
    rootfs = cr.rootfs_of(real_runc_binary, node, "job")
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 20, "the loop to count to 20")
    cr.checkpoint(node, "job")
    cr.remove_container(node, "job")
    image_dir = node.arch.checkpoint_root / cr.NAMESPACE / "job"
    reason, *details = CORRUPTIONS[corruption](image_dir)

    node.run_container(workload_image.name, "job", COMMAND, env=FRESH_ATTEMPT)

    fresh = cr.rootfs_of(real_runc_binary, node, "job")
    cr.wait_for(lambda: cr.counted(cr.count_log(fresh)) >= 3, "the fresh loop to count")
    lines = cr.count_log(fresh)
    assert lines == ["start", *map(str, range(1, len(lines)))], "not a fresh start"
    assert cr.counted(lines) < 20, "counted on from the checkpoint: the image was restored"
    listing = cr.tree_listing(fresh, exclude=cr.COUNT_LIVE_FILES)
    for live in cr.COUNT_LIVE_FILES:
        listing.pop(live, None)
    assert cr.listing_differences(pristine, listing) == []
    log = cr.arch_log(node)
    assert "create default/job: restored from" not in log
    refusals = [
        line for line in log.splitlines() if "create default/job" in line and reason in line
    ]
    assert refusals, f"no log line for default/job naming {reason!r}:\n{log}"
    assert [detail for detail in details if detail not in log] == [], log


@pytest.fixture
def tiny_checkpoint_root(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs as the node's checkpoint root; requested before the node, so that the
    node is stopped before it is unmounted."""
    with cr.tmpfs_mounted(tmp_path / "tiny", "1m") as mount_point:
        yield mount_point


def test_checkpoint_that_fills_the_disk_leaves_the_container_running_and_no_image(
    working_criu: None,
    tiny_checkpoint_root: Path,
    containerd_nodes: NodeFactory,
    workload_image: cr.WorkloadImage,
    real_runc_binary: Path,
    tmp_path: Path,
) -> None:
    node = containerd_nodes("tiny", checkpoint_root=tiny_checkpoint_root, image=False)
    node.import_image(workload_image.oci_archive)
    with cr.watched(node, tmp_path / "watch-exits.out"):
        fill_the_disk(node, tiny_checkpoint_root, workload_image, real_runc_binary)


def fill_the_disk(
    node: ContainerdNode, tiny: Path, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    seed = 77
    node.run_container(workload_image.name, "full", cr.memhold_workload(seed, 16), env=ARCH_ENV)
    rootfs = cr.rootfs_of(real_runc_binary, node, "full")
    cr.wait_for(lambda: len(cr.held_ticks(rootfs)) >= 2, "memhold's second tick")

    failed = cr.checkpoint(node, "full", check=False)

    assert failed.returncode != 0, "the checkpoint into a 1 MiB tmpfs succeeded"
    assert "checkpoint failed, the container keeps running" in failed.stderr
    assert "checkpoint default/full: checkpoint failed" in cr.arch_log(node)
    assert "No space left on device" in cr.arch_log(node), "the log does not say why"
    assert node.task_status("full") == "RUNNING"
    last = cr.held_ticks(rootfs)[-1].counter
    cr.wait_for(lambda: cr.held_ticks(rootfs)[-1].counter > last + 2, "memhold to tick on")
    held = (rootfs / cr.HELD_FILE.lstrip("/")).read_text()
    assert cr.held_log_problems(held, seed, 16) == [], held
    leftovers = [str(path) for path in tiny.rglob("*") if not path.is_dir()]
    leftovers += [str(path) for path in tiny.rglob("*") if ".staging" in path.name]
    assert leftovers == []
    assert not (tiny / cr.NAMESPACE / "full").exists()
    state = cr.runc_state(real_runc_binary, node, "full")
    assert state["status"] == "running"
