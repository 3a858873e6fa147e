"""create of an opted-in container: restore it from its image (or from a pool's) when one
validates, else create it fresh; and start, a no-op after a restore.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from arch.container.exit_watch import new_instance
from arch.container.state import (
    CHECKPOINTED,
    EXIT_STATUS,
    SKIP_START,
    ContainerState,
    StateError,
)
from arch.shim import notice_rules
from arch.shim.call import Call, image_trust, location_of, opted_in_bundle, skip_once
from arch.shim.sharedfs import with_sharedfs_workdir

if TYPE_CHECKING:
    from arch.checkpoint.image.metadata import ImageMetadata
    from arch.container.bundle import Bundle
    from arch.container.identity import ImageLocation

logger = logging.getLogger("arch")


RECORD_VERSION = 1


# Images a new pool member tries (claims, validates, restores) before it starts fresh.
POOL_CLAIM_ATTEMPTS = 3


# What became of one restore attempt.
RESTORED, NO_IMAGE, INVALID, REFUSED, SUPERSEDED = (
    "restored", "no image", "invalid", "refused", "superseded",
)  # fmt: skip


def handle_create(call: Call) -> int:
    from arch.container.bundle import BundleError
    from arch.container.identity import ImagePathError, image_location

    bundle = opted_in_bundle(call.command)
    if bundle is None:
        stale = call.state()
        if stale is not None:  # left by an earlier container of this id, e.g. a crashed delete
            call.finish_interrupted(stale)
            stale.remove_all()
        return call.pass_through()
    if call.config_error is not None:
        return call.fail(f"ARCH is enabled for this container but {call.config_error}")
    try:
        location = image_location(bundle.env, call.namespace, call.container_id, call.config)
        state = ContainerState(call.config.state_dir, call.namespace, call.container_id)
        if location.sharedfs_workdir and location.container_workdir:
            bundle = with_sharedfs_workdir(bundle, location, location.container_workdir)
    except (ImagePathError, StateError, BundleError, OSError) as error:
        return call.fail(str(error))
    call.finish_interrupted(state)
    _finish_previous_instance(call, state)
    state.remove_all()
    doomed = notice_rules.doomed(call.config)
    refusal = notice_rules.create_refusal(location) if doomed else None
    if refusal is not None:
        return call.fail(refusal)
    instance = new_instance(call.command.get("pid-file"))
    _write_record(state, location, bundle, instance)
    if doomed:  # neither restore nor claim on a host about to go
        notice_rules.start_fresh_during_notice(call.where, state)
        return call.pass_through()
    from arch.checkpoint.restore_job import RollbackFailed

    try:
        if location.pool_dir is not None:
            restored = _restore_from_pool(call, bundle, location, state, instance)
        else:
            restored = _restore(call, bundle, location, state) == RESTORED
    except RollbackFailed as error:
        return call.fail(
            "the restore failed and its filesystem changes could not be undone, so the "
            f"container is not created on that rootfs: {error}"
        )
    return 0 if restored else call.pass_through()


def _finish_previous_instance(call: Call, state: ContainerState) -> None:
    """What the delete of an earlier instance of this container id left undone (it was killed,
    or its removal failed): the image of a job that exited 0 is removed, a pool image it had
    claimed goes back to the pool. Otherwise this create would restore a finished job, or the
    claim would be held by nobody."""
    from arch.shim.delete import release_claim, remove_own_image

    previous = location_of(state) if state.exists() else None
    if previous is None or not previous.image_dir or state.has(CHECKPOINTED):
        return
    where = call.where
    finished = (state.get(EXIT_STATUS) or "").strip() == "0"
    if finished and notice_rules.exit_is_not_a_finish(call.config, state):
        finished = False  # a stop during a Spot notice: its image stays
    try:
        if finished:
            remove_own_image(where, state, previous)
        elif previous.pool_dir is not None:
            release_claim(where, previous, None)
    except OSError as error:
        logger.error("create %s: what the previous instance left is kept: %s", where, error)


def _write_record(
    state: ContainerState, location: ImageLocation, bundle: Bundle, instance: dict[str, object]
) -> None:
    """The container's record: where its image lives, which image was there at create (the
    one its delete may remove), and this instance (arch.container.exit_watch)."""
    from arch.checkpoint.storage.beneath import opened_root
    from arch.checkpoint.storage.store import identity

    image_identity = None
    if location.image_dir:
        try:
            with opened_root(location.root) as root_fd:
                image_identity = identity(root_fd, location.relative)
        except OSError:
            image_identity = None
    state.write_record(
        {
            "version": RECORD_VERSION,
            "location": location.as_dict(),
            "bundle": bundle.path,
            "instance": instance,
            "image_identity": image_identity,
        }
    )


def _restore_from_pool(
    call: Call,
    bundle: Bundle,
    location: ImageLocation,
    state: ContainerState,
    instance: dict[str, object],
) -> bool:
    """Claim pool images one by one until one restores; False: none left, create fresh.

    An image refused by validation is moved aside (it would fail for every member); one that
    this host cannot restore (CPU, mounts, runc) goes back to the pool for another host.
    """
    from arch.checkpoint.storage import pool

    assert location.pool_dir is not None
    where = call.where
    def announce(claimed_path: str) -> None:  # named before it is taken
        _write_record(state, location.with_image_dir(claimed_path), bundle, instance)

    wait_until = time.monotonic() + call.config.restore_wait
    try:
        while True:
            for claim in pool.claims(location.pool_dir, POOL_CLAIM_ATTEMPTS, location.root,
                                     announce):  # fmt: skip
                claimed = location.with_image_dir(claim.path)
                _write_record(state, claimed, bundle, instance)  # with the image's identity now
                outcome = _restore(call, bundle, claimed, state)
                if outcome == RESTORED:
                    return True
                if outcome == SUPERSEDED:
                    pool.drop_claim(claim.path, location.root)
                    logger.warning("create %s: pool image %s dropped: a newer generation of its "
                                   "job is in the pool", where, claim.entry)  # fmt: skip
                elif outcome == INVALID:
                    moved = pool.quarantine(claim.path, location.root)
                    logger.warning("create %s: pool image moved aside to %s", where, moved)
                elif outcome == REFUSED:
                    pool.release(claim.path, location.root)
                _write_record(state, location, bundle, instance)
            # None left: one a host under a Spot notice is still writing is worth waiting for.
            left = wait_until - time.monotonic()
            if not notice_rules.wait_for_pool_image(where, location, left):
                break
    except OSError as error:
        logger.warning("create %s: pool %s unusable, starting fresh: %s", where,
                       location.pool_dir, error)  # fmt: skip
        return False
    logger.info("create %s: no unclaimed image in pool %s, starting fresh", where,
                location.pool_dir)  # fmt: skip
    return False


def _restore(call: Call, bundle: Bundle, location: ImageLocation, state: ContainerState) -> str:
    """Restore the container from its image if there is a usable one; else create fresh.

    Returns RESTORED, or why not (nothing of the attempt left): NO_IMAGE, INVALID (the image
    is unusable anywhere) or REFUSED (this host cannot restore it). RollbackFailed: neither is
    possible. A reader marker keeps `archctl gc` off the image meanwhile.
    """
    from arch.checkpoint.storage.readers import reading

    _remove_stale_markers(call, location)
    with reading(location.root, location.relative):
        return _restore_from(call, bundle, location, state)


def _remove_stale_markers(call: Call, location: ImageLocation) -> None:
    """Reader markers of dead restores next to the image, removed beneath its root (best
    effort: a marker left protects an image from gc a while longer, nothing else)."""
    from arch.checkpoint.storage.beneath import open_beneath, opened_root
    from arch.checkpoint.storage.readers import remove_stale_markers_at

    try:
        with opened_root(location.root) as root_fd:
            parent_fd = open_beneath(root_fd, os.path.dirname(location.relative))
        try:
            removed = remove_stale_markers_at(parent_fd)
        finally:
            os.close(parent_fd)
    except OSError as error:
        logger.info("create %s: reader markers not cleaned up: %s", call.where, error)
        return
    for name in removed:
        logger.info("create %s: removed the reader marker of a dead restore %s", call.where,
                    name)  # fmt: skip


def _restore_from(
    call: Call, bundle: Bundle, location: ImageLocation, state: ContainerState
) -> str:
    from arch.checkpoint.image.errors import ImageMissing, InvalidImage
    from arch.checkpoint.image.signing import ImageKeyError
    from arch.checkpoint.image.validation import validate_beneath
    from arch.checkpoint.restore_job import RestoreJob, RestoreRefused, RollbackFailed
    from arch.checkpoint.storage.beneath import opened_root
    from arch.checkpoint.storage.store import cleanup_leftovers_of, recover
    from arch.container.interrupted import RESTORE, Operation
    from arch.runc import binary_facts

    where = call.where
    runc = call.runc()
    try:
        trust = image_trust(call.config, location)
        with opened_root(location.root) as root_fd:
            recover(root_fd, location.relative)
            for leftover in cleanup_leftovers_of(root_fd, location.relative):
                logger.info("create %s: removed the leftover %s", where, leftover.name)
            image = validate_beneath(
                root_fd,
                location.relative,
                binary_facts.version(runc.criu, call.config.binary_facts_dir),
                namespace=location.namespace,
                checkpoint_id=location.checkpoint_id,
                trust=trust,
            )
    except ImageMissing:
        logger.info("create %s: no image at %s, starting fresh", where, location.image_dir)
        return NO_IMAGE
    except InvalidImage as error:
        logger.warning("create %s: image %s not restored: %s", where, location.image_dir, error)
        call.count("restore", time.monotonic(), failure="invalid_image")
        _not_this_jobs_image(state, f"not validated: {error}")
        return INVALID
    except OSError as error:
        logger.warning("create %s: image %s not restored: %s", where, location.image_dir, error)
        call.count("restore", time.monotonic(), failure="storage")
        _not_this_jobs_image(state, f"unreadable: {error}")
        return REFUSED
    except ImageKeyError as error:
        logger.error("create %s: image %s not restored: %s", where, location.image_dir, error)
        call.count("restore", time.monotonic(), failure="other")
        _not_this_jobs_image(state, f"not verified: {error}")
        return REFUSED
    except Exception as error:  # whatever the storage holds, the container starts fresh
        logger.warning("create %s: image %s not restored, starting fresh: unexpected %s: %s",
                       where, location.image_dir, type(error).__name__, error, exc_info=True)
        call.count("restore", time.monotonic(), failure="other")
        _not_this_jobs_image(state, f"not looked at: {type(error).__name__}")
        return REFUSED
    lineage = {"lineage": image.metadata.lineage, "generation": image.metadata.generation}
    state.update_record(lambda record: record.update(lineage=lineage))
    if location.pool_dir is not None and _pool_superseded(location, image.metadata):
        image.close()
        return SUPERSEDED
    scratch = os.path.join(call.config.state_dir, ".work")
    operation = Operation(state, RESTORE, runc.global_args)
    job = RestoreJob(runc, call.command, bundle, image, call.container_id, scratch, operation,
                     call.config.binary_facts_dir, call.config.restore_timeout)
    started = time.monotonic()
    try:
        job.run()
    except RestoreRefused as error:
        operation.end()
        logger.warning("create %s: restore refused, starting fresh: %s", where, error)
        call.count("restore", started, failure=error.reason)
        if not job.identity_matched:
            _not_this_jobs_image(state, str(error))
        return REFUSED
    except RollbackFailed:
        operation.end()
        call.count("restore", started, failure="filesystem")
        raise
    except Exception:  # a bug must not stop the container: it is restored or created fresh
        if not job.restored:
            logger.exception("create %s: restore failed, starting fresh", where)
            runc.delete_force(call.container_id)  # whatever runc registered
            operation.end()
            call.count("restore", started, failure="other")
            if not job.identity_matched:
                _not_this_jobs_image(state, "restore failed before its identity was checked")
            return REFUSED
        logger.exception("create %s: restored, but a later step failed", where)
    finally:
        image.close()
    state.set(SKIP_START)
    operation.end()
    logger.info("create %s: restored from %s (generation %d)", where, location.image_dir,
                image.metadata.generation)  # fmt: skip
    call.count("restore", started, image_bytes=image.metadata.image_bytes)
    return RESTORED


def _not_this_jobs_image(state: ContainerState, why: str) -> None:
    """The image at the location is not known to be this job's (another job's, by its identity,
    or one that did not validate): this instance's exit 0 must not remove it (a task definition
    naming a victim's ARCH_CHECKPOINT_ID would otherwise delete the victim's image)."""

    def forget(record: dict[str, object]) -> None:
        record["image_identity"] = None
        record["image_not_removed"] = why.splitlines()[0] if why else "refused"

    state.update_record(forget)


def _pool_superseded(location: ImageLocation, metadata: ImageMetadata) -> bool:
    """Whether the pool holds a newer generation of the claimed image's job."""
    from arch.checkpoint.storage import pool

    assert location.pool_dir is not None
    return pool.superseded(location.pool_dir, metadata.lineage, metadata.generation,
                           location.root)  # fmt: skip


def handle_start(call: Call) -> int:
    return skip_once(call, SKIP_START)
