"""`archctl ami validate` / `archctl ami build [--local] [VAR=VALUE ...]`: the Packer templates."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from arch.delivery.definitions import DefinitionError, parse_assignments
from arch.delivery.resources import ResourceMissing, packer_dir
from arch.delivery.wheel import WheelError, WheelInfo, wheel_to_deliver
from arch.packer.ami import ARCHITECTURES, FLAVOURS, build_images, validate_templates
from arch.packer.driver import Packer, PackerError
from arch.packer.machine_readable import MachineEvent


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "ami",
        help="validate or build the ARCH AMIs (Packer templates under packer/)",
        description="Drive the Packer templates under packer/: the ECS and Batch AMI flavours, "
        "and a local (null) build that provisions this host through the same role.",
    )
    actions = parser.add_subparsers(dest="ami_action", metavar="ACTION", required=True)
    validate = actions.add_parser(
        "validate", help="packer fmt -check and packer validate of every template"
    )
    build = actions.add_parser("build", help="build the AMIs, or with --local provision this host")
    for action in (validate, build):
        action.add_argument("--packer", help="the packer binary (default: packer on PATH)")
        action.add_argument(
            "--templates", type=Path, help="the Packer template directory (default: packer/)"
        )
        action.add_argument("--json", action="store_true", help="print the result as JSON")
        action.add_argument(
            "variables", nargs="*", metavar="VAR=VALUE", help="packer variables (-var)"
        )
        action.set_defaults(run=run)
    build.add_argument(
        "--local", action="store_true", help="run the null source: provision this host"
    )
    build.add_argument(
        "--flavour",
        action="append",
        choices=FLAVOURS,
        help="AMI flavour to build (repeatable; default: all)",
    )
    build.add_argument(
        "--architecture",
        action="append",
        choices=ARCHITECTURES,
        help="CPU architecture to build for (repeatable; default: x86_64 and arm64)",
    )
    build.add_argument(
        "--wheel",
        type=Path,
        help="the arch wheel to bake (default: built from this checkout, or the installed arch "
        "packed again)",
    )
    build.add_argument(
        "--manifest",
        type=Path,
        default=Path("packer-manifest.json"),
        help="where packer's manifest goes (default: ./packer-manifest.json)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        overrides = parse_assignments(args.variables)
    except DefinitionError as error:
        print(f"archctl ami: {error}", file=sys.stderr)
        return 2
    try:
        templates = args.templates or packer_dir()
        packer = Packer(args.packer)
        if args.ami_action == "validate":
            return _validate(packer, templates, overrides, args.json)
        return _build(packer, templates, overrides, args)
    except (PackerError, ResourceMissing, WheelError) as error:
        print(f"archctl ami {args.ami_action}: {error}", file=sys.stderr)
        return 1


def _validate(packer: Packer, templates: Path, overrides: dict[str, str], as_json: bool) -> int:
    checks = validate_templates(packer, templates, overrides)
    if as_json:
        print(json.dumps([check.__dict__ for check in checks], indent=2))
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            status = "ok" if check.ok else "FAIL"
            print(f"{status:<4}  {check.name:<{width}}  {check.level:<11}  {check.detail}")
    return 0 if all(check.ok for check in checks) else 1


def _build(
    packer: Packer, templates: Path, overrides: dict[str, str], args: argparse.Namespace
) -> int:
    def show(event: MachineEvent) -> None:
        if event.ui_level is not None and not args.json:
            stream = sys.stderr if event.ui_level == "error" else sys.stdout
            print(event.text.rstrip("\n"), file=stream, flush=True)

    with tempfile.TemporaryDirectory(prefix="archctl-ami-") as scratch:
        wheel = WheelInfo.read(wheel_to_deliver(Path(scratch), args.wheel))
        print(
            f"archctl ami build: baking {wheel.path.name} (arch {wheel.version}, "
            f"sha256 {wheel.sha256})",
            file=sys.stderr,
            flush=True,
        )
        artifacts = build_images(
            packer,
            templates,
            local=args.local,
            flavours=args.flavour or [],
            architectures=args.architecture or [],
            wheel=wheel,
            manifest=args.manifest.resolve(),
            overrides=overrides,
            on_event=show,
        )
    if args.json:
        print(json.dumps([artifact.__dict__ for artifact in artifacts], indent=2))
    else:
        for artifact in artifacts:
            print(f"built {artifact.name}: {artifact.artifact_id} (manifest {args.manifest})")
    return 0
