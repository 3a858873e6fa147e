"""A stand-in for runc that records how it was called (for pass-through unit tests)."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

# Records its pid, argv (NUL-separated), environment and ignored-signal mask, then exits with
# $FAKE_RUNC_EXIT. Shell, not Python, so that it adds no signal dispositions of its own.
SCRIPT = """#!/bin/sh
out={record}
echo $$ > "$out.pid"
printf '%s\\0' "$0" "$@" > "$out.argv"
env -0 > "$out.env"
grep SigIgn /proc/$$/status > "$out.sigign"
echo "fake runc stdout"
echo "fake runc stderr" >&2
exit ${{FAKE_RUNC_EXIT:-0}}
"""


class Call(NamedTuple):
    pid: int
    argv: list[str]
    env: dict[str, str]
    sigign: str


def install(directory: Path, name: str = "runc") -> tuple[Path, Path]:
    """Write the fake binary; returns (binary, record prefix)."""
    record = directory / f"{name}.record"
    binary = directory / name
    binary.write_text(SCRIPT.format(record=record))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary, record


def _part(record: Path, extension: str) -> Path:
    return record.parent / f"{record.name}.{extension}"


def read_call(record: Path) -> Call:
    argv = _part(record, "argv").read_bytes().split(b"\0")[:-1]
    env_items = _part(record, "env").read_bytes().split(b"\0")[:-1]
    env = dict(item.decode().split("=", 1) for item in env_items)
    for noise in ("PWD", "SHLVL", "_", "OLDPWD"):
        env.pop(noise, None)
    return Call(
        pid=int(_part(record, "pid").read_text()),
        argv=[arg.decode() for arg in argv],
        env=env,
        sigign=_part(record, "sigign").read_text().strip(),
    )


def was_called(record: Path) -> bool:
    return _part(record, "argv").exists()
