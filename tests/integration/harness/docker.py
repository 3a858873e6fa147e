"""A private dockerd on a private containerd node, with the binary under test as runtime "arch".

Docker keeps its containers in that node's containerd under namespace `moby`
(`node.ctr(..., namespace=DOCKER_NAMESPACE)`), which the checkpoint tests drive directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.stack import current

from . import procs
from .containerd import ContainerdNode

STACK = current()
DOCKER_NAMESPACE = "moby"
RUNTIME_NAME = "arch"
READY_TIMEOUT = 60.0


class DockerDaemon:
    """dockerd with its own data-root, exec-root, pidfile and unix socket."""

    def __init__(
        self, node: ContainerdNode, *, base_dir: Path | None = None, wrapper: Sequence[str] = ()
    ) -> None:
        self.node = node
        self.wrapper = list(wrapper)  # a command prefix for dockerd (the drill's host name)
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="arch-dockerd-", dir="/tmp"))
        self.data_root = self.base_dir / "data"
        self.exec_root = self.base_dir / "exec"
        self.pidfile = self.base_dir / "dockerd.pid"
        self.host = f"unix://{self.base_dir / 'docker.sock'}"
        self.config_file = self.base_dir / "daemon.json"
        self.log_file = self.base_dir / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._created: list[str] = []

    @property
    def containerd_address(self) -> str:
        """The containerd socket dockerd uses (its containers live in namespace `moby`)."""
        return self.node.address

    @property
    def runtime_root(self) -> Path:
        """The runc --root dockerd 20.10 gives every runc-type runtime (namespace moby)."""
        return self.exec_root / "runtime-runc" / DOCKER_NAMESPACE

    def start(self) -> None:
        self.config_file.write_text(json.dumps(self._daemon_config(), indent=2))
        argv = [
            *self.wrapper,
            STACK.dockerd,
            "--config-file",
            str(self.config_file),
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pidfile),
            "--host",
            self.host,
            "--containerd",
            self.node.address,
            "--bridge",
            "none",
            "--iptables=false",
            "--ip-masq=false",
        ]
        environment = {**os.environ, **self.node.arch.environment}
        environment["PATH"] = STACK.daemon_path(environment.get("PATH", os.defpath))
        environment.pop("DOCKER_HOST", None)
        environment.pop("NOTIFY_SOCKET", None)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        if not procs.wait_until(self._ready, READY_TIMEOUT, interval=0.2):
            raise RuntimeError(
                f"dockerd not ready after {READY_TIMEOUT}s (exit status {self.process.poll()}); "
                f"log:\n{procs.tail(self.log_file)}"
            )

    def _daemon_config(self) -> dict[str, object]:
        return {"runtimes": {RUNTIME_NAME: {"path": str(self.node.arch_runc)}}}

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"dockerd exited {self.process.returncode} while starting; "
                f"log:\n{procs.tail(self.log_file)}"
            )
        return self.docker("version", check=False, timeout=10).returncode == 0

    def docker(
        self, *args: str, check: bool = True, timeout: float = 60.0, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker -H <this daemon> args...` (the stack's docker client)."""
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")
        }
        return procs.run(
            [STACK.docker, "--host", self.host, *args],
            check=check,
            timeout=timeout,
            env=environment,
            input_text=input_text,
        )

    def import_rootfs(self, rootfs_tar: Path, name: str, env_path: str) -> None:
        self.docker(
            "import",
            "--change",
            f"ENV {env_path}",
            "--change",
            'CMD ["sh"]',
            str(rootfs_tar),
            name,
            timeout=120,
        )

    def run_container(
        self,
        name: str,
        image: str,
        command: Sequence[str],
        *,
        detach: bool = False,
        runtime: str = RUNTIME_NAME,
        extra_args: Sequence[str] = (),
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """`docker run --runtime arch --network none --name NAME ...`; removed at teardown."""
        argv = ["run", "--runtime", runtime, "--network", "none", "--name", name]
        if detach:
            argv.append("--detach")
        self.track(name)
        return self.docker(*argv, *extra_args, image, *command, check=check, timeout=timeout)

    def track(self, name: str) -> None:
        if name not in self._created:
            self._created.append(name)

    def container_id(self, name: str) -> str:
        """The full container id (= the containerd container id in namespace moby)."""
        return self.docker("inspect", "--format", "{{.Id}}", name).stdout.strip()

    def stop(self) -> None:
        """Remove tracked containers, stop dockerd by its pid, unmount its leftovers."""
        problems: list[str] = []
        if self.process is not None and self.process.poll() is None:
            for name in self._created:
                removed = self.docker("rm", "--force", name, check=False, timeout=60)
                if removed.returncode != 0 and "No such container" not in removed.stderr:
                    problems.append(procs.describe(removed))
        if self.process is not None:
            procs.stop_process(self.process, timeout=30)
        leftover_mounts = procs.unmount_all_under(self.base_dir)
        if leftover_mounts:
            problems.append(f"still mounted: {leftover_mounts}")
        else:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if problems:
            raise AssertionError("dockerd teardown: " + "; ".join(problems))
