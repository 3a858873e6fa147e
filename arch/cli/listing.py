"""`archctl list`: the ARCH-enabled containers of this host's containerd, every namespace."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from arch.cli.output import format_table
from arch.config import ConfigError, load_config
from arch.operator.containerd import Containerd, ContainerdError
from arch.operator.inventory import FROM_SPEC, ArchContainer, discover

EXIT_OK, EXIT_FAILED = 0, 1
HEADERS = ("NAMESPACE", "CONTAINER", "CHECKPOINT ID/POOL", "STATE", "IMAGE")


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "list",
        help="list the ARCH-enabled containers of every containerd namespace",
        description="List the containers of this host's containerd that opted in to ARCH "
        "(every namespace, Docker's `moby` included): namespace, container id, checkpoint id, "
        "task state, and whether a checkpoint image exists. Exit 1 when containerd cannot be "
        "reached or arch.toml is unusable.",
    )
    parser.add_argument("--json", action="store_true", help="print the containers as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config()
        inventory = discover(Containerd(args.address), config, read_specs=True)
    except (ConfigError, ContainerdError) as error:
        print(f"archctl list: {error}", file=sys.stderr)
        return EXIT_FAILED
    for problem in inventory.problems:
        print(f"archctl list: warning: {problem}", file=sys.stderr)
    if args.json:
        document = {"containers": [as_dict(container) for container in inventory.containers]}
        print(json.dumps(document, indent=2))
        return EXIT_OK
    rows = [
        (
            container.namespace,
            container.container_id,
            checkpoint_column(container),
            container.status.lower(),
            "yes" if container.image_present else "no",
        )
        for container in inventory.containers
    ]
    if rows:
        print(format_table(HEADERS, rows))
    else:
        print("no ARCH-enabled containers")
    return EXIT_OK


def checkpoint_column(container: ArchContainer) -> str:
    if container.location is None:
        return f"refused: {container.problem}"
    if container.pool is not None:
        return f"pool:{container.pool}"
    return container.checkpoint_id or "-"


def as_dict(container: ArchContainer) -> dict[str, object]:
    location = container.location
    return {
        "namespace": container.namespace,
        "container_id": container.container_id,
        "checkpoint_id": container.checkpoint_id if container.pool is None else None,
        "pool": container.pool,
        "state": container.status.lower(),
        "image_present": container.image_present,
        "image_dir": location.image_dir or None if location else None,
        "pool_dir": location.pool_dir if location else None,
        # arch-runc created it opted in (False: only its spec says so, e.g. no task yet).
        "arch_state": container.source != FROM_SPEC,
        "problem": container.problem,
    }
