"""Checkpoint and restore end to end through real containerd (`ctr`), runc and CRIU.

The containerd flow a user drives: `ctr task checkpoint ID` (containerd sends pause,
checkpoint --leave-running, resume), `ctr task delete` + `ctr containers delete` (the snapshot
goes too), then `ctr run` with the same id and environment: arch-runc's create finds the image
and restores into the new container's fresh rootfs.

Workloads: a busybox shell loop that changes the filesystem and then counts in shell memory
(/state/count.log), and the static C program memhold (workloads/memhold.c) that verifies a
64 MiB memory pattern and appends through one held file descriptor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

NodeFactory = Callable[..., ContainerdNode]
ARCH_ENV = {"ARCH_ENABLE": "1"}
MEMHOLD_MIB = 64
TENANT = "tenant"


def run_arch(
    node: ContainerdNode,
    image: cr.WorkloadImage,
    container_id: str,
    command: list[str],
    namespace: str = cr.NAMESPACE,
    env: dict[str, str] | None = None,
) -> None:
    node.run_container(
        image.name,
        container_id,
        command,
        namespace=namespace,
        env=ARCH_ENV if env is None else env,
    )


def image_dir_of(node: ContainerdNode, container_id: str, namespace: str = cr.NAMESPACE) -> Path:
    return node.arch.checkpoint_root / namespace / container_id


def test_shell_loop_filesystem_and_counter_survive_restore(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    run_arch(node, workload_image, "loop", cr.shell_workload())
    rootfs = cr.rootfs_of(real_runc_binary, node, "loop")
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 5, "the loop to count to 5")

    cr.checkpoint(node, "loop")

    node.wait_for_status("loop", "STOPPED")
    at_checkpoint = cr.count_log(rootfs)
    before = cr.tree_listing(rootfs, exclude=cr.COUNT_LIVE_FILES)
    image_dir = image_dir_of(node, "loop")
    assert (image_dir / "metadata.json").is_file(), cr.arch_log(node)
    assert cr.image_permission_problems(image_dir) == []
    cr.remove_container(node, "loop")
    assert (image_dir / "metadata.json").is_file(), "delete after a checkpoint removed the image"

    run_arch(node, workload_image, "loop", cr.shell_workload())

    restored = cr.rootfs_of(real_runc_binary, node, "loop")
    checkpointed = cr.counted(at_checkpoint)
    cr.wait_for(
        lambda: cr.counted(cr.count_log(restored)) >= checkpointed + 5,
        "the restored loop to count on",
    )
    assert "create default/loop: restored from" in cr.arch_log(node)
    assert cr.listing_differences(before, cr.tree_listing(restored, cr.COUNT_LIVE_FILES)) == []
    lines = cr.count_log(restored)
    assert lines[: len(at_checkpoint)] == at_checkpoint
    assert lines == ["start", *map(str, range(1, len(lines)))], "the count restarted or jumped"
    # runc saw one start (the first run's); the restored container's start was a no-op.
    assert node.arch.subcommands_for("loop").count("start") == 1
    assert node.arch.subcommands_for("loop").count("restore") == 1
    assert not (restored / "data/delete-me.txt").exists()
    assert (restored / "new/deep/er/est/file.txt").read_text() == "hello\n"


def test_memory_and_open_file_survive_restore(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    seed = 20241129
    command = cr.memhold_workload(seed, MEMHOLD_MIB)
    run_arch(node, workload_image, "mem", command)
    rootfs = cr.rootfs_of(real_runc_binary, node, "mem")
    cr.wait_for(lambda: len(cr.held_ticks(rootfs)) >= 3, "memhold's third tick")

    cr.checkpoint(node, "mem")

    node.wait_for_status("mem", "STOPPED")
    held_at_checkpoint = (rootfs / cr.HELD_FILE.lstrip("/")).read_text()
    last = cr.ticks(held_at_checkpoint)[-1].counter
    image_dir = image_dir_of(node, "mem")
    listed = json.loads((image_dir / "metadata.json").read_text())["process"]["criu_files"]
    pages = sum(entry.get("content_size", entry["size"]) for entry in listed
                if entry["name"].startswith("pages-"))  # fmt: skip
    assert pages >= MEMHOLD_MIB << 20, f"the image holds {pages} bytes of memory pages"
    cr.remove_container(node, "mem")

    run_arch(node, workload_image, "mem", command)

    restored = cr.rootfs_of(real_runc_binary, node, "mem")
    cr.wait_for(lambda: cr.held_ticks(restored)[-1].counter >= last + 3, "ticks after restore")
    held = (restored / cr.HELD_FILE.lstrip("/")).read_text()
    assert held.startswith(held_at_checkpoint)
    assert cr.held_log_problems(held, seed, MEMHOLD_MIB) == [], held
    assert node.task_status("mem") == "RUNNING"


def test_same_id_in_two_namespaces_is_checkpointed_and_restored_independently(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    node.import_image(workload_image.oci_archive, namespace=TENANT)
    seeds = {cr.NAMESPACE: 1111, TENANT: 2222}
    for namespace, seed in seeds.items():
        run_arch(node, workload_image, "twin", cr.memhold_workload(seed, 8), namespace)
    rootfs = {ns: cr.rootfs_of(real_runc_binary, node, "twin", ns) for ns in seeds}
    for namespace in seeds:
        cr.wait_for(lambda ns=namespace: len(cr.held_ticks(rootfs[ns])) >= 2, "ticks")

    cr.checkpoint(node, "twin", TENANT)

    node.wait_for_status("twin", "STOPPED", namespace=TENANT)
    assert (image_dir_of(node, "twin", TENANT) / "metadata.json").is_file()
    assert not image_dir_of(node, "twin").exists()
    default_ticks = len(cr.held_ticks(rootfs[cr.NAMESPACE]))
    cr.wait_for(
        lambda: len(cr.held_ticks(rootfs[cr.NAMESPACE])) > default_ticks + 2,
        "the default namespace's twin to keep running",
    )
    assert node.task_status("twin") == "RUNNING"

    cr.checkpoint(node, "twin")
    last = {ns: cr.held_ticks(rootfs[ns])[-1].counter for ns in seeds}
    for namespace in seeds:
        metadata = json.loads((image_dir_of(node, "twin", namespace) / "metadata.json").read_text())
        assert (metadata["namespace"], metadata["container_id"]) == (namespace, "twin")
        cr.remove_container(node, "twin", namespace)

    # Restore the tenant's first: the default namespace's image must still be there, untouched.
    for namespace in (TENANT, cr.NAMESPACE):
        run_arch(node, workload_image, "twin", cr.memhold_workload(seeds[namespace], 8), namespace)
        restored = cr.rootfs_of(real_runc_binary, node, "twin", namespace)
        cr.wait_for(
            lambda root=restored, ns=namespace: cr.held_ticks(root)[-1].counter > last[ns] + 1,
            f"{namespace}/twin ticking after restore",
        )
        held = (restored / cr.HELD_FILE.lstrip("/")).read_text()
        assert cr.held_log_problems(held, seeds[namespace], 8) == [], held
    assert "create tenant/twin: restored from" in cr.arch_log(node)
    assert "create default/twin: restored from" in cr.arch_log(node)


def test_container_that_did_not_opt_in_is_untouched_by_checkpoint(
    node: ContainerdNode, workload_image: cr.WorkloadImage, real_runc_binary: Path
) -> None:
    run_arch(node, workload_image, "plain", cr.shell_workload(prepare=""), env={})
    rootfs = cr.rootfs_of(real_runc_binary, node, "plain")
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, "the loop to count")

    cr.checkpoint(node, "plain")

    # Plain runc semantics: runc checkpoint --leave-running into containerd's own image path.
    assert node.task_status("plain") == "RUNNING"
    counted = cr.counted(cr.count_log(rootfs))
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) > counted + 3, "the loop to go on")
    assert cr.count_log(rootfs).count("start") == 1
    calls = [call for call in node.arch.runc_calls_for("plain") if "checkpoint" in call]
    assert len(calls) == 1 and "--leave-running" in calls[0], calls
    image_path = calls[0][calls[0].index("--image-path") + 1]
    assert not image_path.startswith(str(node.arch.checkpoint_root)), image_path
    assert list(node.arch.checkpoint_root.iterdir()) == []
    assert not node.arch.state_dir.exists() or list(node.arch.state_dir.rglob("plain")) == []
    assert "plain" not in cr.arch_log(node)


@pytest.mark.parametrize("exit_code", [0, 1])
def test_delete_after_exit_removes_the_image_only_after_exit_0(
    node: ContainerdNode,
    workload_image: cr.WorkloadImage,
    real_runc_binary: Path,
    exit_code: int,
) -> None:
    command = cr.shell_workload(prepare="")
    image_dir = image_dir_of(node, "job")
    run_arch(node, workload_image, "job", command)
    rootfs = cr.rootfs_of(real_runc_binary, node, "job")
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, "the loop to count")
    cr.checkpoint(node, "job")
    node.wait_for_status("job", "STOPPED")
    checkpointed = cr.counted(cr.count_log(rootfs))
    cr.remove_container(node, "job")
    run_arch(node, workload_image, "job", command)
    restored = cr.rootfs_of(real_runc_binary, node, "job")
    assert "create default/job: restored from" in cr.arch_log(node)

    (restored / "state/exit").write_text(f"{exit_code}\n")
    node.wait_for_status("job", "STOPPED")
    lines = cr.count_log(restored)
    node.ctr("task", "delete", "job")

    assert (image_dir / "metadata.json").exists() == (exit_code != 0), cr.arch_log(node)
    expected = (
        f"delete default/job: exited 0, image {image_dir} removed"
        if exit_code == 0
        else f"delete default/job: exit status {exit_code}, image {image_dir} kept"
    )
    assert expected in cr.arch_log(node)
    assert lines == ["start", *map(str, range(1, len(lines)))]
    assert cr.counted(lines) > checkpointed, "the restored loop did not count on before exiting"


@pytest.mark.parametrize(
    "variables",
    [
        {"ARCH_CHECKPOINT_HOST_PATH": "{outside}"},
        {"ARCH_SHAREDFS_HOST_PATH": "{outside}", "ARCH_WORKDIR_CONTAINER_PATH": "/work"},
    ],
    ids=["checkpoint-host-path", "sharedfs-host-path"],
)
def test_path_outside_allowed_roots_fails_the_create_naming_the_variable(
    node: ContainerdNode,
    workload_image: cr.WorkloadImage,
    tmp_path: Path,
    variables: dict[str, str],
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    env = {"ARCH_ENABLE": "1", **{k: v.format(outside=outside) for k, v in variables.items()}}
    variable = next(iter(variables))

    created = node.run_container(
        workload_image.name, "escapee", ["sleep", "1000"], env=env, check=False
    )

    assert created.returncode != 0, procs.describe(created)
    assert variable in created.stderr and "allowed root" in created.stderr, procs.describe(created)
    assert node.task_status("escapee") is None
    assert list(outside.iterdir()) == []
    assert f"create default/escapee: {variable}" in cr.arch_log(node)
