"""The real runc as ARCH calls it on its own behalf (state, pause, resume, checkpoint, restore).

Calls carry the caller's global options (--root, --log, --systemd-cgroup, --criu, ...) so they
act on the same runc state directory the caller uses, whatever engine or host layout that is.

The host's CRIU (arch.toml `criu`) reaches runc through PATH: runc >= 1.2 ignores its global
--criu option (with a warning on stderr) and runs the `criu` it finds on PATH, so the directory
of a configured .../criu goes first on the PATH of every call. A configured CRIU with another
file name can only be given as --criu, which only runc < 1.2 honours.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Sequence

    from arch.runc.parser import RuncCommand

RUNC_TIMEOUT_SECONDS = 600


class RuncError(Exception):
    """A runc call ARCH made on its own behalf failed."""

    def __init__(self, argv: Sequence[str], status: int, output: str) -> None:
        self.status = status
        self.output = output
        super().__init__(f"`{' '.join(argv)}` exited {status}: {output.strip()[-2000:]}")


class RuncResult(NamedTuple):
    status: int
    output: str  # stdout then stderr, for messages
    stdout: str


class Runc:
    """The real runc binary plus the global options of the call being handled."""

    def __init__(
        self, binary: str, global_args: Sequence[str], criu: str, criu_dir: str | None = None
    ) -> None:
        self.binary = binary
        self.global_args = list(global_args)
        self.criu = criu  # the CRIU these calls use (runc's --criu, else runc finds it on PATH)
        self.criu_dir = criu_dir  # goes first on runc's PATH, so that runc finds self.criu

    @classmethod
    def for_command(cls, binary: str, command: RuncCommand, criu: str | None = None) -> Runc:
        """runc with the command's global options; `criu` (the host's) unless it names one."""
        global_args = [token for option in command.global_options for token in option.tokens]
        requested = command.get_global("criu")
        criu_dir = None
        if requested is None and criu is not None:
            if os.path.basename(criu) == "criu":
                criu_dir = os.path.dirname(criu)
            else:
                global_args += ["--criu", criu]
        chosen = requested or criu or shutil.which("criu") or "criu"
        return cls(binary, global_args, chosen, criu_dir)

    def argv(self, args: Sequence[str]) -> list[str]:
        return [self.binary, *self.global_args, *args]

    @staticmethod
    def subcommand_args(command: RuncCommand) -> list[str]:
        """A (derived) command's argv after its global options, to run with this runc's own."""
        for option in command.global_options:
            command = command.without_global_option(option.name)
        return command.render()

    def environment(self) -> dict[str, str] | None:
        """runc's environment: ours, with the CRIU's directory first on PATH (None: ours)."""
        if self.criu_dir is None:
            return None
        search_path = os.environ.get("PATH", os.defpath)
        return {**os.environ, "PATH": os.pathsep.join([self.criu_dir, search_path])}

    def capture(self, args: Sequence[str]) -> RuncResult:
        """Run runc with stdin closed and stdout and stderr captured."""
        completed = subprocess.run(
            self.argv(args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=RUNC_TIMEOUT_SECONDS,
            env=self.environment(),
            check=False,
        )
        return RuncResult(
            completed.returncode, completed.stdout + completed.stderr, completed.stdout
        )

    def check(self, args: Sequence[str]) -> str:
        """runc's stdout; RuncError (with stdout and stderr) when it fails."""
        result = self.capture(args)
        if result.status != 0:
            raise RuncError(self.argv(args), result.status, result.output)
        return result.stdout

    def inherit_stdio(self, args: Sequence[str]) -> int:
        """Run runc on this process's own stdio (a restore maps the container's stdio to it)."""
        return subprocess.run(self.argv(args), env=self.environment(), check=False).returncode

    def state(self, container_id: str) -> dict[str, Any]:
        document = json.loads(self.check(["state", container_id]))
        if not isinstance(document, dict):
            raise RuncError(self.argv(["state", container_id]), 0, "state is not a JSON object")
        return document

    def pause(self, container_id: str) -> None:
        self.check(["pause", container_id])

    def resume(self, container_id: str) -> None:
        self.check(["resume", container_id])

    def delete_force(self, container_id: str) -> RuncResult:
        return self.capture(["delete", "--force", container_id])


def binary_version(binary: str) -> str:
    """The first line of `binary --version` ("runc version 1.1.5", "Version: 4.2.1")."""
    try:
        completed = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as error:
        return f"unknown ({error.strerror})"
    lines = completed.stdout.strip().splitlines()
    return lines[0] if lines else "unknown"
