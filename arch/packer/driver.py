"""The packer CLI, driven with `-machine-readable` and read back through the manifest.

Every failure is a PackerError carrying packer's own words (its ui errors and stderr), so the
caller can print it without a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arch.packer.machine_readable import MachineEvent, parse_line

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

INSTALL_HINT = (
    "install packer (Debian: apt-get install packer; elsewhere "
    "https://developer.hashicorp.com/packer/install) or give its path with --packer"
)
# required_plugins, `packer init` and the external amazon/ansible plugins arrived in 1.7.0.
PLUGINS_VERSION = (1, 7, 0)


class PackerError(Exception):
    """packer is missing, or a packer command failed (the message is packer's own)."""


@dataclass(frozen=True)
class PackerVersion:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> PackerVersion:
        numbers = text.strip().lstrip("v").split("-")[0].split(".")
        try:
            major, minor, patch = (int(number) for number in [*numbers, "0", "0"][:3])
        except ValueError:
            raise PackerError(f"cannot read packer's version from {text!r}") from None
        return cls(major, minor, patch)

    @property
    def has_plugin_requirements(self) -> bool:
        """True for packers that read required_plugins and install plugins with `packer init`."""
        return (self.major, self.minor, self.patch) >= PLUGINS_VERSION

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


@dataclass
class RunResult:
    """What one packer run said: its exit status, events and ui errors."""

    argv: list[str]
    returncode: int
    events: list[MachineEvent] = field(default_factory=list)
    stderr: str = ""
    plain_output: list[str] = field(default_factory=list)  # lines outside the event format

    @property
    def errors(self) -> list[str]:
        return [event.text.strip() for event in self.events if event.ui_level == "error"]

    def failure_message(self) -> str:
        """packer's own account of the failure: its ui errors, else stderr, else plain output."""
        words = self.errors
        if not words and self.stderr.strip():
            words = [self.stderr.strip()]
        if not words:
            words = [line for line in self.plain_output if line.strip()][-20:]
        detail = "\n".join(words) or "no message"
        return f"`{' '.join(self.argv)}` failed (exit {self.returncode}):\n{detail}"


@dataclass(frozen=True)
class Artifact:
    """One entry of the manifest post-processor's output."""

    name: str
    builder_type: str
    artifact_id: str
    build_time: int
    custom_data: dict[str, str]

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> Artifact:
        return cls(
            name=str(entry.get("name", "")),
            builder_type=str(entry.get("builder_type", "")),
            artifact_id=str(entry.get("artifact_id", "")),
            build_time=int(entry.get("build_time", 0)),
            custom_data={str(k): str(v) for k, v in (entry.get("custom_data") or {}).items()},
        )


def read_manifest(path: Path, run_uuid: str | None = None) -> list[Artifact]:
    """The artifacts of the manifest's last run (packer appends runs to an existing file)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PackerError(f"cannot read the build manifest {path}: {error}") from None
    wanted = run_uuid or document.get("last_run_uuid")
    builds = document.get("builds")
    if not isinstance(builds, list):
        raise PackerError(f"{path} is not a packer manifest (no builds list)")
    return [
        Artifact.from_manifest(entry)
        for entry in builds
        if isinstance(entry, dict) and entry.get("packer_run_uuid") == wanted
    ]


def find_packer(explicit: str | None = None) -> str:
    """The packer binary: `explicit`, else PACKER_BINARY, else packer on PATH."""
    candidate = explicit or os.environ.get("PACKER_BINARY") or "packer"
    found = shutil.which(candidate)
    if found is None:
        raise PackerError(f"packer not found ({candidate!r}): {INSTALL_HINT}")
    return found


class Packer:
    """One packer binary. Commands run in the template directory given to each call."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = find_packer(binary)
        self._version: PackerVersion | None = None

    def version(self) -> PackerVersion:
        if self._version is None:
            result = self.run(["version"], cwd=None)
            if result.returncode != 0:
                raise PackerError(result.failure_message())
            reported = [event.data[0] for event in result.events if event.type == "version"]
            if not reported:
                raise PackerError(f"{self.binary} version printed no version event")
            self._version = PackerVersion.parse(reported[0])
        return self._version

    def run(
        self,
        arguments: Sequence[str],
        cwd: Path | None,
        on_event: Callable[[MachineEvent], None] | None = None,
    ) -> RunResult:
        """Run `packer -machine-readable ARGUMENTS`, streaming events to `on_event`."""
        argv = [self.binary, "-machine-readable", *arguments]
        # packer's own checkpoint telemetry would try the network on every run.
        environment = {**os.environ, "CHECKPOINT_DISABLE": "1"}
        try:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=environment,
            )
        except OSError as error:
            raise PackerError(f"cannot run {self.binary}: {error}") from None
        result = RunResult(argv=argv, returncode=-1)
        assert process.stdout is not None and process.stderr is not None
        with process:
            for line in process.stdout:
                event = parse_line(line)
                if event is None:
                    result.plain_output.append(line.rstrip("\n"))
                    continue
                result.events.append(event)
                if on_event is not None:
                    on_event(event)
            result.stderr = process.stderr.read()
        result.returncode = process.returncode
        return result

    def checked(
        self,
        arguments: Sequence[str],
        cwd: Path | None,
        on_event: Callable[[MachineEvent], None] | None = None,
    ) -> RunResult:
        """run(), raising PackerError with packer's message when it fails."""
        result = self.run(arguments, cwd, on_event)
        if result.returncode != 0:
            raise PackerError(result.failure_message())
        return result

    def fmt_check(self, template_dir: Path) -> list[str]:
        """Files `packer fmt` would change (empty: all formatted)."""
        result = self.run(["fmt", "-check", "."], cwd=template_dir)
        if result.returncode == 0:
            return []
        files = [line.strip() for line in result.plain_output if line.strip()]
        if not files:
            raise PackerError(result.failure_message())
        return files

    def init(self, template_dir: Path) -> RunResult:
        return self.checked(["init", "."], cwd=template_dir)

    def validate(
        self,
        template_dir: Path,
        only: Sequence[str] = (),
        variables: Mapping[str, str] | None = None,
        syntax_only: bool = False,
    ) -> RunResult:
        return self.run(
            [
                "validate",
                *_options(only, variables),
                *(["-syntax-only"] if syntax_only else []),
                ".",
            ],
            cwd=template_dir,
        )

    def build(
        self,
        template_dir: Path,
        only: Sequence[str] = (),
        variables: Mapping[str, str] | None = None,
        on_event: Callable[[MachineEvent], None] | None = None,
    ) -> RunResult:
        return self.checked(
            ["build", "-color=false", *_options(only, variables), "."],
            cwd=template_dir,
            on_event=on_event,
        )


def _options(only: Sequence[str], variables: Mapping[str, str] | None) -> list[str]:
    options = [f"-only={','.join(only)}"] if only else []
    for name, value in (variables or {}).items():
        options += ["-var", f"{name}={value}"]
    return options
