"""The exit watcher's periodic clean-up (`archctl watch-exits --sweep-interval`), run for real
against a private containerd: it finishes a checkpoint whose arch-runc died (its runc/CRIU
group, here a stand-in process in a group of its own, is stopped; its staging directory goes),
removes staging and restore work directories whose writer is dead, and keeps those a live
writer (here: another host's unexpired lease) or a recent change still protects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.containerd import ContainerdNode

from arch import host_identity
from arch.checkpoint.storage.lease import LEASE_FILE
from arch.container.interrupted import OPERATION_FLAG
from arch.container.state import ContainerState
from arch.runc.process_group import ProcessIdentity, dies_with_this_process
from tests.conftest import finished_process

pytestmark = [pytest.mark.root, pytest.mark.containerd]

SWEEP_TIMEOUT = 30.0



def lease_document(host: str, identity: ProcessIdentity, expires: float) -> str:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return json.dumps({"host": host, "boot": boot, "pid": identity.pid, "start": identity.start,
                       "expires": expires})  # fmt: skip


def leftover(directory: Path, lease: str | None) -> Path:
    directory.mkdir(parents=True)
    (directory / "pages-1.img").write_bytes(b"process memory")
    if lease is not None:
        (directory / LEASE_FILE).write_text(lease)
    return directory


def test_the_watcher_sweeps_what_killed_operations_left(
    containerd_nodes: object, tmp_path: Path
) -> None:
    assert callable(containerd_nodes)
    node: ContainerdNode = containerd_nodes("a", image=False)
    here = host_identity.current()  # what leases name: never the hostname
    namespace_dir = node.arch.checkpoint_root / "default"
    dead = leftover(namespace_dir / ".staging-job-0123456789ab",
                    lease_document(here, finished_process(), time.time() + 999))  # fmt: skip
    other_host = lease_document("other-host", finished_process(), time.time() + 999)
    elsewhere = leftover(namespace_dir / ".staging-job-abcdefabcdef", other_host)
    recent = leftover(namespace_dir / ".removing-job-0123456789ab", None)
    work = leftover(node.arch.state_dir / ".work" / "restore-x1",
                    lease_document(here, finished_process(), 0))  # fmt: skip
    orphan = subprocess.Popen(["sleep", "600"], preexec_fn=dies_with_this_process())
    orphan_identity = ProcessIdentity.of(orphan.pid)
    assert orphan_identity is not None
    interrupted_staging = leftover(namespace_dir / ".staging-ghost-0123456789ab", None)
    ghost = ContainerState(str(node.arch.state_dir), "default", "ghost")
    record = {"operation": "checkpoint", "holder": list(finished_process()),
              "runc": list(orphan_identity), "staging": str(interrupted_staging)}  # fmt: skip
    ghost.set(OPERATION_FLAG, json.dumps(record))

    environment = {**os.environ, **node.arch.environment}
    environment.pop("CONTAINERD_ADDRESS", None)
    output = tmp_path / "watcher.out"
    with output.open("wb") as sink:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "arch.cli.main", "--address", node.address, "watch-exits",
             "--sweep-interval", "0.5"],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=environment,
        )  # fmt: skip
    try:
        assert procs.wait_until(lambda: orphan.poll() is not None, SWEEP_TIMEOUT + 15), (
            cr.arch_log(node)
        )
        assert procs.wait_until(
            lambda: not dead.exists() and not work.exists() and not interrupted_staging.exists(),
            SWEEP_TIMEOUT,
        ), cr.arch_log(node)
        assert elsewhere.is_dir() and recent.is_dir()
        assert not ghost.has(OPERATION_FLAG)
        # Periodic, not only at start: a leftover of a writer that dies now goes too.
        later = leftover(namespace_dir / ".staging-job-fedcba987654",
                         lease_document(here, finished_process(), time.time() + 999))  # fmt: skip
        assert procs.wait_until(lambda: not later.exists(), SWEEP_TIMEOUT), cr.arch_log(node)
        assert f"clean-up: removed {dead}" in cr.arch_log(node)
        assert "checkpoint of default/ghost was interrupted" in cr.arch_log(node)
    finally:
        procs.stop_process(watcher)
        orphan.kill()
        orphan.wait()
    assert watcher.returncode == 0, output.read_text()
