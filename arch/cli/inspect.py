"""`archctl inspect PATH|NAMESPACE/ID`: an image's contents and whether it would restore here."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from arch.cli.output import format_table, human_bytes
from arch.config import ConfigError, load_config
from arch.operator.containerd import Containerd
from arch.operator.inspect import (
    ImageReport,
    InspectError,
    PoolReport,
    image_versions,
    inspect,
    resolve_target,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STATUS_WORDS = {"ok": "ok", "fail": "FAIL", "skipped": "skip"}


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "inspect",
        help="show what a checkpoint image holds and whether it would restore here",
        description="Show a checkpoint image's metadata, the verdict of the checks a restore "
        "runs (validation, CRIU version, tar sha256, criu cpuinfo check, the signature when "
        "image_key_file is set), sizes, versions and "
        "its process tree. TARGET is a path (absolute, or starting with ./) or NAMESPACE/ID: a "
        "container of this host, else a checkpoint id under checkpoint_root. A pool directory "
        "is listed entry by entry. Exit 0 when the image would restore here (or a pool was "
        "listed), 1 when it would not or there is no image, 2 on bad usage.",
    )
    parser.add_argument("target", metavar="PATH|NAMESPACE/ID")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--no-checksum", action="store_true", help="skip reading the filesystem tar for its sha256"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config()
    except ConfigError as error:
        print(f"archctl inspect: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        path = resolve_target(args.target, config, Containerd(args.address))
    except ValueError as error:
        print(f"archctl inspect: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = inspect(path, config, checksum=not args.no_checksum)
    except InspectError as error:
        print(f"archctl inspect: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    elif isinstance(report, PoolReport):
        print_pool(report)
    else:
        print_image(report)
    if isinstance(report, ImageReport) and not report.restorable:
        return EXIT_FAILED
    return EXIT_OK


def print_pool(report: PoolReport) -> None:
    print(f"pool  {report.path}")
    rows = [
        (entry.name, entry.status, entry.created or "-", human_bytes(entry.size),
         entry.problem or "")
        for entry in report.entries
    ]  # fmt: skip
    print(format_table(("ENTRY", "STATUS", "CREATED", "SIZE", "PROBLEM"), rows))


def print_image(report: ImageReport) -> None:
    verdict = "restorable here" if report.restorable else "NOT restorable here"
    print(f"image     {report.path}")
    print(f"verdict   {verdict}")
    for check in report.checks:
        print(f"  {STATUS_WORDS.get(check.status, check.status):<4}  {check.name:<9}  "
              f"{check.detail}")  # fmt: skip
    metadata = report.metadata
    if metadata is not None:
        print(f"container {metadata.namespace}/{metadata.container_id} "
              f"(checkpoint id {metadata.checkpoint_id}), created {metadata.created}")  # fmt: skip
        print(f"command   {' '.join(metadata.container.args) or '-'}  (cwd "
              f"{metadata.container.cwd})")  # fmt: skip
        filesystem = metadata.filesystem
        print(f"filesystem {filesystem.mode}" + (
            f", {filesystem.tar} sha256 {filesystem.sha256}" if filesystem.tar else ""))
        if metadata.criu_options:
            print(f"criu options {' '.join(metadata.criu_options)}")
    image = image_versions(metadata)
    print("versions  image: " + (", ".join(f"{k} {v}" for k, v in image.items()) or "-"))
    print("          here:  " + ", ".join(f"{k} {v}" for k, v in report.host_versions.items()))
    sizes = report.sizes
    print(f"sizes     total {human_bytes(sizes['total'])}: processes "
          f"{human_bytes(sizes['processes'])} (memory pages {human_bytes(sizes['memory_pages'])}),"
          f" filesystem {human_bytes(sizes['filesystem'])}")  # fmt: skip
    if report.process_tree_error is not None:
        print(f"processes unknown: {report.process_tree_error}")
        return
    print("processes")
    rows = [
        (str(p.pid), str(p.ppid), str(p.pgid), str(p.sid), str(len(p.threads)), p.state or "-",
         p.comm or "?")
        for p in report.processes
    ]  # fmt: skip
    table = format_table(("PID", "PPID", "PGID", "SID", "THREADS", "STATE", "COMMAND"), rows)
    print("\n".join(f"  {line}" for line in table.splitlines()))
