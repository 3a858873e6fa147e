"""Register arch-runc as a Docker runtime in /etc/docker/daemon.json.

Merges {"runtimes": {NAME: {"path": PATH}}} into the file, keeping every other key, and on
request sets "default-runtime": NAME (what ECS needs, since it cannot pass --runtime). The
file is rewritten with two-space indentation, and only when its content has to change.

Run as `python -m arch.appliance.docker_config {set-runtime,restore,show} ...`; set-runtime
and restore print one JSON line {"changed": ..., "msg": ...}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arch.appliance.atomic_write import (
    EditResult,
    FileEditError,
    atomic_write,
    read_optional,
    restore_backup,
    save_backup_once,
)
from arch.appliance.editor_cli import non_empty, run_editor

PROG = "python -m arch.appliance.docker_config"
RUNTIMES_KEY = "runtimes"
RUNTIME_PATH_KEY = "path"
DEFAULT_RUNTIME_KEY = "default-runtime"
DEFAULT_NAME = "arch"
# dockerd refuses a daemon.json that redefines its built-in runtime.
RESERVED_RUNTIME_NAMES = frozenset({"runc"})
JSON_INDENT = 2


def check_runtime_name(name: str) -> str:
    """`name` if Docker accepts it as the name of an added runtime."""
    if not name.strip():
        raise FileEditError("the runtime name must not be empty")
    if name in RESERVED_RUNTIME_NAMES:
        raise FileEditError(f"the runtime name {name!r} is reserved by Docker: choose another")
    return name


def parse_daemon_config(content: bytes | None, source: Path) -> dict[str, Any]:
    """The daemon.json object; a missing or blank file is an empty object."""
    if content is None or not content.strip():
        return {}
    try:
        parsed = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FileEditError(f"{source}: malformed JSON: {error}") from error
    if not isinstance(parsed, dict):
        raise FileEditError(f"{source}: the top level is not a JSON object")
    return parsed


def with_runtime(
    daemon_config: dict[str, Any], name: str, runtime_path: str, make_default: bool
) -> dict[str, Any]:
    """A copy of `daemon_config` with runtime `name` calling `runtime_path`.

    Other keys of an existing entry for `name` (e.g. runtimeArgs) are kept. default-runtime is
    changed only when `make_default` is asked.
    """
    updated = copy.deepcopy(daemon_config)
    runtimes = updated.setdefault(RUNTIMES_KEY, {})
    if not isinstance(runtimes, dict):
        raise FileEditError(f'"{RUNTIMES_KEY}" is not a JSON object')
    entry = runtimes.setdefault(name, {})
    if not isinstance(entry, dict):
        raise FileEditError(f'"{RUNTIMES_KEY}.{name}" is not a JSON object')
    entry[RUNTIME_PATH_KEY] = runtime_path
    if make_default:
        updated[DEFAULT_RUNTIME_KEY] = name
    return updated


def render_daemon_config(daemon_config: dict[str, Any]) -> bytes:
    text = json.dumps(daemon_config, indent=JSON_INDENT, ensure_ascii=False) + "\n"
    return text.encode("utf-8")


def set_runtime(
    config: Path,
    name: str,
    runtime_path: str,
    backup: Path,
    *,
    make_default: bool = False,
) -> EditResult:
    """Add or update runtime `name` in `config`, saving the pre-ARCH file once at `backup`."""
    check_runtime_name(name)
    original = read_optional(config)
    current = parse_daemon_config(original, config)
    try:
        updated = with_runtime(current, name, runtime_path, make_default)
    except FileEditError as error:
        raise FileEditError(f"{config}: {error}") from error
    default_note = f' and "{DEFAULT_RUNTIME_KEY}": "{name}"' if make_default else ""
    if original is not None and updated == current:
        return EditResult(
            False, f"{config} already has runtime {name!r} at {runtime_path}{default_note}"
        )
    save_backup_once(config, original, backup)
    atomic_write(config, render_daemon_config(updated))
    return EditResult(True, f"set runtime {name!r} to {runtime_path} in {config}{default_note}")


def show_runtime_path(config: Path, name: str) -> str | None:
    """The path of runtime `name` in `config`, or None when it is not defined."""
    daemon_config = parse_daemon_config(read_optional(config), config)
    runtimes = daemon_config.get(RUNTIMES_KEY)
    if not isinstance(runtimes, dict):
        return None
    entry = runtimes.get(name)
    if not isinstance(entry, dict):
        return None
    path = entry.get(RUNTIME_PATH_KEY)
    return path if isinstance(path, str) else None


# ---- command line --------------------------------------------------------------------------


def _runtime_name_argument(value: str) -> str:
    try:
        return check_runtime_name(value)
    except FileEditError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Register arch-runc as a Docker runtime in daemon.json, and undo it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    set_runtime_cmd = commands.add_parser("set-runtime", help="add or update the runtime")
    set_runtime_cmd.add_argument("--config", type=Path, required=True, help="daemon.json path")
    set_runtime_cmd.add_argument(
        "--name",
        type=_runtime_name_argument,
        default=DEFAULT_NAME,
        help="runtime name (default: %(default)s; 'runc' is reserved by Docker)",
    )
    set_runtime_cmd.add_argument(
        "--path", type=non_empty, required=True, help="the binary Docker calls (arch-runc)"
    )
    set_runtime_cmd.add_argument(
        "--default",
        action="store_true",
        help=f'also set "{DEFAULT_RUNTIME_KEY}" to this runtime (ECS)',
    )
    set_runtime_cmd.add_argument(
        "--backup",
        type=Path,
        required=True,
        help="where the pre-ARCH file is saved (never overwritten)",
    )

    restore_cmd = commands.add_parser("restore", help="put the pre-ARCH file back")
    restore_cmd.add_argument("--config", type=Path, required=True, help="daemon.json path")
    restore_cmd.add_argument("--backup", type=Path, required=True, help="the backup path")

    show_cmd = commands.add_parser("show", help="print the runtime's path, if defined")
    show_cmd.add_argument("--config", type=Path, required=True, help="daemon.json path")
    show_cmd.add_argument("--name", default=DEFAULT_NAME, help="runtime name (default: arch)")
    return parser


def run(args: argparse.Namespace) -> str | None:
    """Carry out a parsed command; returns what to print on stdout."""
    if args.command == "set-runtime":
        return set_runtime(
            args.config, args.name, args.path, args.backup, make_default=args.default
        ).to_json()
    if args.command == "restore":
        return restore_backup(args.config, args.backup).to_json()
    return show_runtime_path(args.config, args.name)


def main(argv: Sequence[str] | None = None) -> int:
    return run_editor(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
