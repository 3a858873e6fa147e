"""Fault points: named places where a test makes arch-runc or archctl die or fail a step.

In the spirit of the fail points etcd (gofail) and TiKV (fail-rs) ship: the code names the
steps where a crash or an error changes the outcome, `hit(NAME)` marks each one, and a test
picks, per process, what happens there. Off unless arch.toml says `failpoints = true`; then
the environment variable ARCH_FAILPOINTS holds `name=action[,name=action...]`, where action is

- `kill`: the process SIGKILLs itself there (as containerd's timeout, the OOM killer or a host
  going away would), after one line of evidence in ARCH's log and on stderr;
- an errno name (`EIO`, `ENOSPC`, `ESTALE`, ...): the step raises OSError with that errno, as
  the storage or the kernel would.

Zero cost when off: `hit` is one global load and a comparison with None (checked by a unit test
that the module is configured only by `configure`). The table POINTS lists every point the code
declares; a static test checks that each `hit("...")` names a declared point and each declared
point is hit somewhere. `archctl failpoints [--json]` prints the table.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from typing import NamedTuple

ENV = "ARCH_FAILPOINTS"
KILL = "kill"
logger = logging.getLogger("arch")


class Point(NamedTuple):
    name: str
    operation: str  # checkpoint, restore, pool, delete, gc
    where: str  # what has happened when the point is reached


# Every declared point, in the order an operation passes them.
POINTS: tuple[Point, ...] = (
    Point("checkpoint.paused", "checkpoint", "the container is frozen, nothing dumped yet"),
    Point("checkpoint.staging-created", "checkpoint", "the staging directory and its lease exist"),
    Point("checkpoint.dump-done", "checkpoint", "runc/CRIU dumped the processes (left frozen)"),
    Point("checkpoint.tar-written", "checkpoint", "the filesystem tar is written"),
    Point("checkpoint.sealed", "checkpoint", "the staging image is sealed and validated"),
    Point("checkpoint.before-publish-rename", "checkpoint",
          "about to rename the complete staging directory to the image path"),
    Point("checkpoint.after-publish-rename", "checkpoint",
          "the image is published; the previous image (if any) not yet removed"),
    Point("checkpoint.published", "checkpoint",
          "publish() returned: nothing of the previous image left"),
    Point("checkpoint.before-stop", "checkpoint", "published; the frozen container not yet killed"),
    Point("checkpoint.stopped", "checkpoint",
          "the container is killed, not yet marked checkpointed"),
    Point("pool.before-release", "pool",
          "a member's new image is published and the member stopped; not yet released"),
    Point("pool.after-release", "pool",
          "the new image is back in the pool; the claim it superseded still held"),
    Point("pool.before-claim", "pool", "a new member is about to claim a pool entry"),
    Point("pool.after-claim", "pool", "a pool entry is claimed, not yet named in the record"),
    Point("restore.before-runc-restore", "restore",
          "the image validated and the filesystem applied; runc restore not yet run"),
    Point("restore.after-runc-restore", "restore",
          "runc restore succeeded; the container is not yet marked restored"),
    Point("delete.before-remove", "delete", "the container exited 0; its image not yet removed"),
    Point("delete.after-remove", "delete", "the image is removed; ARCH's state not yet"),
    Point("gc.renamed-aside", "gc", "gc renamed an image aside; not yet removed"),
)
NAMES = frozenset(point.name for point in POINTS)

# name -> action, or None while fault points are off (the hot path tests only that).
_active: dict[str, str] | None = None


class FailpointSpecError(ValueError):
    """ARCH_FAILPOINTS names an unknown point or action."""


def parse(spec: str) -> dict[str, str]:
    """`name=action[,...]` -> {name: action}; FailpointSpecError for anything else."""
    actions: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, equals, action = (text.strip() for text in item.partition("="))
        if not equals or name not in NAMES:
            raise FailpointSpecError(f"{ENV}: unknown fault point {name!r}")
        if action != KILL and not _is_errno_name(action):
            raise FailpointSpecError(
                f"{ENV}: {name}: action must be 'kill' or an errno name, got {action!r}"
            )
        actions[name] = action
    return actions


def _is_errno_name(name: str) -> bool:
    return name.startswith("E") and isinstance(getattr(errno, name, None), int)


def configure(enabled: bool, environ: dict[str, str] | None = None) -> None:
    """Arm the points ARCH_FAILPOINTS names, when arch.toml enabled them (else disarm all).
    A malformed ARCH_FAILPOINTS arms nothing and is logged: a test then sees no evidence."""
    global _active
    spec = (os.environ if environ is None else environ).get(ENV, "")
    if not enabled or not spec:
        _active = None
        return
    try:
        _active = parse(spec) or None
    except FailpointSpecError as error:
        logger.error("%s", error)
        _active = None


def hit(name: str) -> None:
    """The fault point `name`: does nothing unless a test armed it."""
    if _active is None:
        return
    action = _active.get(name)
    if action is not None:
        _fire(name, action)


def _fire(name: str, action: str) -> None:
    line = f"arch: failpoint {name} fired: {action} (pid {os.getpid()})"
    logger.warning("%s", line)
    for handler in logging.getLogger("arch").handlers:
        handler.flush()
    print(line, file=sys.stderr, flush=True)
    if action == KILL:
        os.kill(os.getpid(), signal.SIGKILL)
    code = getattr(errno, action)
    raise OSError(code, f"{os.strerror(code)} (failpoint {name})")


def armed() -> dict[str, str]:
    """The armed points and their actions (empty when off)."""
    return dict(_active or {})
