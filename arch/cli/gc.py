"""`archctl gc`: remove checkpoint images that can no longer be used (see arch.operator.gc)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from arch.cli.output import format_table
from arch.config import ConfigError, load_config
from arch.operator import gc

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "gc",
        help="remove images of finished jobs, expired images and leftovers",
        description="Remove checkpoint images that can no longer be used: images of containers "
        "that exited 0 (from this host's ARCH state and Docker's records), images older than "
        "--older-than, pool images that failed validation, and leftovers of interrupted "
        "publications; release pool images claimed here by containers that are gone. Images in "
        "use (a container here runs from it, a pool claim by any host) are never touched. "
        "Exit 0 when everything planned was done, 1 when something failed, 2 on bad usage.",
    )
    parser.add_argument(
        "--root", action="append", metavar="DIR",
        help="image root laid out as DIR/<namespace>/<id> (repeatable; default: checkpoint_root "
        "and the roots of the images this host's containers use; for images of containers gone "
        "from this host under ARCH_CHECKPOINT_HOST_PATH or $ARCH_SHAREDFS_HOST_PATH/checkpoint, "
        "name those)",
    )  # fmt: skip
    parser.add_argument(
        "--older-than", metavar="AGE", type=_duration,
        help="also remove images made more than AGE ago (90s, 30m, 12h, 7d, 2w)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="only show what would be done")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--docker-socket", default=DEFAULT_DOCKER_SOCKET,
        help=f"Docker's API socket, for exit codes of Docker's containers "
        f"(default {DEFAULT_DOCKER_SOCKET}; skipped when absent)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def _duration(text: str) -> float:
    try:
        return gc.parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config()
    except ConfigError as error:
        print(f"archctl gc: {error}", file=sys.stderr)
        return EXIT_FAILED
    now = time.time()
    roots = args.root or gc.default_roots(config)
    plan = gc.plan(roots, config, older_than=args.older_than, now=now,
                   docker_socket=args.docker_socket)  # fmt: skip
    if args.dry_run:
        outcomes = [gc.Outcome(action, False) for action in plan.actions]
    else:
        outcomes = gc.execute(plan.actions)
    outcomes += gc.sweep_leftovers(plan.sweep_dirs, args.dry_run, now)
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    if args.json:
        print(json.dumps(as_dict(outcomes, plan.kept, args.dry_run), indent=2))
    else:
        print_table(outcomes, plan.kept, args.dry_run)
    for outcome in failed:
        print(f"archctl gc: {outcome.action.path}: {outcome.error}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def as_dict(outcomes: list[gc.Outcome], kept: list[gc.Kept], dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "actions": [
            {**outcome.action._asdict(), "done": outcome.done, "error": outcome.error,
             "skipped": outcome.skipped}
            for outcome in outcomes
        ],
        "kept": [item._asdict() for item in kept],
    }


def print_table(outcomes: list[gc.Outcome], kept: list[gc.Kept], dry_run: bool) -> None:
    rows = [
        (_result(outcome, dry_run), outcome.action.action, outcome.action.rule,
         outcome.action.path, outcome.error or outcome.skipped or outcome.action.detail)
        for outcome in outcomes
    ]  # fmt: skip
    if rows:
        print(format_table(("RESULT", "ACTION", "RULE", "PATH", "DETAIL"), rows))
    done = sum(outcome.done for outcome in outcomes)
    verb = "would act on" if dry_run else "acted on"
    print(f"gc {verb} {len(outcomes) if dry_run else done} of {len(outcomes)} entries; "
          f"{len(kept)} images kept")  # fmt: skip


def _result(outcome: gc.Outcome, dry_run: bool) -> str:
    if dry_run:
        return "dry-run"
    if outcome.error is not None and not outcome.done:
        return "failed"
    if outcome.skipped is not None:
        return "skipped"
    return "done"
