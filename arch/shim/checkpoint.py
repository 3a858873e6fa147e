"""checkpoint of an opted-in container: a published image, then the container stopped; and
resume, a no-op after that. A pool member's new image goes back to its pool.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from arch import failpoints
from arch.container.state import CHECKPOINTED, SKIP_RESUME, ContainerState
from arch.shim import notice_rules
from arch.shim.call import Call, image_key, location_of, skip_once

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from arch.checkpoint.checkpoint_job import Lineage
    from arch.container.identity import ImageLocation
    from arch.runc.parser import RuncCommand

logger = logging.getLogger("arch")


# Checkpoint flags whose dump is not a complete, self-contained image (iterative or lazy
# migration): such calls are runc's business, not ARCH's.
PARTIAL_DUMP_FLAGS = ("pre-dump", "parent-path", "lazy-pages", "page-server")


# Held while a container is checkpointed (not a flag: its name has a dot).
CHECKPOINT_LOCK = ".checkpoint.lock"


def handle_checkpoint(call: Call) -> int:
    from arch.checkpoint.checkpoint_job import CheckpointFailed

    state = call.state()
    location = location_of(state)
    if state is None or location is None:
        return call.pass_through()
    call.finish_interrupted(state)
    partial = [flag for flag in PARTIAL_DUMP_FLAGS if call.command.has(flag)]
    if partial:
        logger.warning("checkpoint %s: --%s asks for a partial dump: passed to runc unchanged, "
                       "no ARCH image", call.where, partial[0])  # fmt: skip
        return call.pass_through()
    if call.config_error is not None:
        return call.fail(str(call.config_error))
    refusal = notice_rules.checkpoint_refusal(state)
    if refusal is not None:
        return call.fail(f"not checkpointed, the container keeps running: {refusal}")
    hold = notice_rules.holds_now(call.config, location)
    with exclusive_checkpoint(state):
        if state.has(CHECKPOINTED):  # a stop during a Spot notice checkpointed it meanwhile
            state.set(SKIP_RESUME)
            logger.info("checkpoint %s: already checkpointed", call.where)
            return 0
        try:
            published = checkpoint_and_stop(call, state, location, call.command, hold=hold)
        except CheckpointFailed as error:
            return call.fail(f"checkpoint failed, the container keeps running: {error}")
    state.set(SKIP_RESUME)
    if hold:
        logger.warning("checkpoint %s: image published at %s; the job is held frozen until "
                       "the host goes (platform batch, Spot notice)", call.where,
                       published)  # fmt: skip
    else:
        logger.info("checkpoint %s: image published at %s", call.where, published)
    return 0


def checkpoint_and_stop(
    call: Call,
    state: ContainerState,
    location: ImageLocation,
    command: RuncCommand,
    *,
    hold: bool = False,
) -> str:
    """Checkpoint and stop the container (`hold`: keep it frozen instead); where its image is
    published. CheckpointFailed leaves it running. The caller holds the container's checkpoint
    lock."""
    from arch.checkpoint.checkpoint_job import (
        CheckpointFailed,
        CheckpointJob,
        PublishedNotStopped,
    )
    from arch.checkpoint.image.signing import ImageKeyError
    from arch.container.interrupted import CHECKPOINT, Operation

    started = time.monotonic()
    try:
        key = image_key(call.config)
    except ImageKeyError as error:
        call.count("checkpoint", started, failure="other")
        raise CheckpointFailed(str(error)) from error
    target = location
    runc = call.runc()
    operation = Operation(state, CHECKPOINT, runc.global_args)
    hand_over = None
    if location.pool_dir is not None:
        from arch.checkpoint.storage import pool

        target = location.with_image_dir(pool.publication_path(location.pool_dir))
        # What a later call completes if this process dies once the image is published.
        operation.record["pool_handover"] = {"root": location.root, "new": target.image_dir,
                                             "old": location.image_dir}  # fmt: skip
        hand_over = _hand_over(call, location, target.image_dir)
    job = CheckpointJob(
        runc,
        command,
        target,
        call.container_id,
        call.config.criu_options,
        operation,
        call.config.checkpoint_timeout,
        image_key=key,
        binary_facts_dir=call.config.binary_facts_dir,
        hold=hold,
        compress=call.config.compression == "zstd",
        lineage=next_generation(state),
        on_published=lambda: state.set(CHECKPOINTED),
        after_stop=hand_over,
    )
    try:
        image = job.run()
    except PublishedNotStopped as error:
        state.set(SKIP_RESUME)  # it stays frozen: containerd's resume must not thaw it
        call.count("checkpoint", started, failure=error.reason)
        raise
    except CheckpointFailed as error:
        state.clear(CHECKPOINTED)  # nothing published, or withdrawn again: it runs on
        call.count("checkpoint", started, failure=error.reason)
        raise
    except Exception as error:  # a bug, or storage it did not expect: the job resumed it
        if state.has(CHECKPOINTED):  # unless it was published: then it never runs again
            state.set(SKIP_RESUME)  # (the operation record lets the next call stop it)
        logger.exception("checkpoint %s: unexpected error", call.where)
        call.count("checkpoint", started, failure="other")
        raise CheckpointFailed(f"unexpected {type(error).__name__}: {error}") from error
    call.count("checkpoint", started, image_bytes=image.metadata.image_bytes)
    if hold:
        notice_rules.record_hold(state, runc.global_args, _identity_of(target))
    return target.image_dir


def _identity_of(location: ImageLocation) -> str | None:
    """The published image's identity (what a later delete after exit 0 may remove)."""
    from arch.checkpoint.storage.beneath import opened_root
    from arch.checkpoint.storage.store import identity

    try:
        with opened_root(location.root) as root_fd:
            return identity(root_fd, location.relative)
    except OSError:
        return None


def next_generation(state: ContainerState) -> Lineage:
    """The lineage and generation of the container's next image: one more than the image it
    was restored from (or the one its fresh start found at the path); a new lineage when it
    started from nothing."""
    from arch.checkpoint.checkpoint_job import Lineage
    from arch.checkpoint.image.metadata import new_lineage

    recorded = (state.read_record() or {}).get("lineage")
    if isinstance(recorded, dict):
        lineage, generation = recorded.get("lineage"), recorded.get("generation")
        if isinstance(generation, int) and not isinstance(generation, bool):
            if isinstance(lineage, str) and lineage:
                return Lineage(lineage, generation + 1)
            return Lineage(new_lineage(), generation + 1)
    return Lineage(new_lineage(), 1)


@contextlib.contextmanager
def exclusive_checkpoint(state: ContainerState) -> Iterator[None]:
    """One checkpoint of a container at a time (a stop and checkpoint --all may race)."""
    import fcntl

    path = os.path.join(state.path, CHECKPOINT_LOCK)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _hand_over(call: Call, location: ImageLocation, claimed_path: str) -> Callable[[], None]:
    """After a pool member's checkpoint (it is stopped now): drop the image it was restored
    from, which the new one supersedes, then offer the new one to the pool. In that order: a
    crash between leaves the pool without the old state, never with both (the operation record
    lets the next call finish it: arch.container.interrupted)."""
    from arch.checkpoint.storage import pool

    def hand_over() -> None:
        if location.image_dir and pool.drop_claim(location.image_dir, location.root):
            logger.info("checkpoint %s: superseded pool image %s removed", call.where,
                        location.image_dir)  # fmt: skip
        failpoints.hit("pool.before-release")
        released = pool.release(claimed_path, location.root)
        failpoints.hit("pool.after-release")
        logger.info("checkpoint %s: new image released into the pool as %s", call.where,
                    released)  # fmt: skip

    return hand_over


def handle_resume(call: Call) -> int:
    # containerd resumes after a checkpoint call it gave up on: that arch-runc may be dead.
    call.finish_interrupted(call.state())
    return skip_once(call, SKIP_RESUME)
