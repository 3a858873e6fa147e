"""Which way arch-runc sends a call: to ARCH's own handling, or straight to a runc binary.

The native front (launcher.c) makes this decision without Python for the calls it fully
understands and hands the rest to Python; `decide` is Python's answer for the same call, used
to prove that the two agree (tests/unit/test_route_agreement.py). It follows arch.shim.main and
the handlers lifecycle.py dispatches to, and has no side effects (no log, no state change).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from arch.config import ConfigError, HostConfig, config_path, load_config

if TYPE_CHECKING:
    from collections.abc import Sequence

    from arch.runc.parser import RuncCommand

ARCH = "arch"  # ARCH handles the call itself


def decide(args: Sequence[str]) -> str:
    """ARCH, or the path of the runc the call passes through to unchanged."""
    from arch.runc.parser import ParseError, parse
    from arch.shim import passthrough
    from arch.shim.main import INTERCEPTED_SUBCOMMANDS

    try:
        config = load_config()
    except ConfigError:
        config = HostConfig(config_path())  # what pass-through and the handlers fall back to
    if INTERCEPTED_SUBCOMMANDS.intersection(args):
        try:
            command = parse(args)
        except ParseError:
            command = None
        if (
            command is not None
            and command.subcommand in INTERCEPTED_SUBCOMMANDS
            and not command.has_unknown_flags
            and _claimed(command, config)
        ):
            return ARCH
    return passthrough.resolve_runc(config)


def _claimed(command: RuncCommand, config: HostConfig) -> bool:
    from arch.container.state import SKIP_RESUME, SKIP_START, ContainerState, StateError
    from arch.shim.call import location_of, opted_in_bundle
    from arch.shim.checkpoint import PARTIAL_DUMP_FLAGS
    from arch.spot.platform import is_stop_signal

    if command.subcommand == "create":
        return opted_in_bundle(command) is not None
    try:
        state = ContainerState(
            config.state_dir, command.namespace or "runc", command.container_id or ""
        )
    except StateError:
        return False
    if not state.exists():
        return False
    if command.subcommand == "kill":
        from arch.spot.notice import notice_active

        return (
            notice_active(config.state_dir)
            and is_stop_signal(command.positionals[1:2])
            and location_of(state) is not None
        )
    if command.subcommand in ("start", "resume"):
        return state.has(SKIP_START if command.subcommand == "start" else SKIP_RESUME)
    if command.subcommand == "checkpoint" and any(
        command.has(flag) for flag in PARTIAL_DUMP_FLAGS
    ):
        return False
    return location_of(state) is not None


if __name__ == "__main__":
    print(decide(sys.argv[1:]))
