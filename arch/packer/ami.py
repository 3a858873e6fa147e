"""The ARCH AMI builds of packer/, for old and current packers alike.

packer/ declares its plugins in a `packer { required_plugins ... }` block (Packer >= 1.7, which
installs them with `packer init`). Debian's packer 1.6.6 rejects that block and its built-in
amazon builder predates `metadata_options` (IMDSv2). For such a packer the templates are staged
in a temporary copy without the `packer` block, the local (null) build is validated and built
in full, and the AMI flavours are checked for syntax only. Same files, both generations.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from arch import __version__
from arch.delivery.resources import CHECKOUT_DIR, ansible_dir
from arch.delivery.wheel import WheelInfo, is_checkout
from arch.packer.driver import Artifact, Packer, PackerError, read_manifest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from arch.packer.machine_readable import MachineEvent

LOCAL_BUILD = "local.null.local"
FLAVOURS = ("ecs", "batch")
ARCHITECTURES = ("x86_64", "arm64")
# Every AMI build: flavour -> architecture -> packer's build name.
FLAVOUR_BUILDS = {
    flavour: {arch: f"{flavour}.amazon-ebs.{flavour}-{arch}" for arch in ARCHITECTURES}
    for flavour in FLAVOURS
}
SETTINGS_FILE = "variables.pkr.hcl"
SOURCE_AMI_FILE = "source_ami.pkr.hcl"
# What replaces source_ami.pkr.hcl where no AWS data source may be read: packer < 1.7 (no data
# sources) and the local build (no AWS). The flavours are then only checked for syntax, or not
# run at all.
OFFLINE_SOURCE_AMI = """\
# Written by archctl ami in its staged copy of packer/: no AWS data source here (packer < 1.7,
# or the local build). The source AMIs are the ids given, if any.
locals {
  source_ami_x86_64 = var.source_ami_x86_64
  source_ami_arm64  = var.source_ami_arm64
}
"""
FULL, SYNTAX = "full", "syntax only"


@dataclass(frozen=True)
class TemplateCheck:
    """One line of `archctl ami validate`."""

    name: str
    ok: bool
    level: str  # FULL, SYNTAX, or "fmt"
    detail: str


def strip_packer_block(text: str) -> str:
    """The file without its top-level `packer { ... }` block (packer fmt puts the block's
    closing brace alone at column 0)."""
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    inside = False
    for line in lines:
        if not inside and line.startswith("packer {"):
            inside = True
            continue
        if inside:
            if line.rstrip("\r\n") == "}":
                inside = False
            continue
        kept.append(line)
    if inside:
        raise PackerError("the packer { ... } block in variables.pkr.hcl has no closing brace")
    return "".join(kept)


@contextmanager
def staged_templates(packer: Packer, template_dir: Path, offline: bool = False) -> Iterator[Path]:
    """The directory to run this packer in: the templates themselves for packer >= 1.7, else a
    temporary copy whose settings file has no `packer` block. `offline` (the local build), or
    a packer without data sources: the copy's source_ami.pkr.hcl reads nothing from AWS."""
    current = packer.version().has_plugin_requirements
    if current and not offline:
        yield template_dir
        return
    with tempfile.TemporaryDirectory(prefix="arch-packer-") as staging:
        staged = Path(staging) / "packer"
        shutil.copytree(template_dir, staged, ignore=shutil.ignore_patterns("packer_cache"))
        if not current:
            settings = staged / SETTINGS_FILE
            settings.write_text(strip_packer_block(settings.read_text(encoding="utf-8")))
        (staged / SOURCE_AMI_FILE).write_text(OFFLINE_SOURCE_AMI)
        yield staged


def source_revision(checkout: Path = CHECKOUT_DIR) -> str:
    """The checkout's git commit (with `-dirty` for uncommitted changes), else "unknown"."""
    if not (checkout / ".git").exists():
        return "unknown"
    try:
        described = subprocess.run(
            ["git", "-C", str(checkout), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return described.stdout.strip() or "unknown"


def build_variables(
    wheel: WheelInfo, manifest: Path | None, overrides: Mapping[str, str]
) -> dict[str, str]:
    """What every run passes: the wheel baked (its version is the image's), the source
    revision, where the role and manifest are."""
    variables = {
        "arch_version": wheel.version,
        "arch_wheel": str(wheel.path.resolve()),
        "arch_wheel_sha256": wheel.sha256,
        "arch_source_revision": source_revision() if is_checkout() else "unknown",
        "ansible_dir": str(ansible_dir()),
    }
    if manifest is not None:
        variables["manifest_path"] = str(manifest)
    variables.update(overrides)
    return variables


def validate_templates(
    packer: Packer, template_dir: Path, overrides: Mapping[str, str]
) -> list[TemplateCheck]:
    """`packer fmt -check`, then `packer validate` of every build this packer can validate."""
    unformatted = packer.fmt_check(template_dir)
    checks = [
        TemplateCheck(
            "fmt",
            not unformatted,
            "fmt",
            f"needs `packer fmt`: {', '.join(unformatted)}" if unformatted else "formatted",
        )
    ]
    with placeholder_wheel() as wheel, staged_templates(packer, template_dir) as workdir:
        variables = build_variables(wheel, None, overrides)
        if packer.version().has_plugin_requirements:
            packer.init(workdir)
            checks.append(_validate_one(packer, workdir, "local", [LOCAL_BUILD], variables, FULL))
            for name, builds in FLAVOUR_BUILDS.items():
                only = list(builds.values())
                checks.append(_validate_one(packer, workdir, name, only, variables, FULL))
        else:
            checks.append(_validate_one(packer, workdir, "local", [LOCAL_BUILD], variables, FULL))
            syntax = _validate_one(packer, workdir, "", [], variables, SYNTAX)
            for name in FLAVOUR_BUILDS:
                checks.append(TemplateCheck(name, syntax.ok, SYNTAX, syntax.detail))
    return checks


@contextmanager
def placeholder_wheel() -> Iterator[WheelInfo]:
    """A stand-in wheel file for `validate`: the templates are checked, not a wheel (packer's
    file provisioner wants its source to exist). Named and versioned like this package's."""
    with tempfile.TemporaryDirectory(prefix="arch-validate-") as scratch:
        path = Path(scratch) / f"arch-{__version__}-py3-none-any.whl"
        path.write_bytes(b"")
        yield WheelInfo(path=path, version=__version__, sha256=hashlib.sha256(b"").hexdigest())


def _validate_one(
    packer: Packer,
    workdir: Path,
    name: str,
    only: Sequence[str],
    variables: Mapping[str, str],
    level: str,
) -> TemplateCheck:
    result = packer.validate(workdir, only, variables, syntax_only=level == SYNTAX)
    if result.returncode == 0:
        detail = f"valid for packer {packer.version()}"
        if level == SYNTAX:
            detail += " (syntax; full validation needs packer >= 1.7 and `packer init`)"
        return TemplateCheck(name, True, level, detail)
    return TemplateCheck(name, False, level, result.failure_message())


def flavour_builds(flavours: Sequence[str], architectures: Sequence[str]) -> list[str]:
    """packer's build names for these flavours and architectures (none given: all)."""
    unknown = sorted(set(flavours) - set(FLAVOURS))
    if unknown:
        raise PackerError(f"no AMI flavour {', '.join(unknown)} (known: {', '.join(FLAVOURS)})")
    strange = sorted(set(architectures) - set(ARCHITECTURES))
    if strange:
        raise PackerError(
            f"no architecture {', '.join(strange)} (known: {', '.join(ARCHITECTURES)})"
        )
    return [
        FLAVOUR_BUILDS[flavour][arch]
        for flavour in flavours or FLAVOURS
        for arch in architectures or ARCHITECTURES
    ]


def build_images(
    packer: Packer,
    template_dir: Path,
    *,
    local: bool,
    flavours: Sequence[str],
    architectures: Sequence[str] = (),
    wheel: WheelInfo,
    manifest: Path,
    overrides: Mapping[str, str],
    on_event: Callable[[MachineEvent], None] | None = None,
) -> list[Artifact]:
    """Run the builds; the artifacts of this run as the manifest records them."""
    if local:
        only = [LOCAL_BUILD]
    else:
        if not packer.version().has_plugin_requirements:
            raise PackerError(
                f"packer {packer.version()} cannot build the AMI flavours (no required_plugins; "
                "its amazon builder has no metadata_options for IMDSv2): use packer >= 1.7, or "
                "--local to provision this host"
            )
        only = flavour_builds(flavours, architectures)
    variables = build_variables(wheel, manifest, overrides)
    with staged_templates(packer, template_dir, offline=local) as workdir:
        if packer.version().has_plugin_requirements:
            packer.init(workdir)
        result = packer.build(workdir, only, variables, on_event)
    artifacts = read_manifest(manifest) if manifest.exists() else []
    if not artifacts:
        raise PackerError(
            f"packer finished but built nothing for {', '.join(only)}; its last words: "
            + "; ".join(event.text.strip() for event in result.events[-3:] if event.type == "ui")
        )
    return artifacts
