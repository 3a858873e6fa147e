"""`archctl verify`: is this host a working ARCH appliance?"""

from __future__ import annotations

import argparse
import json
import shutil
from typing import TYPE_CHECKING, Any

from arch.appliance.checks import FAIL, CheckResult, VerifyTarget, run_checks
from arch.config import ConfigError, load_config

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_ARCH_RUNC = "/usr/local/bin/arch-runc"


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "verify",
        help="check runc, CRIU, iptables, containerd/Docker wiring, storage and services",
        description="Check that this host is a working ARCH appliance. Exit 0 when every check "
        "passes (warnings allowed), 1 when any fails, 2 on bad usage. --json prints "
        '{"ok": BOOL, "checks": [{"name", "status", "detail"}, ...]}.',
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--arch-runc",
        default=shutil.which("arch-runc") or DEFAULT_ARCH_RUNC,
        help="the arch-runc that containerd and Docker must use (default: arch-runc on PATH)",
    )
    parser.add_argument("--containerd-config", default="/etc/containerd/config.toml")
    parser.add_argument("--docker-config", default="/etc/docker/daemon.json")
    parser.add_argument("--docker-socket", default="/var/run/docker.sock")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config()
    except ConfigError as error:
        results = [CheckResult("config", FAIL, str(error))]
    else:
        target = VerifyTarget(
            config=config,
            arch_runc=args.arch_runc,
            containerd_config=args.containerd_config,
            containerd_address=args.address,
            docker_config=args.docker_config,
            docker_socket=args.docker_socket,
        )
        results = run_checks(target)
    print_results(results, as_json=args.json)
    return 1 if any(result.status == FAIL for result in results) else 0


def print_results(results: Sequence[CheckResult], as_json: bool) -> None:
    if as_json:
        document = {
            "ok": not any(result.status == FAIL for result in results),
            "checks": [result._asdict() for result in results],
        }
        print(json.dumps(document, indent=2))
        return
    width = max(len(result.name) for result in results)
    for result in results:
        print(f"{result.status:<4}  {result.name:<{width}}  {result.detail}")
