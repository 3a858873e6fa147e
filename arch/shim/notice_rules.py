"""What this host's Spot notice changes in arch-runc's create, checkpoint, kill and delete.

- create of an opted-in container while the notice is active (the host is about to go): it
  neither restores nor claims here. A job whose image exists is not started here at all (its
  image is for the next host: a restart policy must not run a second copy of the job on the
  doomed host); anything else starts fresh and is marked NOTICE_FRESH, so that its state never
  replaces an image (no publication, no removal at exit).
- a pool member's create that finds no unclaimed image but one on the way (arch.spot.pending)
  waits for it, at most arch.toml's restore_wait, then claims it.
- a checkpoint during the notice on a Batch host holds the job frozen (arch.spot.platform).
- kill: a stop signal is noted (STOP_SIGNALLED); a held job gets the signal and is thawed to
  act on it.
- delete after exit 0: not a finish when the exit follows a stop during the notice, or in the
  seconds before its marker appeared: the image stays (a pool member's claim is released).

Imported by arch-runc for opted-in containers only; module-level imports stay cheap.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

from arch.spot.notice import notice_active, notice_seen_at
from arch.spot.platform import (
    ECS,
    HELD,
    NOTICE_FRESH,
    NOTICE_RACE_SECONDS,
    STOP_SIGNALLED,
    holds,
    stopped_for_a_notice,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from arch.config import HostConfig
    from arch.container.identity import ImageLocation
    from arch.container.state import ContainerState

logger = logging.getLogger("arch")
METADATA_FILE = "metadata.json"


def doomed(config: HostConfig) -> bool:
    """Whether this host's Spot notice is active."""
    return notice_active(config.state_dir)


def create_refusal(location: ImageLocation) -> str | None:
    """During a notice: why a create of this job is refused here (None: it may start fresh)."""
    if location.pool_dir is not None or not location.image_dir:
        return None
    if not os.path.isfile(os.path.join(location.image_dir, METADATA_FILE)):
        return None
    return (f"a Spot notice is active on this host: the job's image {location.image_dir} is "
            "for the next host; the job is not started here")  # fmt: skip


def start_fresh_during_notice(where: str, state: ContainerState) -> None:
    state.set(NOTICE_FRESH)
    logger.warning("create %s: a Spot notice is active on this host: no restore or claim here; "
                   "started fresh, its state will never replace an image", where)  # fmt: skip


def checkpoint_refusal(state: ContainerState) -> str | None:
    if state.has(NOTICE_FRESH):
        return ("it was started fresh during this host's Spot notice: its state never replaces "
                "the job's image")  # fmt: skip
    return None


def wait_for_pool_image(where: str, location: ImageLocation, limit: float) -> bool:
    """Wait (at most `limit` s) while a pool image is on the way; True when one is there."""
    from arch.spot.pending import wait_for_arrival

    assert location.pool_dir is not None
    if limit <= 0:
        return False
    try:
        arrived = wait_for_arrival(location.root, location.pool_dir, limit,
                                   on_wait=lambda records: logger.info(
                                       "create %s: no unclaimed image in pool %s, %d on the way "
                                       "from a host under a Spot notice: waiting up to %.0fs",
                                       where, location.pool_dir, records, limit))  # fmt: skip
    except OSError as error:
        logger.warning("create %s: cannot look for images on the way: %s", where, error)
        return False
    return arrived


def holds_now(config: HostConfig, location: ImageLocation) -> bool:
    """Whether a checkpoint now keeps the job frozen instead of ending it."""
    return holds(config.platform, location.pool_dir is not None) and doomed(config)


def record_hold(state: ContainerState, runc_global_args: Sequence[str], image_identity: str |
                None) -> None:  # fmt: skip
    """The job is held: what a thaw needs (runc's global options, the image it must remove at
    a later exit 0)."""
    state.set(HELD, json.dumps({"runc_global_args": list(runc_global_args),
                                "image_identity": image_identity}))  # fmt: skip


def note_stop_signal(state: ContainerState) -> None:
    try:
        state.set_if_exists(STOP_SIGNALLED)
    except OSError as error:
        logger.warning("cannot note the stop signal in %s: %s", state.path, error)


def exit_is_not_a_finish(config: HostConfig, state: ContainerState) -> bool:
    """An exit (0) that follows a stop during this host's notice, or one in the seconds before
    the marker appeared: not a finish, the image stays."""
    race_seconds = NOTICE_RACE_SECONDS if config.platform == ECS else 0.0
    return stopped_for_a_notice(state, lambda: notice_seen_at(config.state_dir), race_seconds)
