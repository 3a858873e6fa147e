"""The container stack the integration tests drive: which containerd, ctr, shim, dockerd, docker
and runc binaries.

By default the host's own (Debian 12: containerd 1.6, Docker 20.10, runc 1.1). With
ARCH_TEST_STACK=DIR the binaries of DIR/bin instead, as tests/newer-stack/install.sh lays them
out (containerd 2.x, Docker 28, runc 1.3): the same tests then run against the newer stack that
ECS on Amazon Linux 2023 runs. DIR/bin also goes first on the daemons' PATH, so that containerd
starts DIR's containerd-shim-runc-v2 and dockerd finds DIR's runc.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STACK_ENV = "ARCH_TEST_STACK"
# Debian has dockerd in /usr/sbin, Amazon Linux 2023 in /usr/bin. /usr/bin/docker, never
# /usr/local/bin/docker (an unrelated, newer client on the development machines).
_HOST_DOCKERD = ("/usr/sbin/dockerd", "/usr/bin/dockerd")


@dataclass(frozen=True)
class Stack:
    name: str
    containerd: str
    ctr: str
    shim: str
    dockerd: str
    docker: str
    runc: str | None  # None: the host's runc, wherever PATH finds it
    bin_dir: str | None = None  # put first on the daemons' PATH

    def daemon_path(self, path: str) -> str:
        """PATH for containerd/dockerd: this stack's bin directory first."""
        return os.pathsep.join([self.bin_dir, path]) if self.bin_dir else path


def _host_dockerd() -> str:
    return next((path for path in _HOST_DOCKERD if os.path.exists(path)), _HOST_DOCKERD[0])


def current() -> Stack:
    """The stack ARCH_TEST_STACK selects (the host's when unset)."""
    directory = os.environ.get(STACK_ENV, "")
    if not directory:
        return Stack(
            name="host",
            containerd="/usr/bin/containerd",
            ctr="/usr/bin/ctr",
            shim="/usr/bin/containerd-shim-runc-v2",
            dockerd=_host_dockerd(),
            docker="/usr/bin/docker",
            runc=None,
        )
    bin_dir = Path(directory) / "bin"
    return Stack(
        name=directory,
        containerd=str(bin_dir / "containerd"),
        ctr=str(bin_dir / "ctr"),
        shim=str(bin_dir / "containerd-shim-runc-v2"),
        dockerd=str(bin_dir / "dockerd"),
        docker=str(bin_dir / "docker"),
        runc=str(bin_dir / "runc") if (bin_dir / "runc").exists() else None,
        bin_dir=str(bin_dir),
    )

