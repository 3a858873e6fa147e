"""`archctl failpoints [--json]`: the fault points the code declares (see arch.failpoints)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from arch.cli.output import format_table
from arch.failpoints import ENV, KILL, POINTS

EXIT_OK = 0


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "failpoints",
        help="list the fault points tests can arm (failpoints = true in arch.toml)",
        description="List the named fault points of arch-runc and archctl. With `failpoints = "
        f"true` in arch.toml, {ENV}=name=action[,name=action...] in a process's environment "
        f"arms them: action '{KILL}' SIGKILLs the process at the point, an errno name (EIO, "
        "ENOSPC, ESTALE, ...) fails the step with that error. For tests only.",
    )
    parser.add_argument("--json", action="store_true", help="print the points as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.json:
        document = [point._asdict() for point in POINTS]
        print(json.dumps({"points": document, "actions": [KILL, "E<errno name>"]}, indent=2))
        return EXIT_OK
    rows = [[point.name, point.operation, point.where] for point in POINTS]
    print(format_table(["POINT", "OPERATION", "REACHED WHEN"], rows))
    return EXIT_OK
