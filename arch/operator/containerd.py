"""A client of containerd for ARCH's operator commands, built on containerd's own CLI (`ctr`).

Why ctr and not containerd's gRPC API: ctr ships with containerd (the role installs it, it matches
the daemon's version), it speaks every API version the daemon does, and it needs nothing in the
appliance's virtualenv (a gRPC stack plus containerd's protobuf definitions would be the only
heavy dependency of the package). A ctr call costs about 20 ms of start-up, small beside a
checkpoint's CRIU dump, and calls run in parallel where it matters.

The address is archctl's `--address`, else CONTAINERD_ADDRESS, else containerd's default socket
(see arch.cli.main.containerd_address).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Sequence

CTR = "ctr"
QUERY_TIMEOUT = 30.0
CONNECT_TIMEOUT = "5s"
# A checkpoint through containerd waits for ARCH's dump; the Spot window is two minutes.
CHECKPOINT_TIMEOUT = 300.0
# The task states containerd reports (`ctr task ls` STATUS column).
RUNNING, PAUSED, STOPPED, CREATED = "RUNNING", "PAUSED", "STOPPED", "CREATED"


class ContainerdError(Exception):
    """ctr could not do what was asked (containerd unreachable, no such container, ...)."""


class Task(NamedTuple):
    """A container's task as `ctr task ls` shows it."""

    container_id: str
    pid: int
    status: str


class Containerd:
    """containerd at one address, through ctr."""

    def __init__(self, address: str, ctr: str | None = None) -> None:
        self.address = address
        self.ctr = ctr or shutil.which(CTR) or CTR

    def argv(self, namespace: str, args: Sequence[str]) -> list[str]:
        return [
            self.ctr,
            "--address",
            self.address,
            "--connect-timeout",
            CONNECT_TIMEOUT,
            "--namespace",
            namespace,
            *args,
        ]

    def run(self, namespace: str, args: Sequence[str], timeout: float = QUERY_TIMEOUT) -> str:
        """Run ctr; its stdout, or ContainerdError with ctr's message."""
        self._check_socket()
        argv = self.argv(namespace, args)
        try:
            completed = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise ContainerdError(
                f"`ctr {' '.join(args)}` did not finish in {timeout:.0f}s"
            ) from error
        except OSError as error:
            raise ContainerdError(f"cannot run {self.ctr}: {error.strerror}") from error
        if completed.returncode != 0:
            message = (completed.stderr or completed.stdout).strip()
            raise ContainerdError(_ctr_message(message) or f"ctr exited {completed.returncode}")
        return completed.stdout

    def _check_socket(self) -> None:
        """A missing socket file is reported at once (ctr would retry for 10 s)."""
        path = (
            self.address[len("unix://") :] if self.address.startswith("unix://") else self.address
        )
        if path.startswith("/") and not os.path.exists(path):
            raise ContainerdError(f"containerd is not running here: no socket at {path}")

    def namespaces(self) -> list[str]:
        return sorted(self.run("default", ["namespaces", "ls", "--quiet"]).split())

    def container_ids(self, namespace: str) -> list[str]:
        return sorted(self.run(namespace, ["containers", "ls", "--quiet"]).split())

    def tasks(self, namespace: str) -> dict[str, Task]:
        """The namespace's tasks by container id."""
        return {
            task.container_id: task for task in parse_task_list(self.run(namespace, ["task", "ls"]))
        }

    def container_spec(self, namespace: str, container_id: str) -> dict[str, Any]:
        """The container's OCI runtime spec (config.json as containerd stores it)."""
        text = self.run(namespace, ["containers", "info", "--spec", container_id])
        try:
            spec = json.loads(text)
        except ValueError as error:
            raise ContainerdError(f"the spec of {namespace}/{container_id} is not JSON") from error
        if not isinstance(spec, dict):
            raise ContainerdError(f"the spec of {namespace}/{container_id} is not a JSON object")
        return spec

    def checkpoint(
        self,
        namespace: str,
        container_id: str,
        image_path: str,
        timeout: float = CHECKPOINT_TIMEOUT,
        *,
        leave_running: bool = False,
    ) -> None:
        """Checkpoint the task and let it exit, with CRIU's files at `image_path`.

        `leave_running`: without ctr's --exit. On a Batch host under a Spot notice arch-runc
        then keeps the task frozen (held, arch.spot.platform); elsewhere it still ends it.

        With an image path containerd passes the directory to the runtime and builds no
        checkpoint image of its own in its content store (no copy of the dump, no gzip of the
        writable layer): ARCH's image is the only one. containerd still pauses the task before
        and resumes it after, so its view of the task (and Docker's) stays consistent: the task
        ends in STOPPED.
        """
        exit_flag = [] if leave_running else ["--exit"]
        self.run(
            namespace,
            ["task", "checkpoint", *exit_flag, "--image-path", image_path, container_id],
            timeout=timeout,
        )



def parse_task_list(text: str) -> list[Task]:
    """The rows of `ctr task ls`: `TASK  PID  STATUS` after a header line."""
    tasks = []
    for row in text.splitlines()[1:]:
        columns = row.split()
        if len(columns) != 3:
            continue
        container_id, pid, status = columns
        tasks.append(Task(container_id, int(pid) if pid.isdigit() else 0, status))
    return tasks


def _ctr_message(text: str) -> str:
    """ctr's error without its "ctr: " prefix, on one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = " ".join(lines)
    return message[len("ctr: ") :] if message.startswith("ctr: ") else message
