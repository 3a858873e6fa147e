"""create -> restore option mapping against the real runc of the stack under test (runc 1.1 on
Debian 12, runc 1.3 in the newer-stack lane), with the create flags runc restore lacks.

arch-runc is driven as runc directly (as a shim would): a checkpointed ARCH container, then a
`create` carrying --pidfd-socket (runc >= 1.2; containerd 2.x's go-runc can send it) and
--no-new-keyring, which arch-runc must turn into a restore runc accepts, and then hand the
restored init's pidfd to the socket as runc create does. A create with --preserve-fds > 0 cannot
be a restore (the restored process keeps its checkpoint's descriptors): it is created fresh.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import procs
from harness.arch_host import ArchHost, write_arch_host
from harness.bundles import RuncCli, make_bundle
from harness.images import BusyboxImage

pytestmark = [pytest.mark.root]

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /count; sleep 0.1; done"
RESTORE_ONLY_LACKS = ("--pidfd-socket", "--preserve-fds", "--no-new-keyring")


@dataclass
class Scene:
    cli: RuncCli
    host: ArchHost
    bundle: Path
    container_id: str
    namespace: str

    def create(self, *flags: str, fd3: Path | None = None) -> None:
        """`arch-runc create` with the container's stdio on /dev/null (CRIU cannot dump a
        detached container whose stdout is a host file); `fd3`: a file open as descriptor 3."""
        argv = [str(self.cli.binary), "--root", str(self.cli.root), "create", "--bundle"]
        argv += [str(self.bundle), *flags, self.container_id]
        if fd3 is not None:
            argv = ["sh", "-c", 'exec 3>"$0"; exec "$@"', str(fd3), *argv]
        completed = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # a pipe would stay open as long as the container runs
            env=self.cli.env,
            timeout=120,
            check=False,
        )
        assert completed.returncode == 0, procs.tail(self.host.log_file)

    def count(self) -> int:
        output = self.cli("exec", self.container_id, "sh", "-c", "cat /count 2>/dev/null").stdout
        return int(output.strip() or 0)

    def state(self) -> dict[str, object]:
        state: dict[str, object] = json.loads(self.cli("state", self.container_id).stdout)
        return state

    def checkpointed_after(self, minimum: int) -> int:
        """Start, let the counter pass `minimum`, checkpoint; returns the count before."""
        self.cli("start", self.container_id)
        assert procs.wait_until(lambda: self.count() > minimum, 30), "the counter never ran"
        before = self.count()
        self.cli("checkpoint", self.container_id, timeout=120)
        image = self.host.checkpoint_root / self.namespace / self.container_id
        assert (image / "metadata.json").is_file(), f"no image at {image}"
        self.cli("delete", self.container_id)  # as the shim does after the checkpoint's exit
        assert (image / "metadata.json").is_file(), "delete after a checkpoint removed the image"
        return before


@pytest.fixture
def scene(
    tmp_path: Path,
    working_criu: None,
    arch_runc_binary: Path,
    real_runc_binary: Path,
    test_image: BusyboxImage,
) -> Iterator[Scene]:
    root = tmp_path / "runc"
    host = write_arch_host(tmp_path / "arch", real_runc_binary)
    bundle = make_bundle(
        real_runc_binary, test_image, tmp_path / "bundle", ["sh", "-c", COUNTER],
        env={"ARCH_ENABLE": "1"},
    )  # fmt: skip
    config = json.loads((bundle / "config.json").read_text())
    config["root"]["readonly"] = False  # the counter writes /count
    (bundle / "config.json").write_text(json.dumps(config))
    container_id = f"arch-restore-options-{os.getpid()}-{time.monotonic_ns()}"
    scene = Scene(RuncCli(arch_runc_binary, root, env=host.environment), host, bundle,
                  container_id, namespace=root.name)  # fmt: skip
    try:
        yield scene
    finally:
        RuncCli(real_runc_binary, root)("delete", "--force", container_id, check=False)
        leftovers = procs.unmount_all_under(tmp_path)
        assert not leftovers, f"still mounted: {leftovers}"


def restore_calls(host: ArchHost, container_id: str) -> list[list[str]]:
    return [call for call in host.runc_calls_for(container_id) if "restore" in call]


def test_create_with_pidfd_socket_restores_and_sends_the_pidfd(
    scene: Scene, tmp_path: Path
) -> None:
    scene.create()
    before = scene.checkpointed_after(3)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pidfd_socket = tmp_path / "pidfd.sock"
    listener.bind(str(pidfd_socket))
    listener.listen(1)
    listener.settimeout(60)
    try:
        scene.create("--pidfd-socket", str(pidfd_socket), "--no-new-keyring",
                     "--preserve-fds", "0")  # fmt: skip
        connection, _ = listener.accept()
        with connection:
            message, fds, _, _ = socket.recv_fds(connection, 64, 1)
    finally:
        listener.close()

    calls = restore_calls(scene.host, scene.container_id)
    assert len(calls) == 1, scene.host.runc_calls_for(scene.container_id)
    assert not [flag for flag in RESTORE_ONLY_LACKS if any(a.startswith(flag) for a in calls[0])]
    assert message == b"standard"
    assert len(fds) == 1
    try:
        fdinfo = Path(f"/proc/self/fdinfo/{fds[0]}").read_text()
    finally:
        os.close(fds[0])
    assert f"Pid:\t{scene.state()['pid']}\n" in fdinfo  # a pidfd of the restored init
    scene.cli("start", scene.container_id)  # containerd's start after create: a no-op
    assert scene.state()["status"] == "running"
    assert scene.count() >= before  # the process went on counting from its checkpoint


def test_create_with_preserved_fds_is_created_fresh(scene: Scene, tmp_path: Path) -> None:
    scene.create()
    scene.checkpointed_after(20)
    scene.create("--preserve-fds", "1", fd3=tmp_path / "extra")  # runc passes fds 3.. on

    assert restore_calls(scene.host, scene.container_id) == []
    creates = [call for call in scene.host.runc_calls_for(scene.container_id) if "create" in call]
    assert "--preserve-fds" in creates[-1], creates  # the fresh create, flag and all
    log = scene.host.log_file.read_text()
    assert "--preserve-fds=1" in log, log[-3000:]
    scene.cli("start", scene.container_id)
    assert procs.wait_until(lambda: scene.count() > 0, 30)
    assert scene.count() < 20  # a fresh process, counting from zero
