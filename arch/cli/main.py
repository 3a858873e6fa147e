"""archctl: the operator CLI. Exit 0 = success, 1 = the operation failed, 2 = bad usage."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from arch import __version__, failpoints, host_identity
from arch.cli import (
    checkpoint,
    gc,
    inspect,
    listing,
    selftest,
    spot_watch,
    verify,
    watch_exits,
)
from arch.cli import failpoints as cli_failpoints
from arch.cli.delivery import ami, bundle, remote, template, userdata
from arch.config import ConfigError, load_config

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_CONTAINERD_ADDRESS = "/run/containerd/containerd.sock"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def containerd_address(cli_value: str | None) -> str:
    """--address, else CONTAINERD_ADDRESS (ctr's convention), else containerd's default socket."""
    return cli_value or os.environ.get("CONTAINERD_ADDRESS") or DEFAULT_CONTAINERD_ADDRESS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archctl", description="Operate ARCH, container checkpoint/restore for this host."
    )
    parser.add_argument("--version", action="version", version=f"archctl {__version__}")
    parser.add_argument(
        "--address",
        help=f"containerd socket (default: $CONTAINERD_ADDRESS, else {DEFAULT_CONTAINERD_ADDRESS})",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    listing.add_parser(subcommands)
    checkpoint.add_parser(subcommands)
    spot_watch.add_parser(subcommands)
    inspect.add_parser(subcommands)
    gc.add_parser(subcommands)
    verify.add_parser(subcommands)
    watch_exits.add_parser(subcommands)
    selftest.add_parser(subcommands)
    template.add_parser(subcommands)
    ami.add_parser(subcommands)
    userdata.add_parser(subcommands)
    remote.add_parser(subcommands)
    bundle.add_parser(subcommands)
    cli_failpoints.add_parser(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.address = containerd_address(args.address)
    _apply_host_settings()
    status: int = args.run(args)
    return status


def _apply_host_settings() -> None:
    """What arch.toml says for every subcommand: where this host's identity is cached (leases,
    pool claims) and whether ARCH_FAILPOINTS arms fault points. A malformed file is the
    subcommands' own business (those that need it report it)."""
    try:
        config = load_config()
    except ConfigError:
        return
    host_identity.use_state_dir(config.state_dir)
    failpoints.configure(config.failpoints)


if __name__ == "__main__":
    sys.exit(main())
