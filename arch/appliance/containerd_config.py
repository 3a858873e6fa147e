"""Point a containerd CRI runtime at arch-runc by editing config.toml in place.

The runtime's `options.BinaryName` is set, and every other line and comment of the file is
kept. Where the key lives depends on the config version:

- version 2 (containerd 1.x, also read by 2.x):
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<runtime>.options]
- version 3 (containerd 2.x):
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.<runtime>.options]

Version 1 (no `version` key) is refused. A missing or empty file is first filled with
`containerd config default` (or, without containerd, a minimal config). Every edit is
checked with a strict TOML parser: the result must hold exactly the original settings plus
the wanted ones, else the file is left untouched.

Run as `python -m arch.appliance.containerd_config {set-binary,restore,show} ...`; set-binary
and restore print one JSON line {"changed": ..., "msg": ...}.
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import tomlkit
from tomlkit.exceptions import TOMLKitError

from arch.appliance.atomic_write import (
    EditResult,
    FileEditError,
    atomic_write,
    read_optional,
    restore_backup,
    save_backup_once,
)
from arch.appliance.editor_cli import non_empty, run_editor

PROG = "python -m arch.appliance.containerd_config"
CRI_RUNTIME_PLUGIN_BY_VERSION = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
RUNC_SHIM_TYPES = frozenset({"io.containerd.runc.v2", "io.containerd.runc.v1"})
NEW_RUNTIME_TYPE = "io.containerd.runc.v2"
RUNTIME_TYPE_KEY = "runtime_type"
OPTIONS_KEY = "options"
BINARY_NAME_KEY = "BinaryName"
DEFAULT_RUNTIME = "runc"
FALLBACK_VERSION = 2
CONTAINERD_FALLBACK_PATHS = ("/usr/local/bin/containerd", "/usr/bin/containerd")
CONFIG_DEFAULT_TIMEOUT_S = 60
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

TomlData = Mapping[str, Any]


@dataclass(frozen=True)
class _Edit:
    """One BinaryName edit: where, what, and in which quoting style."""

    runtime_path: tuple[str, ...]
    binary_name: str
    create_runtime: bool
    prefer_literal: bool

    @property
    def options_path(self) -> tuple[str, ...]:
        return (*self.runtime_path, OPTIONS_KEY)


# ---- reading -------------------------------------------------------------------------------


def parse_strict(text: str) -> dict[str, Any]:
    """Parse TOML with a strict parser (tomllib/tomli), as containerd would refuse bad TOML."""
    if sys.version_info >= (3, 11):
        import tomllib as toml_parser
    else:
        import tomli as toml_parser
    try:
        return toml_parser.loads(text)
    except ValueError as error:
        raise FileEditError(f"malformed TOML: {error}") from error


def config_version(data: TomlData) -> int:
    """The config's `version`, refusing the versions ARCH cannot edit."""
    version = data.get("version")
    if version is None or version == 1:
        raise FileEditError(
            "config version 1 (no `version = 2` or `version = 3` line) is not supported: "
            "rewrite the file as version 2 (containerd 1.x) or 3 (containerd 2.x), "
            "for example from `containerd config default`"
        )
    if isinstance(version, bool) or version not in CRI_RUNTIME_PLUGIN_BY_VERSION:
        raise FileEditError(f"unsupported config version {version!r} (supported: 2, 3)")
    return int(version)


def runtime_table_path(version: int, runtime: str) -> tuple[str, ...]:
    plugin = CRI_RUNTIME_PLUGIN_BY_VERSION[version]
    return ("plugins", plugin, "containerd", "runtimes", runtime)


def binary_name_in(data: TomlData, runtime: str = DEFAULT_RUNTIME) -> str | None:
    """The runtime's BinaryName in parsed config data, or None when it is not set."""
    options = _table_at(data, (*runtime_table_path(config_version(data), runtime), OPTIONS_KEY))
    if options is None or BINARY_NAME_KEY not in options:
        return None
    value = options[BINARY_NAME_KEY]
    if not isinstance(value, str):
        raise FileEditError(f"{BINARY_NAME_KEY} of runtime {runtime!r} is not a string: {value!r}")
    return value


def _table_at(data: TomlData, path: Sequence[str]) -> TomlData | None:
    node: Any = data
    for depth, key in enumerate(path):
        node = node.get(key)
        if node is None:
            return None
        if not isinstance(node, Mapping):
            raise FileEditError(f"`{_dotted(path[: depth + 1])}` is not a table")
    return node  # type: ignore[no-any-return]


def _dotted(path: Sequence[str]) -> str:
    return ".".join(_key_text(part, literal=False) for part in path)


# ---- editing text --------------------------------------------------------------------------


def edit_config_text(text: str, binary_name: str, runtime: str = DEFAULT_RUNTIME) -> str:
    """`text` with the runtime's BinaryName set to `binary_name`; `text` itself if already so.

    Raises FileEditError for a malformed or unsupported config.
    """
    data = parse_strict(text)
    version = config_version(data)
    runtime_path = runtime_table_path(version, runtime)
    runtime_table = _table_at(data, runtime_path)
    _check_runc_shim(runtime_table, runtime_path)
    options = _table_at(data, (*runtime_path, OPTIONS_KEY))
    if options is not None and options.get(BINARY_NAME_KEY) == binary_name:
        return text
    edit = _Edit(
        runtime_path=runtime_path,
        binary_name=binary_name,
        create_runtime=runtime_table is None,
        prefer_literal=version == 3,
    )
    expected = _expected_data(data, edit)
    # Missing tables are appended at the end (a pure addition); where TOML forbids that
    # (e.g. an inline-table ancestor), tomlkit inserts them in place.
    editors: tuple[Callable[[str, _Edit], str | None], ...] = (
        (_edit_in_place,) if options is not None else (_append_tables, _edit_in_place)
    )
    for editor in editors:
        candidate = editor(text, edit)
        if candidate is not None and _parses_to(candidate, expected):
            return candidate
    raise FileEditError(
        f"cannot set {BINARY_NAME_KEY} under `[{_dotted(edit.options_path)}]` without "
        "changing other settings (unsupported layout): set it by hand"
    )


def _check_runc_shim(runtime_table: TomlData | None, runtime_path: Sequence[str]) -> None:
    if runtime_table is None:
        return
    runtime_type = runtime_table.get(RUNTIME_TYPE_KEY)
    if runtime_type is not None and runtime_type not in RUNC_SHIM_TYPES:
        raise FileEditError(
            f"runtime `{_dotted(runtime_path)}` has runtime_type {runtime_type!r}, not a runc "
            f"shim ({', '.join(sorted(RUNC_SHIM_TYPES))}): {BINARY_NAME_KEY} does not apply"
        )


def _expected_data(data: TomlData, edit: _Edit) -> dict[str, Any]:
    expected: dict[str, Any] = copy.deepcopy(dict(data))
    node = expected
    for key in edit.options_path:
        node = node.setdefault(key, {})
    node[BINARY_NAME_KEY] = edit.binary_name
    if edit.create_runtime:
        runtime = expected
        for key in edit.runtime_path:
            runtime = runtime[key]
        runtime[RUNTIME_TYPE_KEY] = NEW_RUNTIME_TYPE
    return expected


def _parses_to(text: str, expected: TomlData) -> bool:
    try:
        return parse_strict(text) == expected
    except FileEditError:
        return False


def _append_tables(text: str, edit: _Edit) -> str:
    blocks = []
    if edit.create_runtime:
        blocks.append(
            _table_block(edit.runtime_path, RUNTIME_TYPE_KEY, NEW_RUNTIME_TYPE, edit.prefer_literal)
        )
    blocks.append(
        _table_block(edit.options_path, BINARY_NAME_KEY, edit.binary_name, edit.prefer_literal)
    )
    head = text if text.endswith("\n") else text + "\n"
    return head + "".join("\n" + block for block in blocks)


def _table_block(path: Sequence[str], key: str, value: str, literal: bool) -> str:
    header = ".".join(_key_text(part, literal) for part in path)
    return f"[{header}]\n  {key} = {_string_item(value, literal).as_string()}\n"


def _key_text(part: str, literal: bool) -> str:
    if BARE_KEY.fullmatch(part):
        return part
    return _string_item(part, literal).as_string()


def _string_item(value: str, literal: bool) -> tomlkit.items.String:
    if literal:
        try:
            return tomlkit.string(value, literal=True)
        except ValueError:  # a quote or control character: needs a basic string
            pass
    return tomlkit.string(value)


def _edit_in_place(text: str, edit: _Edit) -> str | None:
    try:
        document = tomlkit.parse(text)
        options = _tomlkit_options_table(document, edit)
        existing = options.get(BINARY_NAME_KEY)
        literal = _is_literal(existing) if existing is not None else edit.prefer_literal
        options[BINARY_NAME_KEY] = _string_item(edit.binary_name, literal)
        if existing is None:
            _indent_like_siblings(options, BINARY_NAME_KEY)
        return tomlkit.dumps(document)
    except (TOMLKitError, KeyError, TypeError, ValueError):
        return None


def _tomlkit_options_table(document: tomlkit.TOMLDocument, edit: _Edit) -> Any:
    node: Any = document
    runtime_depth = len(edit.runtime_path) - 1
    for depth, key in enumerate(edit.options_path):
        if key not in node:
            # A table inside an inline table must be inline too.
            table: Any = (
                tomlkit.inline_table()
                if isinstance(node, tomlkit.items.InlineTable)
                else tomlkit.table()
            )
            if depth == runtime_depth and edit.create_runtime:
                table.add(RUNTIME_TYPE_KEY, _string_item(NEW_RUNTIME_TYPE, edit.prefer_literal))
            node[key] = table
        node = node[key]
    return node


def _is_literal(item: Any) -> bool:
    return isinstance(item, tomlkit.items.String) and item.as_string().startswith("'")


def _indent_like_siblings(table: Any, key: str) -> None:
    """Give a key added to an indented table the indentation of its neighbours."""
    if not isinstance(table, tomlkit.items.Table):
        return
    for sibling_key, sibling in table.value.body:
        if sibling_key is None or sibling_key.key == key:
            continue
        if isinstance(sibling, (tomlkit.items.Table, tomlkit.items.AoT)):
            continue
        added = table.value.item(key)
        if isinstance(added, tomlkit.items.Item):
            added.trivia.indent = sibling.trivia.indent
        return


# ---- operations ----------------------------------------------------------------------------


def set_binary(
    config: Path,
    binary_name: str,
    backup: Path,
    *,
    runtime: str = DEFAULT_RUNTIME,
    containerd_bin: str | None = None,
    fallback_version: int = FALLBACK_VERSION,
) -> EditResult:
    """Make `runtime` in `config` use `binary_name`, saving the pre-ARCH file once at `backup`."""
    original = read_optional(config)
    origin = ""
    if original is None or not original.strip():
        base_text, origin = default_config_text(containerd_bin, fallback_version)
    else:
        base_text = _decode(original, config)
    try:
        new_text = edit_config_text(base_text, binary_name, runtime)
    except FileEditError as error:
        raise FileEditError(f"{config}: {error}") from error
    new_bytes = new_text.encode("utf-8")
    if new_bytes == original:
        return EditResult(
            False, f"{BINARY_NAME_KEY} of runtime {runtime!r} in {config} is already {binary_name}"
        )
    save_backup_once(config, original, backup)
    atomic_write(config, new_bytes)
    created = f" (created from {origin})" if origin else ""
    message = f"set {BINARY_NAME_KEY} of runtime {runtime!r} to {binary_name} in {config}{created}"
    return EditResult(True, message + _imports_note(new_text))


def show_binary(config: Path, runtime: str = DEFAULT_RUNTIME) -> str | None:
    """The runtime's BinaryName in `config`, or None (no file, empty file, or not set)."""
    content = read_optional(config)
    if content is None or not content.strip():
        return None
    try:
        return binary_name_in(parse_strict(_decode(content, config)), runtime)
    except FileEditError as error:
        raise FileEditError(f"{config}: {error}") from error


def default_config_text(containerd_bin: str | None, fallback_version: int) -> tuple[str, str]:
    """(config text, where it came from) for a config file that is missing or empty."""
    binary = _find_containerd(containerd_bin)
    if binary is not None:
        try:
            return _containerd_config_default(binary), f"`{binary} config default`"
        except FileNotFoundError:
            pass  # vanished between lookup and exec: same as not installed
    text = (
        "# Written by ARCH: containerd was not installed, so `containerd config default`\n"
        "# could not be used. Settings not listed here keep containerd's defaults.\n"
        f"version = {fallback_version}\n"
    )
    return text, f"a minimal version {fallback_version} config (containerd not found)"


def _find_containerd(containerd_bin: str | None) -> str | None:
    if containerd_bin is not None:
        return shutil.which(containerd_bin)
    for candidate in ("containerd", *CONTAINERD_FALLBACK_PATHS):
        found = shutil.which(candidate)
        if found is not None:
            return found
    return None


def _containerd_config_default(binary: str) -> str:
    try:
        completed = subprocess.run(
            [binary, "config", "default"],
            capture_output=True,
            timeout=CONFIG_DEFAULT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        message = f"`{binary} config default` did not finish in {error.timeout} s"
        raise FileEditError(message) from error
    if completed.returncode != 0:
        detail = completed.stderr.decode("utf-8", "replace").strip()
        raise FileEditError(
            f"`{binary} config default` failed (exit {completed.returncode}): {detail}"
        )
    return _decode(completed.stdout, Path(f"output of {binary} config default"))


def _decode(content: bytes, source: Path) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileEditError(f"{source} is not UTF-8 text: {error}") from error


def _imports_note(text: str) -> str:
    imports = parse_strict(text).get("imports")
    if not imports:
        return ""
    return f"; note: files from imports {imports!r} are merged on top and may override it"


# ---- command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Point a containerd CRI runtime at arch-runc in config.toml, and undo it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    set_binary_cmd = commands.add_parser(
        "set-binary", help="set the runtime's options.BinaryName (creating the config if needed)"
    )
    set_binary_cmd.add_argument("--config", type=Path, required=True, help="config.toml path")
    set_binary_cmd.add_argument(
        "--binary-name",
        type=non_empty,
        required=True,
        help="the runc binary the runtime should call (arch-runc)",
    )
    set_binary_cmd.add_argument(
        "--backup",
        type=Path,
        required=True,
        help="where the pre-ARCH file is saved (never overwritten)",
    )
    set_binary_cmd.add_argument(
        "--containerd-bin", help="containerd binary for `config default` (default: on PATH)"
    )
    set_binary_cmd.add_argument(
        "--runtime",
        type=non_empty,
        default=DEFAULT_RUNTIME,
        help="CRI runtime name (default: %(default)s)",
    )
    set_binary_cmd.add_argument(
        "--fallback-version",
        type=int,
        choices=(2, 3),
        default=FALLBACK_VERSION,
        help="config version written when containerd is absent "
        "(default: %(default)s, read by containerd 1.x and 2.x)",
    )

    restore_cmd = commands.add_parser("restore", help="put the pre-ARCH file back")
    restore_cmd.add_argument("--config", type=Path, required=True, help="config.toml path")
    restore_cmd.add_argument("--backup", type=Path, required=True, help="the backup path")

    show_cmd = commands.add_parser("show", help="print the runtime's BinaryName, if set")
    show_cmd.add_argument("--config", type=Path, required=True, help="config.toml path")
    show_cmd.add_argument(
        "--runtime",
        type=non_empty,
        default=DEFAULT_RUNTIME,
        help="CRI runtime name (default: %(default)s)",
    )
    return parser


def run(args: argparse.Namespace) -> str | None:
    """Carry out a parsed command; returns what to print on stdout."""
    if args.command == "set-binary":
        return set_binary(
            args.config,
            args.binary_name,
            args.backup,
            runtime=args.runtime,
            containerd_bin=args.containerd_bin,
            fallback_version=args.fallback_version,
        ).to_json()
    if args.command == "restore":
        return restore_backup(args.config, args.backup).to_json()
    return show_binary(args.config, args.runtime)


def main(argv: Sequence[str] | None = None) -> int:
    return run_editor(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
