"""A restore never gives a process more than config.json grants, whatever the image says.

A container runs as root without CAP_SETUID, CAP_SETGID and CAP_SETPCAP, with containerd's
default seccomp profile and no_new_privs. Its image is then edited as a writer of the storage
could (unsigned images allowed on this node, so that only the credentials check stands in the
way): one field of the init process's credentials in core-<pid>.img at a time, through CRIU's own
.proto files. Each edit makes the next create start fresh with the reason in the log, before
runc restore is called; the untouched image restores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from harness import checkpointing as cr
from harness import criu_protos
from harness.arch_host import allow_unsigned
from harness.containerd import ContainerdNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

DROPPED = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
CONFINED = ["--seccomp", *(arg for cap in DROPPED for arg in ("--cap-drop", cap))]
CAP_SYS_ADMIN = 21
SECCOMP_DISABLED = 0


@pytest.fixture(scope="module")
def messages(tmp_path_factory: pytest.TempPathFactory) -> criu_protos.CriuMessages:
    return criu_protos.CriuMessages(tmp_path_factory.mktemp("criu-pb2"))


@pytest.fixture
def unsigned_node(node: ContainerdNode) -> ContainerdNode:
    allow_unsigned(node.arch.config_file)
    return node


def add_capability(set_name: str) -> Callable[[Any], None]:
    def edit(core: Any) -> None:
        words = getattr(core.thread_core.creds, set_name)
        while len(words) < 2:
            words.append(0)
        words[CAP_SYS_ADMIN // 32] |= 1 << (CAP_SYS_ADMIN % 32)

    return edit


def set_creds(**values: int) -> Callable[[Any], None]:
    def edit(core: Any) -> None:
        for field, value in values.items():
            setattr(core.thread_core.creds, field, value)

    return edit


def add_group(core: Any) -> None:
    core.thread_core.creds.groups.append(4242)


def disable_seccomp(core: Any) -> None:
    core.thread_core.seccomp_mode = SECCOMP_DISABLED
    core.thread_core.ClearField("seccomp_filter")


def set_lsm_label(core: Any) -> None:
    core.thread_core.creds.lsm_profile = "unconfined_u:unconfined_r:unconfined_t:s0"


# Each edit, and the words the refusal must name.
EDITS: dict[str, tuple[Callable[[Any], None], str]] = {
    "uid": (set_creds(uid=1000, euid=1000, suid=1000, fsuid=1000), "uids 1000"),
    "euid-only": (set_creds(euid=4000), "uids 4000"),
    "gid": (set_creds(gid=1000, egid=1000, sgid=1000, fsgid=1000), "gids 1000"),
    "groups": (add_group, "groups 4242"),
    "effective": (add_capability("cap_eff"), "effective capabilities CAP_SYS_ADMIN"),
    "permitted": (add_capability("cap_prm"), "permitted capabilities CAP_SYS_ADMIN"),
    "inheritable": (add_capability("cap_inh"), "inheritable capabilities CAP_SYS_ADMIN"),
    "bounding": (add_capability("cap_bnd"), "bounding capabilities CAP_SYS_ADMIN"),
    "ambient": (add_capability("cap_amb"), "ambient capabilities CAP_SYS_ADMIN"),
    "securebits": (set_creds(secbits=0x10), "securebits 0x10 without CAP_SETPCAP"),
    "no-new-privs": (set_creds(no_new_privs=0), "no_new_privs is off"),
    "seccomp": (disable_seccomp, "no seccomp filter, config.json sets linux.seccomp"),
    "lsm-label": (set_lsm_label, "LSM label 'unconfined_u:unconfined_r:unconfined_t:s0'"),
}


def checkpointed_job(
    node: ContainerdNode, image: cr.WorkloadImage, real_runc: Path, container_id: str, job: str
) -> Path:
    """Run the confined counting job, checkpoint it, remove the container: its image dir."""
    env = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": job}
    node.run_container(image.name, container_id, cr.shell_workload(), env=env,
                       extra_args=CONFINED)  # fmt: skip
    rootfs = cr.rootfs_of(real_runc, node, container_id)
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 3, "the loop to count")
    cr.checkpoint(node, container_id)
    cr.remove_container(node, container_id)
    return node.arch.checkpoint_root / cr.NAMESPACE / job


def rerun(node: ContainerdNode, image: cr.WorkloadImage, container_id: str, job: str) -> None:
    env = {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": job}
    node.run_container(image.name, container_id, cr.shell_workload(), env=env,
                       extra_args=CONFINED)  # fmt: skip


def test_the_untouched_image_restores(
    unsigned_node: ContainerdNode,
    workload_image: cr.WorkloadImage,
    real_runc_binary: Path,
    messages: criu_protos.CriuMessages,
) -> None:
    node = unsigned_node
    image_dir = checkpointed_job(node, workload_image, real_runc_binary, "creds-src", "creds")
    _, cores = criu_protos.read_entries(
        image_dir / f"core-{criu_protos.init_pid(messages, image_dir)}.img",
        messages.core.core_entry,
    )
    creds = cores[0].thread_core.creds
    print(f"evidence: the dumped init: uid {creds.uid} gid {creds.gid} groups {list(creds.groups)}"
          f" cap_eff {list(creds.cap_eff)} cap_bnd {list(creds.cap_bnd)} secbits {creds.secbits}"
          f" no_new_privs {creds.no_new_privs} seccomp_mode {cores[0].thread_core.seccomp_mode}")

    rerun(node, workload_image, "creds-dst", "creds")

    assert f"create default/creds-dst: restored from {image_dir}" in cr.arch_log(node)
    rootfs = cr.rootfs_of(real_runc_binary, node, "creds-dst")
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) > 4, "the restored loop to count on")
    assert cr.count_log(rootfs).count("start") == 1


@pytest.mark.parametrize("field", sorted(EDITS))
def test_an_image_granting_more_than_config_json_starts_fresh(
    unsigned_node: ContainerdNode,
    workload_image: cr.WorkloadImage,
    real_runc_binary: Path,
    messages: criu_protos.CriuMessages,
    field: str,
) -> None:
    node = unsigned_node
    edit, named = EDITS[field]
    job = f"creds-{field}"
    image_dir = checkpointed_job(node, workload_image, real_runc_binary, f"{job}-src", job)
    criu_protos.edit_init_core(messages, image_dir, edit)

    rerun(node, workload_image, f"{job}-dst", job)

    log = cr.arch_log(node)
    refusals = [line for line in log.splitlines() if "would hold more than config.json" in line]
    print("evidence:", *refusals, sep="\n")
    assert refusals and named in refusals[-1], log
    assert "restored from" not in log
    assert "restore" not in node.arch.subcommands_for(f"{job}-dst")
    assert node.task_status(f"{job}-dst") == "RUNNING"
    rootfs = cr.rootfs_of(real_runc_binary, node, f"{job}-dst")
    cr.wait_for(lambda: cr.counted(cr.count_log(rootfs)) >= 1, "the fresh loop to count")
    assert cr.count_log(rootfs)[:2] == ["start", "1"]
