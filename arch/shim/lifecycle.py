"""The runc calls ARCH intercepts: create, start, checkpoint, resume, delete, and kill while a
Spot interruption notice is active, each in a module of its own.

Each handler first decides whether the container opted in (create: ARCH_ENABLE in the bundle's
config.json; the others: the state record create wrote). A container that did not opt in goes to
the real runc unchanged, whatever happens here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from arch.shim.call import Call
from arch.shim.checkpoint import handle_checkpoint, handle_resume
from arch.shim.create import handle_create, handle_start
from arch.shim.delete import handle_delete
from arch.shim.kill import handle_kill

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from arch.runc.parser import RuncCommand

logger = logging.getLogger("arch")


HANDLERS: dict[str, Callable[[Call], int]] = {
    "create": handle_create,
    "start": handle_start,
    "checkpoint": handle_checkpoint,
    "resume": handle_resume,
    "delete": handle_delete,
    "kill": handle_kill,
}


def handle(command: RuncCommand, args: Sequence[str]) -> int:
    call = Call(command, args)
    try:
        return HANDLERS[command.subcommand or ""](call)
    except Exception as error:  # a bug: one line for the caller, the traceback in ARCH's log
        logger.exception("%s %s: unexpected error", command.subcommand, call.where)
        return call.fail(f"internal error ({type(error).__name__}: {error}); details in the log")
