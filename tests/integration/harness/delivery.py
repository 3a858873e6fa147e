"""Helpers of the delivery tests (tests/integration/delivery): archctl as a command, the role's
host lock and how long a role run may take."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROLE_LOCK = "/tmp/arch-role.lock"
# The role and the userdata take minutes on a host where CRIU must be checked and services
# restarted; a hung run must still end the test.
ROLE_TIMEOUT = 1800


def archctl(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """archctl of the package under test, as a command (exit status, stdout, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "arch.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        check=False,
    )
