"""runc's checkpoint behaviours that callers rely on, for opted-in containers, through real
containerd, runc and CRIU (issue 20).

- CRIU's dump log lands in the caller's --work-path (`ctr task checkpoint --work-path W`), as
  runc puts it there, besides the image's own copy.
- A per-container CRIU configuration (runc's `org.criu.config` annotation) that renames CRIU's
  log: the checkpoint succeeds, the image records and holds the log under CRIU's name, the log
  reaches the work path under that name (as with runc), and the next create restores with the
  same configuration. A changed configuration is not restored (the container starts fresh).
- A configuration whose work-dir moves CRIU's log out of the image: ARCH copies it in, and the
  restore runs under the same configuration (its log lands in that work-dir).
- A CRIU configuration that sets images-dir fails the checkpoint; the container keeps running.
- A failed dump: containerd's error (`ctr task checkpoint`) carries CRIU's own error line, and
  the bundle's criu-dump.log (which containerd copies from the work path's dump.log) holds
  CRIU's log. The dump fails for real: the container holds an established TCP connection
  (busybox nc over its loopback), which CRIU refuses without --tcp-established.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness.containerd import ContainerdNode
from harness.images import BusyboxImage

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

ARCH_ENV = {"ARCH_ENABLE": "1"}
# An established TCP connection inside the container's own network namespace (loopback): a
# listener (its stdin never ends: at EOF busybox nc would close the connection) and a client
# that keeps writing to it.
TCP_CONNECTION = (
    "sleep 100000 | nc -l -p 7777 > /dev/null & sleep 0.5; "
    "while true; do echo x; sleep 0.2; done | nc 127.0.0.1 7777 > /dev/null"
)
# What CRIU 3.x/4.x logs for such a socket (criu/sk-inet.c).
CRIU_TCP_ERROR = "Connected TCP socket"
CRIU_DUMP_SUCCESS = "Dumping finished successfully"
COUNTER = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /count; sleep 0.1; done"]
CUSTOM_LOG = "arch-custom.log"


def image_dir_of(node: ContainerdNode, container_id: str) -> Path:
    return node.arch.checkpoint_root / cr.NAMESPACE / container_id


def count_in(rootfs: Path) -> int:
    text = cr.read_text(rootfs / "count").strip()
    return int(text) if text.isdigit() else 0


def run_counter(
    node: ContainerdNode, image: BusyboxImage, container_id: str, config_file: Path | None
) -> None:
    annotation = [] if config_file is None else ["--annotation", f"org.criu.config={config_file}"]
    node.run_container(image.name, container_id, COUNTER, env=ARCH_ENV, extra_args=annotation)


def checkpoint_into(node: ContainerdNode, container_id: str, work_path: Path) -> None:
    completed = node.ctr(
        "task", "checkpoint", "--work-path", str(work_path), container_id, check=False
    )
    assert completed.returncode == 0, f"{completed.stderr}\n{cr.arch_log(node)}"
    node.wait_for_status(container_id, "STOPPED")


def bundle_of(node: ContainerdNode, container_id: str) -> Path:
    return node.state / "io.containerd.runtime.v2.task" / cr.NAMESPACE / container_id


def has_established_tcp(real_runc: Path, node: ContainerdNode, container_id: str) -> bool:
    """Whether the container's network namespace holds an established TCP connection (state 01
    in /proc/<pid>/net/tcp or tcp6 of its init; busybox nc listens on IPv6)."""
    pid = cr.runc_state(real_runc, node, container_id)["pid"]
    rows = [
        row.split()
        for table in ("tcp", "tcp6")
        for row in cr.read_text(Path(f"/proc/{pid}/net/{table}")).splitlines()[1:]
    ]
    return any(len(row) > 3 and row[3] == "01" for row in rows)


def test_failed_dump_reaches_containerd_with_criu_s_error(
    working_criu: None,
    containerd_node: ContainerdNode,
    test_image: BusyboxImage,
    real_runc_binary: Path,
) -> None:
    node = containerd_node
    node.run_container(test_image.name, "tcp", ["sh", "-c", TCP_CONNECTION], env=ARCH_ENV)
    cr.wait_for(
        lambda: has_established_tcp(real_runc_binary, node, "tcp"), "the TCP connection"
    )
    completed = cr.checkpoint(node, "tcp", check=False)
    error = completed.stderr.strip()
    print(f"ctr task checkpoint exited {completed.returncode}; its error:\n{error}")
    assert completed.returncode != 0
    assert node.task_status("tcp") == "RUNNING"
    # containerd keeps only the first line of runc's error (criuError).
    assert CRIU_TCP_ERROR in error.splitlines()[0], cr.arch_log(node)
    dump_log = bundle_of(node, "tcp") / "criu-dump.log"
    assert CRIU_TCP_ERROR in cr.read_text(dump_log), f"{dump_log}: {cr.read_text(dump_log)!r}"


def test_the_dump_log_lands_in_the_caller_s_work_path(
    working_criu: None, containerd_node: ContainerdNode, test_image: BusyboxImage, tmp_path: Path
) -> None:
    node = containerd_node
    run_counter(node, test_image, "plain", None)
    work_path = tmp_path / "work"
    checkpoint_into(node, "plain", work_path)
    in_work_path = cr.read_text(work_path / "dump.log")
    in_image = cr.read_text(image_dir_of(node, "plain") / "dump.log")
    print(f"{work_path}: {sorted(p.name for p in work_path.iterdir())}")
    assert CRIU_DUMP_SUCCESS in in_work_path.splitlines()[-1], in_work_path[-500:]
    assert in_image == in_work_path


def test_a_per_container_criu_config_is_honoured_and_restored_with(
    working_criu: None,
    containerd_node: ContainerdNode,
    test_image: BusyboxImage,
    real_runc_binary: Path,
    tmp_path: Path,
) -> None:
    from arch.checkpoint.image.validation import validate

    node = containerd_node
    config_file = tmp_path / "criu-for-this-container.conf"
    # Renames CRIU's log, as the config of runc's checkpoint.bats does.
    config_file.write_text(f"# for this container only\nlog-file={CUSTOM_LOG}\n")
    run_counter(node, test_image, "cfg", config_file)
    rootfs = cr.rootfs_of(real_runc_binary, node, "cfg")
    cr.wait_for(lambda: count_in(rootfs) >= 5, "the counter to reach 5")
    work_path = tmp_path / "work"
    checkpoint_into(node, "cfg", work_path)
    at_checkpoint = count_in(rootfs)

    # As with runc: CRIU's log is in the work path under the configured name, no dump.log.
    print(f"{work_path}: {sorted(p.name for p in work_path.iterdir())}")
    assert CRIU_DUMP_SUCCESS in cr.read_text(work_path / CUSTOM_LOG)
    assert not (work_path / "dump.log").exists()
    image_dir = image_dir_of(node, "cfg")
    metadata = json.loads((image_dir / "metadata.json").read_text())
    print(f"metadata process section: {json.dumps(metadata['process'], indent=1)}")
    assert metadata["process"]["criu_log"] == CUSTOM_LOG
    assert metadata["process"]["criu_config"]["file"] == str(config_file)
    assert CUSTOM_LOG in [f["name"] for f in metadata["process"]["criu_files"]]
    assert validate(str(image_dir)).metadata.criu_log == CUSTOM_LOG

    cr.remove_container(node, "cfg")
    run_counter(node, test_image, "cfg", config_file)
    restored = cr.rootfs_of(real_runc_binary, node, "cfg")
    cr.wait_for(lambda: count_in(restored) >= at_checkpoint + 5, "the restored counter to go on")
    assert "create default/cfg: restored from" in cr.arch_log(node)


def test_an_image_is_not_restored_under_a_changed_criu_config(
    working_criu: None, containerd_node: ContainerdNode, test_image: BusyboxImage, tmp_path: Path
) -> None:
    node = containerd_node
    config_file = tmp_path / "criu.conf"
    config_file.write_text(f"log-file={CUSTOM_LOG}\n")
    run_counter(node, test_image, "changed", config_file)
    checkpoint_into(node, "changed", tmp_path / "work")
    cr.remove_container(node, "changed")

    config_file.write_text("log-file=another.log\n")
    run_counter(node, test_image, "changed", config_file)
    log = cr.arch_log(node)
    print([line for line in log.splitlines() if "create default/changed" in line])
    assert "restore refused, starting fresh: the CRIU configuration" in log
    assert "create default/changed: restored from" not in log


def test_a_criu_config_that_moves_the_images_fails_the_checkpoint_cleanly(
    working_criu: None, containerd_node: ContainerdNode, test_image: BusyboxImage, tmp_path: Path
) -> None:
    """images-dir in the configuration would have CRIU write the process images outside the
    image ARCH publishes: refused before anything is frozen, the container keeps running."""
    node = containerd_node
    elsewhere = tmp_path / "elsewhere"
    config_file = tmp_path / "criu.conf"
    config_file.write_text(f"images-dir {elsewhere}\n")
    run_counter(node, test_image, "moved", config_file)
    completed = cr.checkpoint(node, "moved", check=False)
    print(f"ctr task checkpoint exited {completed.returncode}: {completed.stderr.strip()}")
    assert completed.returncode != 0
    assert f"sets images-dir '{elsewhere}'" in completed.stderr
    assert node.task_status("moved") == "RUNNING"
    assert not image_dir_of(node, "moved").exists()
    assert not elsewhere.exists()


def test_a_criu_config_that_moves_the_log_still_gives_the_image_its_log(
    working_criu: None,
    containerd_node: ContainerdNode,
    test_image: BusyboxImage,
    real_runc_binary: Path,
    tmp_path: Path,
) -> None:
    """work-dir in the configuration: CRIU writes its log outside the image; ARCH copies it in
    (and into the caller's work path), and the restore runs under the same configuration."""
    node = containerd_node
    criu_work = tmp_path / "criu-work-dir"
    criu_work.mkdir()
    config_file = tmp_path / "criu.conf"
    config_file.write_text(f"work-dir {criu_work}\nlog-file moved.log\n")
    run_counter(node, test_image, "wd", config_file)
    rootfs = cr.rootfs_of(real_runc_binary, node, "wd")
    cr.wait_for(lambda: count_in(rootfs) >= 3, "the counter to reach 3")
    work_path = tmp_path / "work"
    checkpoint_into(node, "wd", work_path)
    at_checkpoint = count_in(rootfs)
    image_dir = image_dir_of(node, "wd")
    print(f"{criu_work}: {sorted(p.name for p in criu_work.iterdir())}")
    print(f"{image_dir}: moved.log {(image_dir / 'moved.log').exists()}")
    written = cr.read_text(criu_work / "moved.log")
    assert CRIU_DUMP_SUCCESS in written
    assert (image_dir / "moved.log").read_text() == written
    assert (work_path / "moved.log").read_text() == written
    metadata = json.loads((image_dir / "metadata.json").read_text())
    assert metadata["process"]["criu_config"]["work_dir"] == str(criu_work)

    cr.remove_container(node, "wd")
    run_counter(node, test_image, "wd", config_file)
    restored = cr.rootfs_of(real_runc_binary, node, "wd")
    cr.wait_for(lambda: count_in(restored) >= at_checkpoint + 3, "the restored counter to go on")
    restore_log = cr.read_text(criu_work / "moved.log")
    print(f"moved.log after the restore ends with: {restore_log.splitlines()[-1:]}")
    assert "Restore finished successfully" in restore_log
