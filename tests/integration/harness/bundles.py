"""OCI bundles for driving runc (or arch-runc) directly, and a runc CLI wrapper."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import procs
from .images import BusyboxImage

# runc's logrus text output starts with time="..."; the only part of an error that varies.
_LOGRUS_TIME = re.compile(r'time="[^"]*"')


def make_bundle(
    runc: Path,
    image: BusyboxImage,
    directory: Path,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
) -> Path:
    """An OCI bundle in `directory`: `runc spec`'s config (no terminal) running `args`."""
    directory.mkdir(parents=True, exist_ok=True)
    procs.run([str(runc), "spec", "--bundle", str(directory)])
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = list(args)
    config["process"]["env"] = [
        *config["process"]["env"],
        *(f"{key}={value}" for key, value in (env or {}).items()),
    ]
    config_path.write_text(json.dumps(config, indent=2))
    image.unpack_rootfs(directory / "rootfs")
    return directory


class RuncCli:
    """One runc-compatible binary with a fixed --root; stdio of containers go to files."""

    def __init__(self, binary: Path, root: Path, env: Mapping[str, str] | None = None) -> None:
        self.binary = binary
        self.root = root
        # Extra variables (e.g. ARCH_CONFIG) on top of this process's environment.
        self.env = {**os.environ, **env} if env is not None else None

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return procs.run(
            [str(self.binary), "--root", str(self.root), *args],
            check=check,
            timeout=timeout,
            env=self.env,
        )

    def detached(
        self, *args: str, output: Path, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command that leaves a container holding its stdio (create, run --detach).

        The container inherits stdout/stderr, so they go to `output` (a pipe would never close).
        """
        with output.open("ab") as sink:
            return subprocess.run(
                [str(self.binary), "--root", str(self.root), *args],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                timeout=timeout,
                env=self.env,
                check=False,
            )

    def force_delete(self, container_id: str) -> None:
        self("delete", "--force", container_id, check=False)


def normalise_runc_error(text: str) -> str:
    """runc's stderr with the logrus timestamp removed (the only field that varies)."""
    return _LOGRUS_TIME.sub('time="<time>"', text)
