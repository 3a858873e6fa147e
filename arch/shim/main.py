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
        if command.subcommand == "kill" and not _notice_active():
            return passthrough.pass_through(args)  # as fast as before kill was intercepted
        if command.subcommand in INTERCEPTED_SUBCOMMANDS and not command.has_unknown_flags:
            from arch.shim import lifecycle

            return lifecycle.handle(command, args)
    return passthrough.pass_through(args)


def _notice_active() -> bool:
    """Whether a Spot notice marker exists (a malformed arch.toml: kill passes through anyway)."""
    from arch.config import ConfigError, load_config
    from arch.spot.notice import notice_active

    try:
        return notice_active(load_config().state_dir)
    except ConfigError:
        return False


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
