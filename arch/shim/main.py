"""arch-runc: a drop-in for runc.

Calls that ARCH does not intercept go to the real runc unchanged (arch.shim.passthrough). The
subcommands below are handled by arch.shim.lifecycle for containers that opted in; for every
other container they pass through as well.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from arch.runc.parser import ParseError, parse
from arch.shim import passthrough

if TYPE_CHECKING:
    from collections.abc import Sequence

    from arch.runc.parser import RuncCommand

# Keep in sync with INTERCEPTED in launcher.c: the native front sends only these to Python.
# kill concerns ARCH only while a Spot notice is active (see arch/shim/kill.py).
INTERCEPTED_SUBCOMMANDS = frozenset({"create", "start", "checkpoint", "resume", "delete", "kill"})


def run(args: Sequence[str]) -> int:
    """Handle one runc invocation (`args` without argv[0]); returns the exit status."""
    if INTERCEPTED_SUBCOMMANDS.intersection(args):  # cheap: most calls are never parsed
        try:
            command = parse(args)
        except ParseError:
            return passthrough.pass_through(args)  # runc rejects it; let runc say so
        if command.subcommand == "kill" and _kill_outside_notice(command):
            return passthrough.pass_through(args)  # as fast as before kill was intercepted
        if command.subcommand in INTERCEPTED_SUBCOMMANDS and not command.has_unknown_flags:
            from arch.shim import lifecycle

            return lifecycle.handle(command, args)
    return passthrough.pass_through(args)


def _kill_outside_notice(command: RuncCommand) -> bool:
    """Whether no Spot notice marker exists (a malformed arch.toml: kill passes through anyway);
    a stop signal is then noted in the container's ARCH state, as the native front does."""
    from arch.config import ConfigError, load_config
    from arch.spot.notice import notice_active
    from arch.spot.platform import is_stop_signal, note_stop_signal_at

    try:
        state_dir = load_config().state_dir
    except ConfigError:
        return True
    if notice_active(state_dir):
        return False
    if command.container_id and is_stop_signal(command.positionals[1:2]):
        note_stop_signal_at(state_dir, command.namespace or "runc", command.container_id)
    return True


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
