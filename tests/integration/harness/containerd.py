"""A private containerd instance ("node"): own root, state, socket, config and ARCH host config.

Several nodes can run at once (migration tests use two). A node never touches the host's
containerd (/run/containerd/containerd.sock) and stops only the processes it started.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.stack import current

from . import procs
from .arch_host import ArchHost, write_arch_host

STACK = current()
READY_TIMEOUT = 30.0
HOST_CONTAINERD_SOCKET = "/run/containerd/containerd.sock"

# Field numbers of containerd.runc.v1.Options (string fields only).
_RUNC_OPTION_STRING_FIELDS = {
    3: "shim_cgroup",
    6: "binary_name",
    7: "root",
    8: "criu_path",
    10: "criu_image_path",
    11: "criu_work_path",
}

_CONFIG = """version = 2
root = {root}
state = {state}
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = {address}

[ttrpc]
  address = {ttrpc_address}

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"""


class ContainerdNode:
    """One private containerd daemon, with helpers to drive it through `ctr`."""

    def __init__(
        self,
        name: str,
        *,
        arch_runc: Path,
        real_runc: Path,
        checkpoint_root: Path | None = None,
        base_dir: Path | None = None,
        wrapper: Sequence[str] = (),
        config_lines: Sequence[str] = (),
    ) -> None:
        self.name = name
        # A command prefix for the daemon (the drill's own UTS namespace and host name).
        self.wrapper = list(wrapper)
        self.arch_runc = arch_runc
        # Short, private directory: unix socket paths must stay under 108 bytes.
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix=f"arch-{name}-", dir="/tmp"))
        self.root = self.base_dir / "root"
        self.state = self.base_dir / "state"
        self.address = str(self.base_dir / "containerd.sock")
        self.config_file = self.base_dir / "config.toml"
        self.log_file = self.base_dir / "containerd.log"
        # runc state root for containers this node runs via ctr (`--runc-root`): the shim's
        # default /run/containerd/runc/<namespace> would be shared with other nodes and the host.
        self.runc_root = self.base_dir / "runc"
        # cgroup parent of the containers this node runs via ctr: ctr's default /<namespace>/<id>
        # is one cgroup for equal ids on two nodes (runc >= 1.2 refuses a non-empty cgroup), and
        # nodes stand for separate hosts.
        self.cgroup_parent = f"/{self.base_dir.name}"
        self.arch: ArchHost = write_arch_host(
            self.base_dir / "arch", real_runc, checkpoint_root, config_lines
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._created: list[tuple[str, str]] = []
        assert self.address != HOST_CONTAINERD_SOCKET

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Write config.toml, start containerd and wait until it answers `ctr version`."""
        self.config_file.write_text(self._config_text())
        environment = {**os.environ, **self.arch.environment}
        environment["PATH"] = STACK.daemon_path(environment.get("PATH", os.defpath))
        for variable in ("CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE", "NOTIFY_SOCKET"):
            environment.pop(variable, None)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.wrapper, STACK.containerd, "--config", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        if not procs.wait_until(self._ready, READY_TIMEOUT, interval=0.1):
            raise RuntimeError(
                f"containerd node {self.name} not ready after {READY_TIMEOUT}s "
                f"(exit status {self.process.poll()}); log:\n{procs.tail(self.log_file)}"
            )

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"containerd node {self.name} exited {self.process.returncode} while starting; "
                f"log:\n{procs.tail(self.log_file)}"
            )
        version = self.ctr("version", check=False, timeout=10)
        return version.returncode == 0

    def _config_text(self) -> str:
        quoted = {
            "root": self.root,
            "state": self.state,
            "address": self.address,
            "ttrpc_address": self.address + ".ttrpc",
            "opt": self.base_dir / "opt",
        }
        return _CONFIG.format(**{key: json.dumps(str(value)) for key, value in quoted.items()})

    def stop(self) -> None:
        """Remove all containers, stop containerd by its pid, kill our leftover shims, unmount.

        Raises AssertionError at the end if mounts could not be removed (after trying all steps).
        """
        problems: list[str] = []
        try:
            if self.process is not None and self.process.poll() is None:
                problems += self.remove_all_containers()
        except (procs.CommandError, subprocess.TimeoutExpired) as error:
            problems.append(f"removing containers failed: {error}")
        if self.process is not None:
            procs.stop_process(self.process)
        for shim_pid in procs.pids_with_argument(self.address):
            procs.kill_pid(shim_pid)
        problems += procs.remove_cgroups(self.cgroup_parent)
        leftover_mounts = procs.unmount_all_under(self.base_dir)
        if leftover_mounts:
            problems.append(f"still mounted: {leftover_mounts}")
        else:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if problems:
            raise AssertionError(f"containerd node {self.name} teardown: " + "; ".join(problems))

    # -- ctr -------------------------------------------------------------------------------

    def ctr(
        self,
        *args: str,
        namespace: str = "default",
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run `ctr --address <this node> -n <namespace> args...`."""
        return procs.run(self.ctr_argv(*args, namespace=namespace), check=check, timeout=timeout)

    def import_image(self, oci_archive: Path, namespace: str = "default") -> None:
        self.ctr("images", "import", str(oci_archive), namespace=namespace, timeout=120)

    def ctr_argv(self, *args: str, namespace: str = "default") -> list[str]:
        return [STACK.ctr, "--address", self.address, "--namespace", namespace, *args]

    def run_args(
        self,
        image: str,
        container_id: str,
        command: Sequence[str],
        *,
        detach: bool = True,
        env: dict[str, str] | None = None,
        runtime_binary: Path | None = None,
        extra_args: Sequence[str] = (),
        namespace: str = "default",
    ) -> list[str]:
        """Arguments of `ctr run` with arch-runc (or `runtime_binary`) as runc and this node's
        private runc root and cgroup parent."""
        binary = runtime_binary or self.arch_runc
        args = ["run", "--runc-binary", str(binary), "--runc-root", str(self.runc_root)]
        args += ["--cgroup", f"{self.cgroup_parent}/{namespace}/{container_id}"]
        if detach:
            args.append("--detach")
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        return [*args, *extra_args, image, container_id, *command]

    def run_container(
        self,
        image: str,
        container_id: str,
        command: Sequence[str],
        *,
        namespace: str = "default",
        detach: bool = True,
        env: dict[str, str] | None = None,
        runtime_binary: Path | None = None,
        extra_args: Sequence[str] = (),
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """`ctr run`; the container is tracked for removal at teardown. Without `detach` this
        waits and returns ctr's exit status, which is the container's."""
        args = self.run_args(
            image,
            container_id,
            command,
            detach=detach,
            env=env,
            runtime_binary=runtime_binary,
            extra_args=extra_args,
            namespace=namespace,
        )
        self.track(namespace, container_id)
        return self.ctr(*args, namespace=namespace, check=check, timeout=timeout)

    def spawn_foreground_run(
        self,
        image: str,
        container_id: str,
        command: Sequence[str],
        *,
        namespace: str = "default",
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `ctr run` (attached, not detached) in the background; its exit status will be
        the container's. The caller stops it with procs.stop_process."""
        args = self.run_args(
            image, container_id, command, detach=False, env=env, namespace=namespace
        )
        self.track(namespace, container_id)
        return subprocess.Popen(
            self.ctr_argv(*args, namespace=namespace),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def track(self, namespace: str, container_id: str) -> None:
        """Remember a container to remove at teardown (for containers made by other means)."""
        if (namespace, container_id) not in self._created:
            self._created.append((namespace, container_id))

    def task_status(self, container_id: str, namespace: str = "default") -> str | None:
        """The STATUS column of `ctr task ls` for the container, or None when it has no task."""
        listing = self.ctr("task", "ls", namespace=namespace).stdout.splitlines()
        for row in listing[1:]:
            columns = row.split()
            if columns and columns[0] == container_id:
                return columns[-1]
        return None

    def wait_for_status(
        self, container_id: str, status: str, namespace: str = "default", timeout: float = 30.0
    ) -> None:
        if not procs.wait_until(
            lambda: self.task_status(container_id, namespace) == status, timeout, interval=0.1
        ):
            actual = self.task_status(container_id, namespace)
            raise AssertionError(f"task {namespace}/{container_id} is {actual}, not {status}")

    def container_info(self, container_id: str, namespace: str = "default") -> dict[str, object]:
        info: dict[str, object] = json.loads(
            self.ctr("containers", "info", container_id, namespace=namespace).stdout
        )
        return info

    def namespaces(self) -> list[str]:
        return self.ctr("namespaces", "ls", "--quiet").stdout.split()

    def container_ids(self, namespace: str) -> list[str]:
        return self.ctr("containers", "ls", "--quiet", namespace=namespace).stdout.split()

    # -- cleanup ---------------------------------------------------------------------------

    def remove_container(self, container_id: str, namespace: str = "default") -> list[str]:
        """Kill and delete the task, then delete the container; returns problems seen."""
        problems = []
        if self.task_status(container_id, namespace) is not None:
            self.ctr(
                "task",
                "kill",
                "--all",
                "--signal",
                "SIGKILL",
                container_id,
                namespace=namespace,
                check=False,
            )
            procs.wait_until(
                lambda: self.task_status(container_id, namespace) in ("STOPPED", None), 15
            )
            deleted = self.ctr(
                "task", "delete", "--force", container_id, namespace=namespace, check=False
            )
            if self.task_status(container_id, namespace) is not None:
                problems.append(f"task {namespace}/{container_id}: {procs.describe(deleted)}")
        if container_id in self.container_ids(namespace):
            removed = self.ctr(
                "containers", "delete", container_id, namespace=namespace, check=False
            )
            if removed.returncode != 0:
                problems.append(f"container {namespace}/{container_id}: {procs.describe(removed)}")
        return problems

    def remove_all_containers(self) -> list[str]:
        """Remove tracked containers first, then whatever else this private node holds."""
        problems = []
        for namespace, container_id in self._created:
            problems += self.remove_container(container_id, namespace)
        for namespace in self.namespaces():
            for container_id in self.container_ids(namespace):
                problems += self.remove_container(container_id, namespace)
        return problems


def runc_options(container_info: dict[str, object]) -> dict[str, str]:
    """The string fields of a container's runc shim options (binary_name, root, ...).

    `ctr containers info` (1.6) prints them as a protobuf Any: base64 of the encoded message.
    """
    runtime = container_info.get("Runtime")
    assert isinstance(runtime, dict), f"no Runtime in container info: {container_info}"
    options = runtime.get("Options")
    if not isinstance(options, dict):
        return {}
    encoded = options.get("value")
    if not isinstance(encoded, str):  # a ctr that prints the options decoded
        return {str(key): str(value) for key, value in options.items()}
    return _protobuf_strings(base64.b64decode(encoded), _RUNC_OPTION_STRING_FIELDS)


def _protobuf_strings(data: bytes, names: dict[int, str]) -> dict[str, str]:
    """Decode the named length-delimited fields of a protobuf message; skip everything else."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        field_number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type == 2:
            length, position = _varint(data, position)
            if field_number in names:
                fields[names[field_number]] = data[position : position + length].decode()
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
    return fields


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position
