"""Fault points armed for one containerd node (arch.failpoints), and what an image holds.

The node's arch.toml gets `failpoints = true`; containers of the node run with a runtime
wrapper that exports ARCH_FAILPOINTS from a file before it execs the arch-runc under test, so a
test arms a point for exactly the calls it makes while the file says so. archctl (gc) is run
with the variable directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.containerd import ContainerdNode

_WRAPPER = """#!/bin/sh
# Written by the ARCH integration-test harness: arm the fault points the test named.
spec=$(cat {spec} 2>/dev/null)
if [ -n "$spec" ]; then ARCH_FAILPOINTS=$spec; export ARCH_FAILPOINTS; fi
exec {arch_runc} "$@"
"""
_FIRED = re.compile(r"failpoint (\S+) fired: (\S+)")


class Faults:
    """The fault points of one node: arm() before a call, disarm() after it."""

    def __init__(self, node: ContainerdNode, arch_runc: Path) -> None:
        self.node = node
        self.spec_file = node.base_dir / "failpoints.spec"
        self.wrapper = node.base_dir / "arch-runc-faulty"
        self.wrapper.write_text(
            _WRAPPER.format(spec=_quote(self.spec_file), arch_runc=_quote(arch_runc))
        )
        os.chmod(self.wrapper, 0o755)
        config = node.arch.config_file
        config.write_text(config.read_text() + "failpoints = true\n")
        self.disarm()

    def arm(self, point: str, action: str) -> None:
        self.spec_file.write_text(f"{point}={action}\n")

    def disarm(self) -> None:
        self.spec_file.write_text("")

    def fired(self) -> list[tuple[str, str]]:
        """(point, action) of every firing ARCH's log recorded on this node, oldest first."""
        try:
            text = self.node.arch.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return _FIRED.findall(text)


@dataclass(frozen=True)
class ImageState:
    """What is published at an image path: its identity (metadata digest) and generation."""

    identity: str | None
    generation: int | None
    lineage: str | None


def image_state(image_dir: Path) -> ImageState:
    try:
        data = (image_dir / "metadata.json").read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return ImageState(None, None, None)
    document = json.loads(data)
    return ImageState(
        hashlib.sha256(data).hexdigest(), document.get("generation"), document.get("lineage")
    )


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"
