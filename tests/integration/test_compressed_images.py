"""Compressed images (metadata format 3) through real containerd, runc and CRIU.

A job whose memory holds compressible data (a shell variable of repeated text) is checkpointed
with signing on: its memory pages and its filesystem tar are stored zstd-compressed, and the
image restores (the in-memory counter and the variable's digest continue, the filesystem changes
are there). An image written with `compression = "off"` (the layout every ARCH before
compression wrote, format 2) restores on a node that compresses. A compressed image whose stored
bytes were changed is refused before runc sees it, and the container starts fresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness.arch_host import allow_unsigned, set_config_value
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

# About 8 MB of text held in the shell's heap; each tick logs the counter (in memory only), the
# variable's length and its md5: a restored process continues all three.
HELD_TEXT_BYTES = 8_000_000
COMMAND = [
    "sh", "-c",
    f"{cr.FILESYSTEM_CHANGES} && mkdir -p /state && "
    f"big=$(yes 'ARCH checkpoint text, compressible' | head -c {HELD_TEXT_BYTES}); i=0; "
    'while true; do i=$((i+1)); echo "$i ${#big} $(echo "$big" | md5sum)" >> /state/ticks; '
    "sleep 1; done",
]  # fmt: skip
ENV = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": "zjob"}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "image.key"
    path.write_text(os.urandom(32).hex() + "\n")
    os.chmod(path, 0o600)
    return path


def sign_with(node: ContainerdNode, key_file: Path) -> None:
    set_config_value(node.arch.config_file, "image_key_file", json.dumps(str(key_file)))


def ticks(rootfs: Path) -> list[tuple[int, str]]:
    path = rootfs / "state" / "ticks"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(line.split()[0]), " ".join(line.split()[1:])) for line in lines if line.strip()]


def restored_and_continuing(node: ContainerdNode, image: cr.WorkloadImage, container_id: str,
                            real_runc: Path, last: tuple[int, str]) -> None:  # fmt: skip
    node.run_container(image.name, container_id, COMMAND, env=ENV)
    assert f"create default/{container_id}: restored from" in cr.arch_log(node), cr.arch_log(node)
    rootfs = cr.rootfs_of(real_runc, node, container_id)
    cr.wait_for(lambda: ticks(rootfs)[-1][0] >= last[0] + 2, "ticks after the restore",
                timeout=120)  # fmt: skip
    after = ticks(rootfs)
    print(f"evidence: counter {last[0]} at checkpoint, {after[-1][0]} after restore; "
          f"held text {after[-1][1]}")
    assert after[-1][1] == last[1], "the held text changed across the restore"
    assert [count for count, _ in after] == list(range(1, len(after) + 1)), "a fresh start"
    assert (rootfs / "data" / "renamed.txt").exists() and not (rootfs / "data" / "delete-me.txt"
                                                                ).exists()  # fmt: skip


def run_until_ticking(node: ContainerdNode, image: cr.WorkloadImage, container_id: str,
                      real_runc: Path) -> tuple[int, str]:
    """Run the job, checkpoint it after two ticks, remove the container; its last tick."""
    node.run_container(image.name, container_id, COMMAND, env=ENV)
    rootfs = cr.rootfs_of(real_runc, node, container_id)
    cr.wait_for(lambda: len(ticks(rootfs)) >= 2, "the job's second tick", timeout=120)
    cr.checkpoint(node, container_id)
    node.wait_for_status(container_id, "STOPPED")
    last = ticks(rootfs)[-1]
    cr.remove_container(node, container_id)
    return last


def test_a_compressed_signed_image_round_trips(
    node: ContainerdNode, workload_image: cr.WorkloadImage, key_file: Path,
    real_runc_binary: Path,
) -> None:  # fmt: skip
    sign_with(node, key_file)
    cr.store_compressed(node)
    last = run_until_ticking(node, workload_image, "zsrc", real_runc_binary)
    image_dir = node.arch.checkpoint_root / cr.NAMESPACE / "zjob"

    document = json.loads((image_dir / "metadata.json").read_text())
    pages = [f for f in document["process"]["criu_files"] if f["name"].startswith("pages-")]
    compressed = [f for f in pages if f.get("compression") == "zstd"]
    stored = sum(f["size"] for f in compressed)
    content = sum(f["content_size"] for f in compressed)
    tar = document["filesystem"]
    print(f"evidence: format {document['format_version']}, {document['compression']}; pages "
          f"{content} -> {stored} bytes; tar {tar['content_size']} -> {tar['size']} bytes; "
          f"files {sorted(p.name for p in image_dir.iterdir())}")
    assert document["format_version"] == 3 and document["compression"]["algorithm"] == "zstd"
    assert content >= HELD_TEXT_BYTES and stored < content // 4
    assert tar["tar"] == "rootfs-diff.tar.zst" and tar["compression"] == "zstd"
    assert all(len(f["sha256"]) == 64 for f in document["process"]["criu_files"])
    assert not any((image_dir / f["name"][: -len(".zst")]).exists() for f in compressed), \
        "an uncompressed copy was left"  # fmt: skip
    assert (image_dir / "metadata.sig").exists()

    restored_and_continuing(node, workload_image, "zdst", real_runc_binary, last)


def test_an_uncompressed_image_restores_where_images_are_compressed(
    node: ContainerdNode, workload_image: cr.WorkloadImage, key_file: Path,
    real_runc_binary: Path,
) -> None:  # fmt: skip
    sign_with(node, key_file)
    config = node.arch.config_file
    plain_config = config.read_text()
    cr.store_uncompressed(node)
    last = run_until_ticking(node, workload_image, "psrc", real_runc_binary)
    image_dir = node.arch.checkpoint_root / cr.NAMESPACE / "zjob"
    document = json.loads((image_dir / "metadata.json").read_text())
    print(f"evidence: format {document['format_version']}, files "
          f"{sorted(p.name for p in image_dir.iterdir())}")
    assert document["format_version"] == 2 and "compression" not in document
    assert (image_dir / "rootfs-diff.tar").exists() and list(image_dir.glob("pages-*.img"))
    assert not list(image_dir.glob("*.zst"))

    config.write_text(plain_config)
    cr.store_compressed(node)  # the node compresses from now on
    restored_and_continuing(node, workload_image, "pdst", real_runc_binary, last)


def flip_stored_pages(image_dir: Path) -> tuple[str, ...]:
    """Change one byte of the compressed pages: the stream is corrupt there, or (if it still
    decodes) the signed digest no longer matches."""
    pages = max(image_dir.glob("pages-*.img.zst"), key=lambda path: path.stat().st_size)
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pages.write_bytes(bytes(data))
    return (f"{pages.name}: sha256", f"{pages.name}: corrupt zstd data")


def cut_stored_tar(image_dir: Path) -> tuple[str, ...]:
    """Truncate the compressed tar and record its new size and digest, as a writer of the
    storage could: the unsigned image is refused when the stream ends early."""
    tar = image_dir / "rootfs-diff.tar.zst"
    os.truncate(tar, tar.stat().st_size // 2)
    metadata_path = image_dir / "metadata.json"
    document = json.loads(metadata_path.read_text())
    data = tar.read_bytes()
    document["filesystem"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    metadata_path.write_text(json.dumps(document))
    return ("rootfs-diff.tar.zst: decompressed to",)


DAMAGE = {"signed-pages-flipped": (True, flip_stored_pages),
          "tar-cut-digest-recomputed": (False, cut_stored_tar)}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_compressed_image_starts_the_container_fresh(
    node: ContainerdNode, workload_image: cr.WorkloadImage, key_file: Path,
    real_runc_binary: Path, case: str,
) -> None:  # fmt: skip
    signed, damage = DAMAGE[case]
    if signed:
        sign_with(node, key_file)
    else:  # a writer of the storage without a key meets what checks the stream itself
        allow_unsigned(node.arch.config_file)
    cr.store_compressed(node)
    run_until_ticking(node, workload_image, "dsrc", real_runc_binary)
    image_dir = node.arch.checkpoint_root / cr.NAMESPACE / "zjob"
    assert json.loads((image_dir / "metadata.json").read_text())["format_version"] == 3
    reasons = damage(image_dir)

    node.run_container(workload_image.name, "ddst", COMMAND, env=ENV)
    log = cr.arch_log(node)
    refused = [line for line in log.splitlines() if "ddst" in line and "refused" in line]
    print("evidence:", *refused, sep="\n  ")
    assert any(reason in line for line in refused for reason in reasons), log
    fresh = cr.rootfs_of(real_runc_binary, node, "ddst")
    cr.wait_for(lambda: len(ticks(fresh)) >= 1, "the fresh job's first tick", timeout=120)
    assert ticks(fresh)[0][0] == 1
