"""A private ARCH host configuration (arch.toml named by ARCH_CONFIG) per test "node".

Its `runc` is a recorder: a tiny shell script that logs each call's argv, then execs the real
runc. A call logged there proves that arch-runc ran and delegated to the configured runc: plain
runc used in arch-runc's place would never reach the recorder.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ARG_SEPARATOR = "\x1f"

_RECORDER = """#!/bin/sh
# Written by the ARCH integration-test harness: log argv, then become the real runc.
line=$(printf '%s\\037' "$@")
printf '%s\\n' "$line" >> {calls_log}
exec {real_runc} "$@"
"""


@dataclass(frozen=True)
class ArchHost:
    """Paths of one node's ARCH configuration and what the recorder saw."""

    config_file: Path
    state_dir: Path
    log_file: Path
    checkpoint_root: Path
    runc_calls_log: Path
    metrics_file: Path

    @property
    def environment(self) -> dict[str, str]:
        """Variables that point arch-runc (and daemons that start it) at this configuration."""
        return {"ARCH_CONFIG": str(self.config_file)}

    def runc_calls(self) -> list[list[str]]:
        """Every runc call arch-runc made through the recorder, as argv lists (oldest first)."""
        try:
            text = self.runc_calls_log.read_text()
        except FileNotFoundError:
            return []
        return [line.rstrip(ARG_SEPARATOR).split(ARG_SEPARATOR) for line in text.splitlines()]

    def runc_calls_for(self, container_id: str) -> list[list[str]]:
        """Recorded calls whose last argument is `container_id` or which name it."""
        return [call for call in self.runc_calls() if container_id in call]

    def subcommands_for(self, container_id: str) -> list[str]:
        """The runc subcommands (create, start, kill, ...) recorded for `container_id`."""
        return [_subcommand(call) for call in self.runc_calls_for(container_id)]


_GLOBAL_FLAGS_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}


def _subcommand(call: list[str]) -> str:
    index = 0
    while index < len(call):
        argument = call[index]
        if argument in _GLOBAL_FLAGS_WITH_VALUE:
            index += 2
        elif argument.startswith("-"):
            index += 1
        else:
            return argument
    return ""


def write_arch_host(
    directory: Path,
    real_runc: Path,
    checkpoint_root: Path | None = None,
    config_lines: Sequence[str] = (),
) -> ArchHost:
    """Create `directory` with arch.toml (plus `config_lines`), the recorder and state/log
    locations."""
    directory.mkdir(parents=True, exist_ok=True)
    host = ArchHost(
        config_file=directory / "arch.toml",
        state_dir=directory / "state",
        log_file=directory / "arch.log",
        checkpoint_root=checkpoint_root or directory / "checkpoint",
        runc_calls_log=directory / "runc-calls.log",
        metrics_file=directory / "metrics" / "arch.prom",
    )
    recorder = directory / "runc-recorder"
    recorder_text = _RECORDER.format(
        calls_log=_shell_quote(host.runc_calls_log), real_runc=_shell_quote(real_runc)
    )
    recorder.write_text(recorder_text)
    os.chmod(recorder, 0o755)
    host.checkpoint_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    criu = _appliance_criu()
    host.config_file.write_text(
        "\n".join(
            [
                f"runc = {json.dumps(str(recorder))}",
                *([f"criu = {json.dumps(criu)}"] if criu else []),
                f"checkpoint_root = {json.dumps(str(host.checkpoint_root))}",
                f"state_dir = {json.dumps(str(host.state_dir))}",
                f"log_file = {json.dumps(str(host.log_file))}",
                f"metrics_file = {json.dumps(str(host.metrics_file))}",
                f"image_key_file = {json.dumps(str(fleet_key_file()))}",
                'log_level = "debug"',
                *config_lines,
                "",
            ]
        )
    )
    return host


_fleet_key: list[Path] = []


def fleet_key_file() -> Path:
    """One signing key for every node of this test session (as a fleet shares one): images
    are signed by default, and nodes sharing a checkpoint root restore each other's."""
    if not _fleet_key:
        directory = Path(tempfile.mkdtemp(prefix="arch-test-fleet-key-"))
        atexit.register(shutil.rmtree, directory, True)
        key = directory / "image.key"
        key.touch(mode=0o600)
        key.write_text(os.urandom(32).hex() + "\n")
        _fleet_key.append(key)
    return _fleet_key[0]


def set_config_value(config_file: Path, key: str, toml_value: str) -> None:
    """Set `key` in the node's arch.toml (replacing its line, else adding one)."""
    line = f"{key} = {toml_value}"
    text = config_file.read_text()
    pattern = re.compile(rf"^{re.escape(key)} = .*$", re.M)
    text = pattern.sub(lambda _: line, text) if pattern.search(text) else text + line + "\n"
    config_file.write_text(text)


def allow_unsigned(config_file: Path) -> None:
    """Signing off and unsigned images restored: for tests of what a writer of the storage
    without a key meets beyond the signature (archive policy, credentials, corrupt images)."""
    set_config_value(config_file, "image_key_file", '""')
    set_config_value(config_file, "unsigned_images", '"allow"')


def _appliance_criu() -> str | None:
    """The CRIU the installed appliance uses (one that works on this kernel), if configured."""
    from arch.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

    try:
        return load_config(DEFAULT_CONFIG_PATH).criu
    except ConfigError:
        return None


def _shell_quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"
