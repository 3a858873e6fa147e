"""Hand a runc call to the real runc: same argv, environment, stdio, exit status and signals.

The process image is replaced (exec, not spawn), so containerd's pipes, inherited descriptors
(--preserve-fds, console and pidfd sockets) and signals reach runc directly. Nothing here writes
to stdout or stderr except when the real runc cannot be run at all.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

from arch.config import ConfigError, HostConfig, config_path, load_config

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

# Exit status when the real runc cannot be executed (the shell's "command not found").
EXIT_RUNC_UNAVAILABLE = 127
FALLBACK_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


class RuncNotFound(Exception):
    """No usable real runc binary is configured or installed."""


def resolve_runc(config: HostConfig | None = None) -> str:
    """The real runc: arch.toml's `runc`, else a `runc` on PATH that is not ARCH itself."""
    configured = (config or load_config_for_pass_through()).runc
    if configured is not None:
        return configured
    found = _search_runc()
    if found is None:
        raise RuncNotFound(
            f"no real runc found: set `runc` in {config_path()} or install runc on PATH"
        )
    return found


def load_config_for_pass_through() -> HostConfig:
    """The host configuration; defaults when it is malformed (logged), which must not break
    pass-through: runc is then searched on PATH."""
    try:
        return load_config()
    except ConfigError as error:
        from arch.log import setup_logging

        defaults = HostConfig(config_path())
        logger = setup_logging(defaults.log_file, defaults.log_level)
        logger.warning("pass-through uses the runc on PATH: %s", error)
        return defaults


def _search_runc() -> str | None:
    own_paths = {os.path.realpath(sys.argv[0])} if sys.argv and sys.argv[0] else set()
    path_dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    for directory in [*path_dirs, *FALLBACK_DIRS]:
        candidate = os.path.join(directory, "runc")
        real = os.path.realpath(candidate)
        if real in own_paths or os.path.basename(real) == "arch-runc":
            continue
        if os.path.isfile(real) and os.access(real, os.X_OK):
            return candidate
    return None


def original_environment() -> dict[bytes, bytes]:
    """The environment this process was started with, before CPython touched it.

    CPython's locale coercion (PEP 538) adds LC_CTYPE=C.UTF-8 to os.environ under the C locale;
    the kernel's copy in /proc/self/environ is what the caller really passed.
    """
    with open("/proc/self/environ", "rb") as environ_file:
        entries = environ_file.read().split(b"\0")
    return dict(entry.split(b"=", 1) for entry in entries if b"=" in entry)


def exec_runc(runc: str, args: Sequence[str]) -> NoReturn:
    """Replace this process with `runc args...`; only returns by raising OSError."""
    # CPython ignores SIGPIPE and SIGXFSZ at start-up; ignored dispositions survive exec and
    # would leak into runc and the container's processes.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    os.execve(runc, [runc, *args], original_environment())


def pass_through(args: Sequence[str], config: HostConfig | None = None) -> int:
    """Run the real runc for `args`; returns only if it could not be executed."""
    runc = _runc_or_report(config)
    if runc is not None:
        try:
            exec_runc(runc, args)
        except OSError as error:
            _report_unexecutable(runc, error)
    return EXIT_RUNC_UNAVAILABLE


def run_runc(args: Sequence[str], config: HostConfig | None = None) -> int:
    """Like pass_through, but runc runs as a child (for callers that act once it is done):
    the same argv, environment and stdio; CPython's ignored signals are reset for it."""
    import subprocess

    runc = _runc_or_report(config)
    if runc is None:
        return EXIT_RUNC_UNAVAILABLE
    try:
        return subprocess.run([runc, *args], env=original_environment(), check=False).returncode
    except OSError as error:
        _report_unexecutable(runc, error)
        return EXIT_RUNC_UNAVAILABLE


def _runc_or_report(config: HostConfig | None) -> str | None:
    try:
        return resolve_runc(config)
    except RuncNotFound as error:
        print(f"arch-runc: {error}", file=sys.stderr)
        return None


def _report_unexecutable(runc: str, error: OSError) -> None:
    print(f"arch-runc: cannot execute the real runc {runc}: {error.strerror}", file=sys.stderr)
