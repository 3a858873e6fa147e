"""`archctl remote install|verify|checkpoint HOST...`: ARCH on other hosts over SSH (Fabric)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arch.delivery.definitions import DefinitionError, parse_assignments
from arch.delivery.render import RenderError
from arch.delivery.resources import ResourceMissing
from arch.delivery.userdata import UserdataError
from arch.delivery.wheel import WheelError, wheel_to_deliver
from arch.remote.hosts import HostSpec, HostSpecError
from arch.remote.known_hosts import HostKeyTrust, KnownHostsError
from arch.remote.operations import (
    InstallPlan,
    RemoteUnavailable,
    SshOptions,
    checkpoint,
    install,
    run_on_hosts,
    verify,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from arch.remote.operations import HostResult, HostSession


# Seconds one host may take by default: an install runs the role (and may build CRIU).
DEFAULT_TIMEOUTS = {"install": 3600.0, "verify": 300.0, "checkpoint": 1800.0}


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "remote",
        help="install, verify or checkpoint ARCH on other hosts over SSH, in parallel",
        description="Run an ARCH operation on every HOST ([user@]host[:port]) over SSH, in "
        "parallel. Prints one result per host; exit 1 when any host failed. Host keys are "
        "checked against known_hosts: an unknown host is refused unless --accept-new, a "
        "changed key always.",
    )
    actions = parser.add_subparsers(dest="remote_action", metavar="ACTION", required=True)
    helps = {
        "install": "push the arch wheel and run the bootstrap (the role, then archctl verify)",
        "verify": "run archctl verify",
        "checkpoint": "run archctl checkpoint --all (checkpoint and stop every ARCH container)",
    }
    for name, text in helps.items():
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("hosts", nargs="+", metavar="HOST", help="[user@]host[:port]")
        action.add_argument(
            "--identity-file", "-i", help="SSH private key (only this key is tried)"
        )
        action.add_argument(
            "--connect-timeout",
            type=float,
            default=15.0,
            metavar="SECONDS",
            help="for the TCP connection, the SSH banner and the login, each (default: 15)",
        )
        action.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUTS[name],
            metavar="SECONDS",
            help="the most one host may take, connection and commands; the host ends a command "
            f"still running then (default: {DEFAULT_TIMEOUTS[name]:g})",
        )
        action.add_argument(
            "--known-hosts",
            action="append",
            default=[],
            metavar="FILE",
            help="a known_hosts file to trust besides ~/.ssh/known_hosts and "
            "/etc/ssh/ssh_known_hosts (repeatable; the first one receives --accept-new's keys)",
        )
        action.add_argument(
            "--accept-new",
            action="store_true",
            help="accept and record the key of a host not in known_hosts (a changed key is "
            "always refused)",
        )
        # Refusing unknown hosts is the default now; the old flag is accepted and changes nothing.
        action.add_argument("--strict-host-keys", action="store_true", help=argparse.SUPPRESS)
        action.add_argument("--parallel", type=int, default=16, help="hosts at a time")
        action.add_argument("--json", action="store_true", help="print the results as JSON")
        action.set_defaults(run=run)
        if name == "install":
            action.add_argument(
                "--wheel",
                type=Path,
                help="the arch wheel (default: built from this checkout, or the installed arch)",
            )
            action.add_argument("--ecs-cluster", default="", help="ECS_CLUSTER for the ECS agent")
            action.add_argument("--spot-watch", action=argparse.BooleanOptionalAction, default=True)
            action.add_argument(
                "--role-var",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="a variable of the role (arch_*), repeatable",
            )


def run(args: argparse.Namespace) -> int:
    try:
        specs = [HostSpec.parse(text) for text in args.hosts]
        if args.parallel < 1:
            raise HostSpecError("--parallel must be at least 1")
        if args.timeout < 1 or args.connect_timeout < 1:
            raise HostSpecError("--timeout and --connect-timeout must be at least 1 second")
        trust = HostKeyTrust.from_options(args.known_hosts, args.accept_new)
    except (HostSpecError, KnownHostsError) as error:
        print(f"archctl remote: {error}", file=sys.stderr)
        return 2
    options = SshOptions(
        trust=trust,
        identity_file=args.identity_file,
        connect_timeout=args.connect_timeout,
        timeout=args.timeout,
    )
    with tempfile.TemporaryDirectory(prefix="archctl-remote-") as scratch:
        try:
            operation = _operation(args, Path(scratch))
        except (DefinitionError, UserdataError) as error:
            print(f"archctl remote: {error}", file=sys.stderr)
            return 2
        except (WheelError, RenderError, ResourceMissing) as error:
            print(f"archctl remote: {error}", file=sys.stderr)
            return 1
        try:
            results = run_on_hosts(specs, operation, options, _progress, args.parallel)
        except (RemoteUnavailable, KnownHostsError) as error:
            print(f"archctl remote: {error}", file=sys.stderr)
            return 1
    print_results(results, as_json=args.json)
    return 0 if all(result.ok for result in results) else 1


def _operation(args: argparse.Namespace, scratch: Path) -> Callable[[HostSession], str]:
    if args.remote_action == "verify":
        return verify
    if args.remote_action == "checkpoint":
        return checkpoint
    wheel = wheel_to_deliver(scratch, args.wheel)
    plan = InstallPlan(
        wheel=wheel,
        role_variables=parse_assignments(args.role_var),
        ecs_cluster=args.ecs_cluster,
        spot_watch=args.spot_watch,
    )
    plan.script_for(f"/tmp/{wheel.name}")  # bad options fail here, before any host is touched
    return functools.partial(install, plan=plan)


def _progress(result: HostResult) -> None:
    status = "ok" if result.ok else "FAILED"
    print(f"archctl remote: {result.host}: {status} ({result.seconds:.1f}s)", file=sys.stderr)


def print_results(results: Sequence[HostResult], as_json: bool) -> None:
    if as_json:
        print(json.dumps([result.__dict__ for result in results], indent=2))
        return
    rows = [("HOST", "RESULT", "STEP", "SECONDS", "DETAIL")] + [
        (r.host, "ok" if r.ok else "FAILED", r.step, f"{r.seconds:.1f}", r.detail) for r in results
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
