"""`archctl selftest`: parse its options, run the round trip (arch/appliance/selftest.py) and
print each step as it ends, or the whole result as JSON."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any

from arch.appliance import selftest_payload
from arch.appliance.selftest import (
    DEFAULT_ARCH_RUNC,
    DEFAULT_NAMESPACE,
    FAIL,
    Selftest,
    Settings,
    SigtermInterrupts,
    StepResult,
)


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "selftest",
        help="checkpoint and restore a tiny container through this host's containerd",
        description="A real checkpoint/restore round trip on this host: a tiny opted-in "
        "container is started through containerd (ctr), changes its filesystem and memory, is "
        "checkpointed, removed, created again and shown to continue. One line per step; exit 0 "
        "only when every step held, 1 otherwise. Everything it creates is removed afterwards "
        "(unless --keep). Needs ctr on PATH, and a C compiler (cc) with the static C library "
        "(glibc-static on Amazon Linux, libc6-dev on Debian) to build the container's static "
        "payload program, unless --payload gives one.",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="leave the container, images and namespace behind"
    )
    parser.add_argument(
        "--arch-runc",
        default=shutil.which("arch-runc") or DEFAULT_ARCH_RUNC,
        help="the arch-runc to run the container with (default: arch-runc on PATH)",
    )
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help=f"containerd namespace to work in (default: {DEFAULT_NAMESPACE})",
    )
    parser.add_argument(
        "--runc-root", help="runc state root for the container (default: containerd's)"
    )
    parser.add_argument(
        "--payload",
        metavar="PATH",
        help="a static build of the container's program (default: build it with cc -static from "
        f"{selftest_payload.SOURCE})",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings(
        address=args.address,
        namespace=args.namespace,
        arch_runc=args.arch_runc,
        runc_root=args.runc_root,
        payload=args.payload,
        keep=args.keep,
    )
    report = _print_step if not args.json else _ignore_step
    with SigtermInterrupts():
        results = Selftest(settings, report).run()
    passed = all(result.status != FAIL for result in results)
    if args.json:
        steps = [{**result._asdict(), "seconds": round(result.seconds, 3)} for result in results]
        document = {"passed": passed, "steps": steps}
        print(json.dumps(document, indent=2))
    elif passed:
        print("selftest passed: checkpoint/restore works on this host")
    else:
        failed = ", ".join(result.name for result in results if result.status == FAIL)
        print(f"selftest FAILED: {failed}")
    return 0 if passed else 1


def _print_step(result: StepResult) -> None:
    first, *more = result.detail.splitlines() or [""]
    print(f"{result.status:<4}  {result.name:<13} {result.seconds:6.2f}s  {first}")
    for line in more:
        print(f"      {line}")
    sys.stdout.flush()


def _ignore_step(result: StepResult) -> None:
    del result
