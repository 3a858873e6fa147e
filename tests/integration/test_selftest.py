"""`archctl selftest` against a private containerd node (its arch.toml via ARCH_CONFIG, the
arch-runc under test as --arch-runc): a real round trip passes and leaves nothing behind, with
the payload built by selftest itself or given with --payload; real failures (the checkpoint root
full, a broken runc, a payload that is not static, no compiler) exit 1 with a FAIL line, skip the
later steps and still leave nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import procs
from harness.containerd import ContainerdNode

from arch.appliance import selftest_payload

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu]

NodeFactory = Callable[..., ContainerdNode]

NAMESPACE = "arch-selftest"
STEPS = (
    "prerequisites",
    "image",
    "start",
    "checkpoint",
    "remove",
    "restore",
    "filesystem",
    "cleanup",
)
SELFTEST_TIMEOUT = 300.0
# Too small for CRIU's images of even the tiny static payload.
TINY_TMPFS_SIZE = "64k"


def run_selftest(
    node: ContainerdNode, arch_runc: Path, *extra: str, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`archctl --address <node> selftest --arch-runc ... --runc-root <node's> extra...`, with
    PATH `path` when given."""
    environment = {**os.environ, **node.arch.environment}
    if path is not None:
        environment["PATH"] = path
    environment.pop("CONTAINERD_ADDRESS", None)
    # Its temporary files go where the test can see that none are left.
    selftest_tmp(node).mkdir(exist_ok=True)
    environment["TMPDIR"] = str(selftest_tmp(node))
    argv = [
        sys.executable, "-m", "arch.cli.main", "--address", node.address, "selftest",
        "--arch-runc", str(arch_runc), "--runc-root", str(node.runc_root), *extra,
    ]  # fmt: skip
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SELFTEST_TIMEOUT,
        env=environment,
        check=False,
    )


def selftest_tmp(node: ContainerdNode) -> Path:
    return node.base_dir / "selftest-tmp"


def step_lines(output: str) -> dict[str, tuple[str, str]]:
    """{step name: (status, detail)} from the text report (continuation lines ignored)."""
    steps = {}
    for line in output.splitlines():
        fields = line.split(None, 3)
        if len(fields) >= 3 and fields[1] in STEPS and fields[2].endswith("s"):
            steps[fields[1]] = (fields[0], fields[3] if len(fields) == 4 else "")
    return steps


def assert_nothing_left(node: ContainerdNode) -> None:
    """No namespace, containers, tasks or images of the selftest; no image or ARCH state."""
    if NAMESPACE in node.namespaces():
        assert node.container_ids(NAMESPACE) == []
        assert node.ctr("images", "ls", "--quiet", namespace=NAMESPACE).stdout.split() == []
        raise AssertionError(f"namespace {NAMESPACE} was not removed")
    checkpoint_dir = node.arch.checkpoint_root / NAMESPACE
    assert not checkpoint_dir.exists() or not os.listdir(checkpoint_dir), os.listdir(checkpoint_dir)
    state_dir = node.arch.state_dir / NAMESPACE
    assert not state_dir.exists() or not os.listdir(state_dir), os.listdir(state_dir)
    assert not procs.mounts_under(node.base_dir / "root"), procs.mounts_under(node.base_dir)
    assert not list(selftest_tmp(node).iterdir())


@pytest.fixture
def node(containerd_nodes: NodeFactory) -> ContainerdNode:
    return containerd_nodes("selftest", image=False)


@pytest.fixture
def tiny_checkpoint_root(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs too small for any checkpoint image."""
    root = tmp_path / "tiny"
    root.mkdir(mode=0o700)
    procs.run(["mount", "-t", "tmpfs", "-o", f"size={TINY_TMPFS_SIZE},mode=0700", "tmpfs",
               str(root)])  # fmt: skip
    try:
        yield root
    finally:
        procs.run(["umount", str(root)])


def test_selftest_round_trip_passes_and_cleans_up(
    node: ContainerdNode, arch_runc_binary: Path
) -> None:
    completed = run_selftest(node, arch_runc_binary)

    assert completed.returncode == 0, procs.describe(completed)
    steps = step_lines(completed.stdout)
    assert list(steps) == list(STEPS), completed.stdout
    assert all(status == "ok" for status, _ in steps.values()), completed.stdout
    assert completed.stdout.rstrip().endswith(
        "selftest passed: checkpoint/restore works on this host"
    )
    assert steps["prerequisites"][1].endswith("payload built with cc -static")
    assert "the same process continued" in steps["restore"][1]
    match = re.search(r"container (selftest-[0-9a-f]+) running", steps["start"][1])
    assert match is not None, steps["start"]
    container_id = match.group(1)
    log = node.arch.log_file.read_text()
    assert f"checkpoint {NAMESPACE}/{container_id}: image published at" in log, log
    assert f"create {NAMESPACE}/{container_id}: restored from" in log, log
    subcommands = node.arch.subcommands_for(container_id)
    assert [s for s in subcommands if s in ("checkpoint", "restore")] == ["checkpoint", "restore"]
    assert_nothing_left(node)


def test_selftest_json_in_an_existing_namespace_keeps_it(
    node: ContainerdNode, arch_runc_binary: Path
) -> None:
    node.ctr("namespaces", "create", "mine")

    completed = run_selftest(node, arch_runc_binary, "--json", "--namespace", "mine")

    assert completed.returncode == 0, procs.describe(completed)
    report = json.loads(completed.stdout)
    assert report["passed"] is True
    assert [step["name"] for step in report["steps"]] == list(STEPS)
    assert {step["status"] for step in report["steps"]} == {"ok"}
    assert all(step["seconds"] >= 0 and step["detail"] for step in report["steps"])
    assert "mine" in node.namespaces()
    assert node.container_ids("mine") == []
    assert node.ctr("images", "ls", "--quiet", namespace="mine").stdout.split() == []
    assert not (node.arch.checkpoint_root / "mine").exists()
    assert not list(selftest_tmp(node).iterdir())


def test_selftest_keep_leaves_the_restored_container(
    node: ContainerdNode, arch_runc_binary: Path
) -> None:
    completed = run_selftest(node, arch_runc_binary, "--keep")

    assert completed.returncode == 0, procs.describe(completed)
    assert step_lines(completed.stdout)["cleanup"][1].startswith("kept (--keep)")
    (container_id,) = node.container_ids(NAMESPACE)
    assert node.task_status(container_id, NAMESPACE) == "RUNNING"
    assert (node.arch.checkpoint_root / NAMESPACE / container_id / "metadata.json").is_file()
    assert not list(selftest_tmp(node).iterdir())
    # The node's teardown removes what was kept.


def test_selftest_fails_when_the_checkpoint_cannot_be_written(
    containerd_nodes: NodeFactory, tiny_checkpoint_root: Path, arch_runc_binary: Path
) -> None:
    full_node = containerd_nodes("full", checkpoint_root=tiny_checkpoint_root, image=False)

    completed = run_selftest(full_node, arch_runc_binary)

    assert completed.returncode == 1, procs.describe(completed)
    steps = step_lines(completed.stdout)
    assert [steps[name][0] for name in STEPS] == [
        "ok", "ok", "ok", "FAIL", "skip", "skip", "skip", "ok",
    ], completed.stdout  # fmt: skip
    assert "checkpoint failed, the container keeps running" in completed.stdout
    assert "No space left on device" in completed.stdout, "the report must show CRIU's reason"
    assert completed.stdout.rstrip().endswith("selftest FAILED: checkpoint")
    assert_nothing_left(full_node)
    assert os.listdir(tiny_checkpoint_root) == []


def test_selftest_fails_when_runc_is_broken(node: ContainerdNode, arch_runc_binary: Path) -> None:
    config = node.arch.config_file
    config.write_text(
        "\n".join(
            line if not line.startswith("runc =") else 'runc = "/bin/false"'
            for line in config.read_text().splitlines()
        )
        + "\n"
    )

    completed = run_selftest(node, arch_runc_binary)

    assert completed.returncode == 1, procs.describe(completed)
    steps = step_lines(completed.stdout)
    assert [steps[name][0] for name in STEPS] == [
        "ok", "ok", "FAIL", "skip", "skip", "skip", "skip", "ok",
    ], completed.stdout  # fmt: skip
    assert "ctr run" in steps["start"][1]
    assert completed.stdout.rstrip().endswith("selftest FAILED: start")
    assert_nothing_left(node)


def test_selftest_with_a_prebuilt_payload(
    node: ContainerdNode, arch_runc_binary: Path, tmp_path: Path
) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(selftest_payload.build())

    completed = run_selftest(node, arch_runc_binary, "--payload", str(payload))

    assert completed.returncode == 0, procs.describe(completed)
    steps = step_lines(completed.stdout)
    assert f"payload {payload}" in steps["prerequisites"][1]
    assert all(status == "ok" for status, _ in steps.values()), completed.stdout
    assert_nothing_left(node)


def test_selftest_with_a_dynamic_payload_says_what_is_wrong(
    node: ContainerdNode, arch_runc_binary: Path
) -> None:
    completed = run_selftest(node, arch_runc_binary, "--payload", "/usr/bin/env")

    assert completed.returncode == 1, procs.describe(completed)
    steps = step_lines(completed.stdout)
    status, detail = steps["prerequisites"]
    assert status == "FAIL"
    assert detail.startswith(
        "payload /usr/bin/env is not a statically linked 64-bit ELF executable (build it with: cc "
    ), detail
    assert [steps[name][0] for name in STEPS[1:-1]] == ["skip"] * (len(STEPS) - 2)
    assert NAMESPACE not in node.namespaces()


def test_selftest_without_a_compiler_says_what_is_missing(
    node: ContainerdNode, arch_runc_binary: Path, tmp_path: Path
) -> None:
    # A PATH with ctr and nothing else: no cc.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ctr = shutil.which("ctr")
    assert ctr is not None
    (bin_dir / "ctr").symlink_to(ctr)

    completed = run_selftest(node, arch_runc_binary, path=str(bin_dir))

    assert completed.returncode == 1, procs.describe(completed)
    status, detail = step_lines(completed.stdout)["prerequisites"]
    assert status == "FAIL"
    assert detail == (
        "no C compiler (cc) on PATH to build the selftest payload: install gcc, or pass "
        "--payload PATH"
    )
    assert NAMESPACE not in node.namespaces()
