"""delete of an opted-in container: runc's delete, then ARCH's state, and the image after a
clean exit of the instance created against it (a pool member's claim goes back to the pool).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from arch import failpoints
from arch.container.state import CHECKPOINTED, ContainerState
from arch.shim import notice_rules
from arch.shim.call import Call, location_of

if TYPE_CHECKING:

    from arch.container.identity import ImageLocation

logger = logging.getLogger("arch")


def handle_delete(call: Call) -> int:
    """Delete through runc; then drop ARCH's state, and the image after a clean exit (0) of
    the instance that was created against it."""
    from arch.container.exit_watch import wait_for_exit_status

    state = call.state()
    call.finish_interrupted(state)
    location = location_of(state)
    if state is None or location is None:
        if state is not None:
            state.remove_all()
        return call.pass_through()
    status = call.run_through()
    if status != 0 and call.runc().knows(call.container_id):
        return status
    # runc no longer has it (an earlier delete that was killed removed it): ARCH's part still
    # has to be done; runc's "does not exist" goes to the caller, which takes it for done.
    where = call.where
    if state.has(CHECKPOINTED):
        logger.info("delete %s: checkpointed, image kept in %s", where,
                    location.image_dir or location.pool_dir)  # fmt: skip
    elif not location.image_dir:
        logger.info("delete %s: pool member without a claimed image", where)
    else:
        exit_status = wait_for_exit_status(state)
        if exit_status == 0 and notice_rules.exit_is_not_a_finish(call.config, state):
            _keep_after_notice_stop(where, location)
        elif exit_status == 0:
            try:
                remove_own_image(where, state, location)
            except OSError as error:
                # The state stays: the next create of this container id removes the image
                # (never restores a finished job).
                logger.error("delete %s: exited 0, image %s kept for now: %s", where,
                             location.image_dir, error)  # fmt: skip
                return status
        elif location.pool_dir is not None:
            release_claim(where, location, exit_status)
        else:
            logger.info("delete %s: exit status %s, image %s kept", where, exit_status,
                        location.image_dir)  # fmt: skip
    state.remove_all()
    return status


def _keep_after_notice_stop(where: str, location: ImageLocation) -> None:
    """Exit 0 after a stop that belongs to this host's Spot notice: not a finish."""
    logger.warning("delete %s: exited 0 after a stop during a Spot notice: not a finish, image "
                   "%s kept", where, location.image_dir)  # fmt: skip
    if location.pool_dir is not None:
        release_claim(where, location, 0)


def remove_own_image(where: str, state: ContainerState, location: ImageLocation) -> None:
    """After exit 0: remove the image this instance was created against, not one another
    container (a replica with the same checkpoint id, another host) published there since. The
    image is resolved beneath its root (NotBeneath, an OSError, when it no longer resolves)."""
    from arch.checkpoint.storage.beneath import opened_root
    from arch.checkpoint.storage.store import remove

    record = state.read_record() or {}
    expected = record.get("image_identity")
    refused = record.get("image_not_removed")
    if isinstance(refused, str):
        logger.info("delete %s: exited 0; the image at %s was refused at create (%s): kept",
                    where, location.image_dir, refused)  # fmt: skip
        return
    if not isinstance(expected, str):
        logger.info("delete %s: exited 0; no image was at %s when it was created: nothing "
                    "removed", where, location.image_dir)  # fmt: skip
        return
    failpoints.hit("delete.before-remove")
    with opened_root(location.root) as root_fd:
        removed = remove(root_fd, location.relative, expected)
    failpoints.hit("delete.after-remove")
    if removed:
        logger.info("delete %s: exited 0, image %s removed", where, location.image_dir)
    else:
        logger.info("delete %s: exited 0, but the image at %s is not the one it was created "
                    "against: kept", where, location.image_dir)  # fmt: skip


def release_claim(where: str, location: ImageLocation, exit_status: int | None) -> None:
    from arch.checkpoint.storage import pool

    claimed_path = location.image_dir
    try:
        released = pool.release(claimed_path, location.root)
    except OSError as error:
        logger.error("delete %s: cannot release pool image %s: %s", where, claimed_path, error)
        return
    logger.info("delete %s: exit status %s, pool image released as %s", where, exit_status,
                released)  # fmt: skip
