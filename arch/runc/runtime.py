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
    from collections.abc import Callable, Sequence

    from arch.runc.parser import RuncCommand
    from arch.runc.process_group import ProcessIdentity

RUNC_TIMEOUT_SECONDS = 600
DEFAULT_STATE_ROOT = "/run/runc"


class RuncError(Exception):
    """A runc call ARCH made on its own behalf failed."""

    def __init__(self, argv: Sequence[str], status: int, output: str) -> None:
        self.status = status
        self.output = output
        super().__init__(f"`{' '.join(argv)}` exited {status}: {output.strip()[-2000:]}")


class RuncTimeout(Exception):
    """A guarded runc call outlived its time limit; runc and its CRIU were killed."""


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

    def start_guarded(
        self, args: Sequence[str], on_start: Callable[[int], None], *, capture: bool = True
    ) -> GuardedRunc:
        """Start runc in a process group of its own that the kernel SIGKILLs when arch-runc
        dies (arch.runc.process_group); `on_start` gets its pid at once. With `capture`,
        stdin is closed and stdout+stderr captured, else runc uses this process's stdio.

        Call from the main thread: the parent-death signal follows the thread that spawned.
        """
        from arch.runc.process_group import ProcessIdentity, dies_with_this_process

        process = subprocess.Popen(
            self.argv(args),
            stdin=subprocess.DEVNULL if capture else None,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            text=True,
            errors="replace",
            env=self.environment(),
            preexec_fn=dies_with_this_process(),
        )
        leader = ProcessIdentity.of(process.pid)
        on_start(process.pid)
        return GuardedRunc(process, leader, args[0] if args else "")

    def run_guarded(
        self, args: Sequence[str], on_start: Callable[[int], None], *, capture: bool = True
    ) -> RuncResult:
        """start_guarded, then wait for it without a time limit."""
        return self.start_guarded(args, on_start, capture=capture).wait(None)

    def state(self, container_id: str) -> dict[str, Any]:
        document = json.loads(self.check(["state", container_id]))
        if not isinstance(document, dict):
            raise RuncError(self.argv(["state", container_id]), 0, "state is not a JSON object")
        return document

    def pause(self, container_id: str) -> None:
        self.check(["pause", container_id])

    def resume(self, container_id: str) -> None:
        self.check(["resume", container_id])

    def knows(self, container_id: str) -> bool:
        """Whether runc still has the container (`runc state` succeeds)."""
        return self.capture(["state", container_id]).status == 0

    def delete_force(self, container_id: str) -> RuncResult:
        """`runc delete --force` of what a stopped or failed restore left.

        runc restore bind-mounts the rootfs at <state dir>/<id>/criu-root while CRIU works; a
        runc killed meanwhile leaves it mounted. It is detached first: runc's delete removes its
        state directory recursively, and through that mount it would delete the container's
        files (the rootfs a rollback then cannot restore). Then, if runc no longer knows the
        container but its state directory is left (a restore killed before runc wrote its
        state: runc itself then fails on "directory not empty", and every later create on
        "already exists"), that directory is removed."""
        from arch.runc.leftover_mounts import MountsLeft, remove_tree, unmount_under

        if "/" in container_id or container_id in ("", ".", ".."):
            return self.capture(["delete", "--force", container_id])
        leftover = os.path.join(self.state_root(), container_id)
        try:
            unmounted = unmount_under(leftover) if os.path.isdir(leftover) else []
        except MountsLeft as error:
            return RuncResult(1, f"runc delete not run: {error}", "")
        result = self.capture(["delete", "--force", container_id])
        if unmounted:
            result = result._replace(output=f"{result.output}\nunmounted {' '.join(unmounted)}")
        if os.path.isdir(leftover) and self.capture(["state", container_id]).status != 0:
            try:
                remove_tree(leftover)
            except MountsLeft as error:
                message = f"{result.output}\ncannot unmount: {error}"
                return RuncResult(result.status, message, result.stdout)
            if not os.path.exists(leftover):
                return RuncResult(0, f"{result.output}\nremoved the leftover {leftover}", "")
        return result

    def state_root(self) -> str:
        """runc's --root: where it keeps one directory per container."""
        for index, token in enumerate(self.global_args):
            if token == "--root" and index + 1 < len(self.global_args):
                return self.global_args[index + 1]
            if token.startswith("--root="):
                return token.split("=", 1)[1]
        return DEFAULT_STATE_ROOT


class GuardedRunc:
    """A runc started by Runc.start_guarded."""

    def __init__(
        self, process: subprocess.Popen[str], leader: ProcessIdentity | None, subcommand: str
    ) -> None:
        self.process = process
        self.leader = leader
        self.subcommand = subcommand

    def wait(self, timeout: float | None) -> RuncResult:
        """runc's status and output; past `timeout` seconds its whole group (runc and its CRIU)
        is killed, and RuncTimeout raised once they are gone."""
        import subprocess

        from arch.runc.process_group import stop_group

        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            if self.leader is not None:
                stop_group(self.leader)
            self.process.kill()
            self.process.communicate()
            raise RuncTimeout(
                f"runc {self.subcommand} did not finish within {timeout} s"
            ) from None
        # Captured: stdout and stderr together; else runc wrote to this process's stdio.
        return RuncResult(self.process.returncode, output or "", output or "")
