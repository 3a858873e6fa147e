"""`archctl inspect` and `archctl gc` on images real runc/CRIU wrote through a private containerd.

inspect: the verdict (restorable; corrupt copies are not, with the reason), sizes, versions and
the process tree; NAMESPACE/ID of a container or a checkpoint id; exit codes 0/1/2.
gc: a job that exited 0 with its image left behind (its delete never came) is removed, an image
a running container uses is kept, a leftover that may be in progress stays, --older-than removes
old images, --dry-run changes nothing, and a removal that fails exits 1.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.arch_host import set_config_value
from harness.archctl import archctl, archctl_json, describe
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

NS = cr.NAMESPACE


def start(node: ContainerdNode, image: cr.WorkloadImage, container_id: str, checkpoint_id: str,
          real_runc: Path) -> Path:  # fmt: skip
    env = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": checkpoint_id}
    node.run_container(image.name, container_id, cr.shell_workload(), env=env)
    rootfs = cr.rootfs_of(real_runc, node, container_id)
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, f"{container_id} to count")
    return rootfs


def checkpoint(node: ContainerdNode, container_id: str) -> None:
    completed = archctl(node, "checkpoint", f"{NS}/{container_id}")
    assert completed.returncode == 0, describe(completed)
    node.wait_for_status(container_id, "STOPPED")


def test_inspect_verdicts_sizes_and_process_tree(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    cr.store_uncompressed(node)  # damages files by their uncompressed names
    start(node, workload_image, "job", "job-1", real_runc_binary)
    checkpoint(node, "job")
    image_dir = node.arch.checkpoint_root / NS / "job-1"

    report = archctl_json(node, "inspect", f"{NS}/job-1")
    assert report["path"] == str(image_dir)
    assert report["restorable"] is True and report["reasons"] == [], report["checks"]
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert statuses == {"image": "ok", "criu": "ok", "checksum": "ok", "cpu": "ok",
                        "signature": "ok"}  # fmt: skip
    assert report["metadata"]["checkpoint_id"] == "job-1"
    assert report["metadata"]["container_id"] == "job"
    sizes = report["sizes"]
    assert sizes["total"] == sum(f.stat().st_size for f in image_dir.iterdir())
    assert 0 < sizes["memory_pages"] < sizes["processes"] and sizes["filesystem"] > 300 * 1024
    assert report["versions"]["image"]["criu"] == report["versions"]["host"]["criu"]
    init = report["processes"][0]
    assert (init["pid"], init["ppid"], init["comm"]) == (1, 0, "sh"), report["processes"]
    pids = {p["pid"] for p in report["processes"]}
    assert all(p["ppid"] in pids for p in report["processes"][1:]), "not one tree"
    # The loop's `sleep` child exists only between counts: when dumped, it is sh's child.
    assert all(p["comm"] == "sleep" for p in report["processes"][1:]), report["processes"]

    # The container's own name finds the image it recorded; the table says the same.
    table = archctl(node, "inspect", f"{NS}/job")
    assert table.returncode == 0, describe(table)
    assert f"image     {image_dir}" in table.stdout and "restorable here" in table.stdout
    assert "  ok    checksum" in table.stdout
    assert [line.split()[-1] for line in table.stdout.splitlines() if line.startswith("  1 ")] \
        == ["sh"]  # fmt: skip

    # Copies damaged in two ways: not restorable, exit 1, with the reason.
    truncated, flipped = tmp_path / "truncated", tmp_path / "flipped"
    for copy in (truncated, flipped):
        shutil.copytree(image_dir, copy)
    with (truncated / "rootfs-diff.tar").open("r+b") as tar:
        tar.truncate(1024)
    with (flipped / "rootfs-diff.tar").open("r+b") as tar:
        tar.seek(700)
        byte = tar.read(1)
        tar.seek(700)
        tar.write(bytes([byte[0] ^ 0xFF]))
    bad = archctl_json(node, "inspect", str(truncated), expect_status=1)
    assert bad["restorable"] is False
    assert "rootfs-diff.tar has 1024 bytes" in bad["reasons"][0]
    assert bad["processes"][0]["comm"] == "sh"  # still shown
    flipped_report = archctl_json(node, "inspect", str(flipped), expect_status=1)
    assert [r.split(":")[0] for r in flipped_report["reasons"]] == ["checksum"]
    skipped = archctl_json(node, "inspect", str(flipped), "--no-checksum")
    assert skipped["restorable"] is True

    missing = archctl(node, "inspect", f"{NS}/no-such-image")
    assert missing.returncode == 1 and "no image at" in missing.stderr, describe(missing)
    for argv in (["inspect"], ["inspect", "a/b/c"], ["inspect", "ns/.."], ["inspect", "x", "y"]):
        usage = archctl(node, *argv)
        assert usage.returncode == 2, describe(usage)


def test_inspect_checks_the_signature_when_a_key_is_configured(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    config = node.arch.config_file
    set_config_value(config, "image_key_file", '""')
    cr.store_uncompressed(node)  # damages files by their uncompressed names
    start(node, workload_image, "plain", "plain-1", real_runc_binary)
    checkpoint(node, "plain")  # made with signing off: unsigned
    key_file = tmp_path / "image.key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    key_file.chmod(0o600)
    set_config_value(config, "image_key_file", json.dumps(str(key_file)))
    start(node, workload_image, "signed", "signed-1", real_runc_binary)
    checkpoint(node, "signed")

    def signature_of(report: dict[str, object]) -> tuple[str, str]:
        checks = report["checks"]
        assert isinstance(checks, list)
        (check,) = [c for c in checks if c["name"] == "signature"]
        return check["status"], check["detail"]

    signed = archctl_json(node, "inspect", f"{NS}/signed-1")
    assert signature_of(signed)[0] == "ok" and signed["restorable"] is True
    assert signed["sizes"]["metadata"] > (node.arch.checkpoint_root / NS / "signed-1" /
                                          "metadata.json").stat().st_size  # fmt: skip
    unsigned = archctl_json(node, "inspect", f"{NS}/plain-1", expect_status=1)
    assert signature_of(unsigned) == (
        "fail", "the image is not signed, and this host requires signed images"
    )
    tampered = tmp_path / "tampered"
    shutil.copytree(node.arch.checkpoint_root / NS / "signed-1", tampered)
    pages = max(tampered.glob("pages-*.img"), key=lambda path: path.stat().st_size)
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pages.write_bytes(bytes(data))
    report = archctl_json(node, "inspect", str(tampered), expect_status=1)
    assert report["reasons"] == [
        f"signature: {pages.name}: contents differ from the sha256 in the metadata"
    ]


def test_gc_finished_in_use_leftovers_age_dry_run_and_failure(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    root = node.arch.checkpoint_root / NS
    # "done": restored from its image, then exits 0; its delete never comes (image left).
    start(node, workload_image, "done", "done-job", real_runc_binary)
    checkpoint(node, "done")
    cr.remove_container(node, "done")
    done_rootfs = start(node, workload_image, "done", "done-job", real_runc_binary)
    (done_rootfs / "state/exit").write_text("0")
    node.wait_for_status("done", "STOPPED")
    cr.wait_for(lambda: (node.arch.state_dir / NS / "done" / "exit_status").exists(), "exit 0")
    # "busy": restored from its image and still running. "old": an image nobody uses.
    start(node, workload_image, "busy", "busy-job", real_runc_binary)
    checkpoint(node, "busy")
    cr.remove_container(node, "busy")
    start(node, workload_image, "busy", "busy-job", real_runc_binary)
    start(node, workload_image, "old", "old-job", real_runc_binary)
    checkpoint(node, "old")
    cr.remove_container(node, "old")
    # A staging directory: it may be an image being written (its ctime is recent), so it stays.
    leftover = root / ".staging-old-job-0123456789ab"
    leftover.mkdir()

    planned = archctl_json(node, "gc", "--dry-run")
    acted = {(a["rule"], Path(a["path"]).name): a["done"] for a in planned["actions"]}
    assert acted == {("finished", "done-job"): False, ("leftover", leftover.name): False}
    assert (root / "done-job").exists() and leftover.exists()

    result = archctl_json(node, "gc")
    acted = {(a["rule"], Path(a["path"]).name): a["done"] for a in result["actions"]}
    assert acted == {("finished", "done-job"): True}
    kept = {Path(k["path"]).name: k["reason"] for k in result["kept"]}
    assert kept == {"busy-job": "in use by default/busy", "old-job": "restorable, not expired"}
    assert sorted(p.name for p in root.iterdir()) == [leftover.name, "busy-job", "old-job"]
    leftover.rmdir()

    cr.wait_for(lambda: time.time() - (root / "old-job").stat().st_mtime > 2, "an older image")
    table = archctl(node, "gc", "--older-than", "1s")
    assert table.returncode == 0, describe(table)
    assert [line.split()[:3] for line in table.stdout.splitlines()[1:-1]] == [
        ["done", "remove", "older-than"]
    ], table.stdout
    assert sorted(p.name for p in root.iterdir()) == ["busy-job"]

    # A removal that fails (read-only storage) is reported and exits 1.
    with cr.tmpfs_mounted(tmp_path / "ro-root", "1m") as readonly:
        (readonly / NS / "stuck").mkdir(parents=True)
        procs.run(["mount", "-o", "remount,ro", str(readonly)])
        stuck = readonly / NS / "stuck"
        cr.wait_for(lambda: time.time() - stuck.stat().st_mtime > 2, "an older directory")
        failed = archctl(node, "gc", "--older-than", "1s", "--root", str(readonly))
    assert failed.returncode == 1, describe(failed)
    assert "Read-only file system" in failed.stderr
    for argv in (["gc", "--older-than", "-5"], ["gc", "--older-than", "soon"], ["gc", "extra"]):
        usage = archctl(node, *argv)
        assert usage.returncode == 2, describe(usage)
