"""`archctl bundle -o FILE [--python X.Y ...]`: the offline archive for instances without the
internet (arch/delivery/bundle.py); `archctl userdata --package` takes it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from arch.delivery.bundle import BundleError, BundlePlan, make_bundle
from arch.delivery.resources import ResourceMissing
from arch.delivery.wheel import WheelError


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "bundle",
        help="make one offline archive: the wheel, its dependencies, ansible-core, CRIU source",
        description="Write an archive (tar) that installs ARCH with no network but the "
        "archive's own source: the arch wheel, binary wheels of every dependency of arch and of "
        "the installer's ansible-core for each --python, and the pinned CRIU source the role "
        "builds where the distribution's CRIU fails. Give it to `archctl userdata --package`. "
        "Each --python must exist on this machine (pip resolves with that interpreter).",
    )
    parser.add_argument("--output", "-o", required=True, help="the archive to write (.tar)")
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="X.Y",
        help="an interpreter of the target (repeatable; default: 3.9 and 3.11, Amazon Linux "
        "2023's python3 and the python3.11 its installer runs ansible-core with)",
    )
    parser.add_argument("--wheel", help="the arch wheel (default: built from this checkout)")
    criu = parser.add_mutually_exclusive_group()
    criu.add_argument(
        "--criu-archive", help="the CRIU source archive (default: downloaded, sha256-checked)"
    )
    criu.add_argument("--no-criu", action="store_true", help="leave the CRIU source out")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix != ".tar":
        print("archctl bundle: --output must end in .tar", file=sys.stderr)
        return 2
    plan = BundlePlan(
        output=output,
        pythons=tuple(dict.fromkeys(args.python)) or BundlePlan.pythons,
        wheel=Path(args.wheel) if args.wheel else None,
        criu_archive=Path(args.criu_archive) if args.criu_archive else None,
        include_criu=not args.no_criu,
    )
    try:
        manifest = make_bundle(plan)
    except (BundleError, WheelError, ResourceMissing) as error:
        print(f"archctl bundle: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"archctl bundle: {error}", file=sys.stderr)
        return 1
    wheels = manifest["wheels"]
    count = len(wheels) if isinstance(wheels, list) else 0
    print(
        f"{output}: {manifest['wheel']}, {count} dependency wheels for Python "
        f"{', '.join(plan.pythons)}, {output.stat().st_size} bytes"
    )
    return 0
