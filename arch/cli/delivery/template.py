"""`archctl template ecs-service|ecs-task|batch-job [--param KEY=VALUE ...]`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from arch.delivery.definitions import KINDS, DefinitionError, parse_assignments, render_definition
from arch.delivery.render import RenderError
from arch.delivery.resources import ResourceMissing


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "template",
        help="render an ECS task definition or a Batch job definition that opts in to ARCH",
        description="Render a task/job definition as JSON (the input of `aws ecs "
        "register-task-definition` / `aws batch register-job-definition --cli-input-json`), "
        "checked against the request shape AWS documents.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_parameters_help(),
    )
    parser.add_argument("kind", choices=sorted(KINDS), help="what to render")
    parser.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a template parameter (repeatable; see below)",
    )
    parser.add_argument("--output", "-o", help="write to this file instead of stdout")
    parser.set_defaults(run=run)


def _parameters_help() -> str:
    lines = []
    for kind in KINDS.values():
        lines.append(f"{kind.name}: {kind.summary}")
        for parameter in kind.parameters:
            default = "required" if parameter.default is None else f"default {parameter.default!r}"
            lines.append(f"  {parameter.name:<20} {parameter.help} ({default})")
    return "parameters:\n" + "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        document = render_definition(args.kind, parse_assignments(args.param))
    except DefinitionError as error:
        print(f"archctl template: {error}", file=sys.stderr)
        return 2
    except (RenderError, ResourceMissing) as error:
        print(f"archctl template: {error}", file=sys.stderr)
        return 1
    text = json.dumps(document, indent=2) + "\n"
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as output:
                output.write(text)
        except OSError as error:
            print(f"archctl template: cannot write {args.output}: {error}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0
