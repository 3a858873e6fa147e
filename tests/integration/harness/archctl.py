"""Running `archctl` against a private node: its arch.toml (ARCH_CONFIG) and containerd socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.stack import current

from .containerd import ContainerdNode

STACK = current()

ARCHCTL_TIMEOUT = 300.0


def archctl_argv(node: ContainerdNode, *args: str) -> list[str]:
    return [sys.executable, "-m", "arch.cli.main", "--address", node.address, *args]


def archctl_environment(node: ContainerdNode) -> dict[str, str]:
    environment = {**os.environ, **node.arch.environment}
    # archctl's ctr is the stack's (tests/stack.py), as a host has the ctr of its containerd.
    environment["PATH"] = STACK.daemon_path(environment.get("PATH", os.defpath))
    for variable in ("CONTAINERD_ADDRESS", "AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        environment.pop(variable, None)
    return environment


def archctl(
    node: ContainerdNode, *args: str, timeout: float = ARCHCTL_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`archctl --address <node> args...` with the node's arch.toml; output captured."""
    return subprocess.run(
        archctl_argv(node, *args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=archctl_environment(node),
        check=False,
    )


def archctl_json(node: ContainerdNode, *args: str, expect_status: int = 0) -> Any:
    completed = archctl(node, *args, "--json")
    assert completed.returncode == expect_status, describe(completed)
    return json.loads(completed.stdout)


def describe(completed: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {completed.returncode}\nstdout:\n{completed.stdout[-4000:]}\n"
        f"stderr:\n{completed.stderr[-4000:]}"
    )


def by_name(document: Any) -> dict[str, dict[str, Any]]:
    """The "containers" of a list/checkpoint document keyed by NAMESPACE/ID."""
    return {f"{row['namespace']}/{row['container_id']}": row for row in document["containers"]}
