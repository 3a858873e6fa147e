"""CRIU options that must be the same at checkpoint and at restore.

An image dumped with --tcp-established (or file locks, external unix sockets, a shell job, a
cgroup mode, an empty namespace) only restores when runc restore is given the same option, so
ARCH records them in the image's metadata and replays them. The values come from the caller's
checkpoint command, the host configuration and, at restore, shared storage: only the flags
below, with well-formed values, are ever passed on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from arch.runc.parser import RuncCommand

BOOLEAN_FLAGS = ("tcp-established", "ext-unix-sk", "shell-job", "file-locks")
VALUED_FLAGS = {
    "manage-cgroups-mode": frozenset({"soft", "full", "strict", "ignore"}),
    "empty-ns": frozenset({"network", "cgroup", "ipc", "mount", "pid", "user", "uts"}),
}


class CriuOptionError(ValueError):
    """An option that is not a shared checkpoint/restore CRIU option, or a bad value."""


def parse_options(items: Iterable[str], source: str) -> list[str]:
    """Validate `--flag` / `--flag=value` strings; returns them normalised to that form."""
    return [_normalise(item, source) for item in items]


def from_command(command: RuncCommand) -> list[str]:
    """The shared CRIU options a `runc checkpoint` command carries."""
    options = [f"--{name}" for name in BOOLEAN_FLAGS if command.has(name)]
    for name in VALUED_FLAGS:
        value = command.get(name)
        if value is not None:
            options.append(_normalise(f"--{name}={value}", "the checkpoint command"))
    return options


def merge(requested: Sequence[str], defaults: Sequence[str]) -> list[str]:
    """The caller's options, plus each host default the caller did not set itself."""
    names = {_name(option) for option in requested}
    return [*requested, *(option for option in defaults if _name(option) not in names)]


def as_runc_args(options: Sequence[str]) -> list[str]:
    """runc's argv form: `--flag` or `--flag value`."""
    args: list[str] = []
    for option in options:
        name, _, value = option.partition("=")
        args.extend([name, value] if value else [name])
    return args


def _name(option: str) -> str:
    return option.partition("=")[0].lstrip("-")


def _normalise(item: str, source: str) -> str:
    name, has_value, value = item.lstrip("-").partition("=")
    if name in BOOLEAN_FLAGS and not has_value:
        return f"--{name}"
    allowed = VALUED_FLAGS.get(name)
    if allowed is not None and value in allowed:
        return f"--{name}={value}"
    raise CriuOptionError(
        f"{source}: {item!r} is not one of the CRIU options ARCH passes to both checkpoint and "
        f"restore (--{', --'.join(BOOLEAN_FLAGS)}, "
        + ", ".join(f"--{n}={'|'.join(sorted(v))}" for n, v in VALUED_FLAGS.items())
        + ")"
    )
