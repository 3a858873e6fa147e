"""The runc calls ARCH intercepts: create, start, checkpoint, resume, delete, and kill while a
Spot interruption notice is active.

Each handler first decides whether the container opted in (create: ARCH_ENABLE in the bundle's
config.json; the others: the state record create wrote). A container that did not opt in goes to
the real runc unchanged, whatever happens here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from arch.config import ConfigError, HostConfig, config_path, load_config
from arch.container.exit_watch import new_instance
from arch.container.interrupted import OPERATION_FLAG
from arch.container.state import SKIP_RESUME, SKIP_START, ContainerState, StateError
from arch.log import setup_logging
from arch.runc.runtime import Runc
from arch.shim.passthrough import pass_through, resolve_runc, run_runc

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from arch.container.bundle import Bundle
    from arch.container.identity import ImageLocation
    from arch.runc.parser import RuncCommand

logger = logging.getLogger("arch")

# The container was checkpointed: its exit is the checkpoint's, and its image stays.
CHECKPOINTED = "checkpointed"
RECORD_VERSION = 1
# Checkpoint flags whose dump is not a complete, self-contained image (iterative or lazy
# migration): such calls are runc's business, not ARCH's.
PARTIAL_DUMP_FLAGS = ("pre-dump", "parent-path", "lazy-pages", "page-server")
EXIT_FAILED = 1
# Held while a container is checkpointed (not a flag: its name has a dot).
CHECKPOINT_LOCK = ".checkpoint.lock"
# Images a new pool member tries (claims, validates, restores) before it starts fresh.
POOL_CLAIM_ATTEMPTS = 3
# What became of one restore attempt.
RESTORED, NO_IMAGE, INVALID, REFUSED = "restored", "no image", "invalid", "refused"


def location_of(state: ContainerState | None) -> ImageLocation | None:
    """The image location in the container's state record; None when there is no usable one."""
    from arch.container.identity import ImageLocation

    if state is None:
        return None
    record = state.read_record()
    if record is None:
        return None
    try:
        return ImageLocation.from_dict(record.get("location") or {})
    except ValueError as error:
        logger.warning("ignoring the unusable ARCH state record in %s: %s", state.path, error)
        return None


def one_line(message: str) -> str:
    """A message's first line, plus CRIU's first error line when the message quotes a log."""
    lines = message.splitlines() or [""]
    cause = next((line.strip() for line in lines[1:] if "Error (" in line), None)
    return f"{lines[0].rstrip(': ')}; CRIU: {cause}" if cause else lines[0]


class Call:
    """One intercepted runc invocation and the host configuration it runs under."""

    def __init__(self, command: RuncCommand, args: Sequence[str]) -> None:
        self.command = command
        self.args = list(args)
        self.config_error: ConfigError | None = None
        try:
            self.config = load_config()
        except ConfigError as error:
            self.config_error = error
            self.config = HostConfig(config_path())
        setup_logging(self.config.log_file, self.config.log_level)
        if self.config_error is not None:
            logger.error("%s", self.config_error)

    @property
    def container_id(self) -> str:
        return self.command.container_id or ""

    @property
    def namespace(self) -> str:
        # The namespace is the last component of runc's --root (containerd: .../runc/<ns>);
        # plain runc's default root /run/runc gives "runc".
        return self.command.namespace or "runc"

    @property
    def where(self) -> str:
        """The container, as log lines name it."""
        return f"{self.namespace}/{self.container_id}"

    def state(self) -> ContainerState | None:
        """The container's ARCH state, or None when it has none (it did not opt in)."""
        try:
            state = ContainerState(self.config.state_dir, self.namespace, self.container_id)
        except StateError:
            return None
        return state if state.exists() else None

    def pass_through(self) -> int:
        # With a malformed arch.toml, self.config holds the defaults: runc is found on PATH.
        return pass_through(self.args, self.config)

    def fail(self, message: str) -> int:
        """Refuse the call: one line of reason on stderr (runc's error channel) and in runc's
        log; the whole message (with CRIU's log tail) in ARCH's log."""
        logger.error("%s %s: %s", self.command.subcommand, self.where, message)
        line = f"arch-runc: {one_line(message)}"
        print(line, file=sys.stderr)
        self._report_in_runc_log(line)
        return EXIT_FAILED

    def _report_in_runc_log(self, message: str) -> None:
        """Append the error to runc's --log file as runc would: containerd's shim takes the
        reason for a failed create from there (its stderr is the container's, often lost)."""
        import json
        import time

        path = self.command.get_global("log")
        if not path:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.command.get_global("log-format") == "json":
            line = json.dumps({"level": "error", "msg": message, "time": now})
        else:
            line = f'time="{now}" level=error msg={json.dumps(message)}'
        try:
            with open(path, "a", encoding="utf-8") as log:
                log.write(line + "\n")
        except OSError as error:
            logger.warning("cannot add the error to runc's log %s: %s", path, error)

    def count(
        self,
        operation: str,
        started: float,
        image_bytes: int | None = None,
        failure: str | None = None,
    ) -> None:
        """Add this checkpoint or restore (begun at time.monotonic() `started`) to the metrics."""
        from arch import metrics

        seconds = time.monotonic() - started
        metrics.record(self.config, operation, seconds=seconds, image_bytes=image_bytes,
                       failure=failure)  # fmt: skip

    def runc(self) -> Runc:
        return Runc.for_command(resolve_runc(self.config), self.command, self.config.criu)

    def finish_interrupted(self, state: ContainerState | None) -> None:
        """Clean up after a checkpoint or restore of this container whose arch-runc was killed
        (arch.container.interrupted); cheap when there was none."""
        if state is None or not state.has(OPERATION_FLAG):
            return
        from arch.container.interrupted import finish_interrupted

        finish_interrupted(state, resolve_runc(self.config), self.config.criu)

    def run_through(self) -> int:
        """Run the call itself through the real runc as a child, on this process's stdio."""
        return run_runc(self.args, self.config)


def opted_in_bundle(command: RuncCommand) -> Bundle | None:
    """The bundle of a create whose container opted in; None when the create is runc's alone
    (not opted in, or a config.json runc's decoder refuses: runc reports that itself)."""
    from arch.container.bundle import Bundle, BundleError
    from arch.container.identity import opted_in

    try:
        bundle = Bundle.load(command.get("bundle") or os.getcwd())
    except BundleError:
        return None
    return bundle if command.container_id and opted_in(bundle.env) else None


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
            bundle = _with_sharedfs_workdir(bundle, location, location.container_workdir)
    except (ImagePathError, StateError, BundleError, OSError) as error:
        return call.fail(str(error))
    call.finish_interrupted(state)
    state.remove_all()
    instance = new_instance(call.command.get("pid-file"))
    _write_record(state, location, bundle, instance)
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
    try:
        for claim in pool.claims(location.pool_dir, POOL_CLAIM_ATTEMPTS, location.root):
            claimed = location.with_image_dir(claim.path)
            _write_record(state, claimed, bundle, instance)  # named before it is used
            outcome = _restore(call, bundle, claimed, state)
            if outcome == RESTORED:
                return True
            if outcome == INVALID:
                moved = pool.quarantine(claim.path, location.root)
                logger.warning("create %s: pool image moved aside to %s", where, moved)
            elif outcome == REFUSED:
                pool.release(claim.path, location.root)
            _write_record(state, location, bundle, instance)
    except OSError as error:
        logger.warning("create %s: pool %s unusable, starting fresh: %s", where,
                       location.pool_dir, error)  # fmt: skip
        return False
    logger.info("create %s: no unclaimed image in pool %s, starting fresh", where,
                location.pool_dir)  # fmt: skip
    return False


def _with_sharedfs_workdir(
    bundle: Bundle, location: ImageLocation, container_dir: str
) -> Bundle:
    """Bind the shared work directory into the container as its cwd (config.json rewritten).

    The directory is made (0700, owned by the container's user) beneath its root, following no
    symlink: the shared filesystem is writable by other containers.
    """
    from arch.checkpoint.storage.beneath import NotBeneath, make_dirs_beneath, opened_root
    from arch.container.identity import ImagePathError

    host_dir = str(location.sharedfs_workdir)
    parent, _, name = str(location.workdir_relative).rpartition("/")
    try:
        with opened_root(location.root) as root_fd:
            parent_fd = make_dirs_beneath(root_fd, parent, 0o700)
            try:
                _make_owned_dir(parent_fd, name, bundle.process_owner())
            finally:
                os.close(parent_fd)
    except NotBeneath as error:
        raise ImagePathError(f"shared work directory {host_dir}: {error.strerror}") from error
    changed = bundle.with_sharedfs_workdir(host_dir, container_dir)
    if changed is None:
        return bundle
    changed.save()
    return changed


def _make_owned_dir(parent_fd: int, name: str, owner: tuple[int, int]) -> None:
    """Create `name` in the directory for the container's user, unless it exists (a directory
    that is not a symlink: NotBeneath otherwise)."""
    from arch.checkpoint.storage.beneath import open_beneath

    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        os.close(open_beneath(parent_fd, name))
        return
    fd = open_beneath(parent_fd, name)
    try:
        os.fchown(fd, *owner)
    finally:
        os.close(fd)


def _restore(call: Call, bundle: Bundle, location: ImageLocation, state: ContainerState) -> str:
    """Restore the container from its image if there is a usable one; else create fresh.

    Returns RESTORED, or why not (nothing of the attempt left): NO_IMAGE, INVALID (the image
    is unusable anywhere) or REFUSED (this host cannot restore it). RollbackFailed: neither is
    possible. A reader marker keeps `archctl gc` off the image meanwhile.
    """
    from arch.checkpoint.storage.readers import reading, remove_stale_markers

    for marker in remove_stale_markers(os.path.dirname(location.image_dir)):
        logger.info("create %s: removed the reader marker of a dead restore %s", call.where,
                    marker)  # fmt: skip
    with reading(location.root, location.relative):
        return _restore_from(call, bundle, location, state)


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
        key = image_key(call.config)
        with opened_root(location.root) as root_fd:
            recover(root_fd, location.relative)
            for leftover in cleanup_leftovers_of(root_fd, location.relative):
                logger.info("create %s: removed the leftover %s", where, leftover.name)
            image = validate_beneath(
                root_fd,
                location.relative,
                binary_facts.version(runc.criu, call.config.binary_facts_dir),
                checkpoint_id=location.checkpoint_id,
                key=key,
            )
    except ImageMissing:
        logger.info("create %s: no image at %s, starting fresh", where, location.image_dir)
        return NO_IMAGE
    except InvalidImage as error:
        logger.warning("create %s: image %s not restored: %s", where, location.image_dir, error)
        call.count("restore", time.monotonic(), failure="invalid_image")
        return INVALID
    except OSError as error:
        logger.warning("create %s: image %s not restored: %s", where, location.image_dir, error)
        call.count("restore", time.monotonic(), failure="storage")
        return REFUSED
    except ImageKeyError as error:
        logger.error("create %s: image %s not restored: %s", where, location.image_dir, error)
        call.count("restore", time.monotonic(), failure="other")
        return REFUSED
    scratch = os.path.join(call.config.state_dir, ".work")
    operation = Operation(state, RESTORE, runc.global_args)
    job = RestoreJob(runc, call.command, bundle, image, call.container_id, scratch, operation,
                     call.config.binary_facts_dir)
    started = time.monotonic()
    try:
        job.run()
    except RestoreRefused as error:
        operation.end()
        logger.warning("create %s: restore refused, starting fresh: %s", where, error)
        call.count("restore", started, failure=error.reason)
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
            return REFUSED
        logger.exception("create %s: restored, but a later step failed", where)
    finally:
        image.close()
    state.set(SKIP_START)
    operation.end()
    logger.info("create %s: restored from %s", where, location.image_dir)
    call.count("restore", started, image_bytes=image.metadata.image_bytes)
    return RESTORED


def handle_start(call: Call) -> int:
    return _skip_once(call, SKIP_START)


def handle_resume(call: Call) -> int:
    # containerd resumes after a checkpoint call it gave up on: that arch-runc may be dead.
    call.finish_interrupted(call.state())
    return _skip_once(call, SKIP_RESUME)


def _skip_once(call: Call, flag: str) -> int:
    """A no-op when ARCH already did this call's work (restored / checkpointed and stopped)."""
    state = call.state()
    if state is not None and state.take(flag) is not None:
        logger.info("%s %s: no-op (%s)", call.command.subcommand, call.where, flag)
        return 0
    return call.pass_through()


def image_key(config: HostConfig) -> bytes | None:
    """The image signing key of arch.toml's image_key_file; None when images are unsigned."""
    from arch.checkpoint.image.signing import load_key

    return None if config.image_key_file is None else load_key(config.image_key_file)


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
    with _exclusive_checkpoint(state):
        if state.has(CHECKPOINTED):  # a stop during a Spot notice checkpointed it meanwhile
            state.set(SKIP_RESUME)
            logger.info("checkpoint %s: already checkpointed", call.where)
            return 0
        try:
            published = _checkpoint(call, state, location, call.command)
        except CheckpointFailed as error:
            return call.fail(f"checkpoint failed, the container keeps running: {error}")
    state.set(SKIP_RESUME)
    logger.info("checkpoint %s: image published at %s", call.where, published)
    return 0


def _checkpoint(
    call: Call, state: ContainerState, location: ImageLocation, command: RuncCommand
) -> str:
    """Checkpoint and stop the container; where its image is published. CheckpointFailed
    leaves it running. The caller holds the container's checkpoint lock."""
    from arch.checkpoint.checkpoint_job import CheckpointFailed, CheckpointJob
    from arch.checkpoint.image.signing import ImageKeyError
    from arch.container.interrupted import CHECKPOINT, Operation

    started = time.monotonic()
    try:
        key = image_key(call.config)
    except ImageKeyError as error:
        call.count("checkpoint", started, failure="other")
        raise CheckpointFailed(str(error)) from error
    target = location
    if location.pool_dir is not None:
        from arch.checkpoint.storage import pool

        target = location.with_image_dir(pool.publication_path(location.pool_dir))
    runc = call.runc()
    job = CheckpointJob(
        runc,
        command,
        target,
        call.container_id,
        call.config.criu_options,
        Operation(state, CHECKPOINT, runc.global_args),
        call.config.checkpoint_timeout,
        image_key=key,
        binary_facts_dir=call.config.binary_facts_dir,
    )
    try:
        image = job.run()
    except CheckpointFailed as error:
        call.count("checkpoint", started, failure=error.reason)
        raise
    call.count("checkpoint", started, image_bytes=image.metadata.image_bytes)
    state.set(CHECKPOINTED)
    if location.pool_dir is not None:
        return _hand_to_pool(call, location, target.image_dir)
    return target.image_dir


def handle_kill(call: Call) -> int:
    """While a Spot notice is active, the stop of an ARCH container becomes a checkpoint.

    Docker and the ECS agent stop a container with its stop signal, then SIGKILL: either
    arrives here as `kill <id> <signal>` from containerd's shim. Checkpointing instead (the
    processes are killed once the image is published) means that a stop racing spot-watch's
    own checkpoint run still ends in an image. The kill returns only when that is done, so the
    caller's stop timeout starts after it. If the checkpoint fails, the signal is delivered as
    asked: the stop must still stop the container.
    """
    from arch.checkpoint.checkpoint_job import CheckpointFailed
    from arch.runc.parser import parse
    from arch.spot.notice import notice_active

    state = call.state()
    location = location_of(state)
    if (
        state is None
        or location is None
        or not notice_active(call.config.state_dir)
        or not is_stop_signal(call.command.positionals[1:2])
        or call.config_error is not None
    ):
        return call.pass_through()
    with _exclusive_checkpoint(state):
        if state.has(CHECKPOINTED):
            logger.info("kill %s: already checkpointed during the Spot notice", call.where)
            return 0
        globals_ = [token for option in call.command.global_options for token in option.tokens]
        checkpoint = parse([*globals_, "checkpoint", call.container_id])
        try:
            published = _checkpoint(call, state, location, checkpoint)
        except CheckpointFailed as error:
            logger.error("kill %s during a Spot notice: checkpoint failed, delivering the "
                         "signal instead: %s", call.where, error)  # fmt: skip
            return call.pass_through()
    logger.info("kill %s during a Spot notice: checkpointed instead, image published at %s",
                call.where, published)  # fmt: skip
    return 0


# The signals that stop a container (Docker's and ECS's default stop signal, SIGKILL after the
# timeout, and the usual interactive ones), by name and by number as runc accepts them.
STOP_SIGNALS = frozenset({"TERM", "KILL", "INT", "QUIT", "15", "9", "2", "3"})


def is_stop_signal(signal_argument: list[str]) -> bool:
    """runc kill's optional signal argument (default SIGTERM) names a stop signal."""
    name = (signal_argument[0] if signal_argument else "TERM").upper()
    return (name[3:] if name.startswith("SIG") else name) in STOP_SIGNALS


@contextlib.contextmanager
def _exclusive_checkpoint(state: ContainerState) -> Iterator[None]:
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


def _hand_to_pool(call: Call, location: ImageLocation, claimed_path: str) -> str:
    """After a pool member's checkpoint (it is stopped now): offer its new image to the pool
    and drop the image it was restored from, which the new one supersedes."""
    from arch.checkpoint.storage import pool

    try:
        published = pool.release(claimed_path, location.root) or claimed_path
    except OSError as error:  # the image is complete; `archctl gc` releases it later
        logger.error("checkpoint %s: image %s not released into the pool: %s", call.where,
                     claimed_path, error)  # fmt: skip
        published = claimed_path
    if location.image_dir:
        try:
            if _remove_image(location):
                logger.info("checkpoint %s: superseded pool image %s removed", call.where,
                            location.image_dir)  # fmt: skip
        except OSError as error:
            logger.error("checkpoint %s: superseded pool image %s kept: %s", call.where,
                         location.image_dir, error)  # fmt: skip
    return published


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
    if status != 0:
        return status
    where = call.where
    if state.has(CHECKPOINTED):
        logger.info("delete %s: checkpointed, image kept in %s", where,
                    location.image_dir or location.pool_dir)  # fmt: skip
    elif not location.image_dir:
        logger.info("delete %s: pool member without a claimed image", where)
    else:
        exit_status = wait_for_exit_status(state)
        if exit_status == 0:
            try:
                _remove_own_image(where, state, location)
            except OSError as error:
                logger.error("delete %s: exited 0, image %s kept: %s", where,
                             location.image_dir, error)  # fmt: skip
        elif location.pool_dir is not None:
            _release_claim(where, location, exit_status)
        else:
            logger.info("delete %s: exit status %s, image %s kept", where, exit_status,
                        location.image_dir)  # fmt: skip
    state.remove_all()
    return 0


def _remove_image(location: ImageLocation) -> bool:
    """Remove the location's image, resolved beneath its root (NotBeneath, an OSError, when it
    no longer resolves there: nothing is removed); False when there is none."""
    from arch.checkpoint.storage.beneath import opened_root
    from arch.checkpoint.storage.store import remove

    with opened_root(location.root) as root_fd:
        return remove(root_fd, location.relative)


def _remove_own_image(where: str, state: ContainerState, location: ImageLocation) -> None:
    """After exit 0: remove the image this instance was created against, not one another
    container (a replica with the same checkpoint id, another host) published there since. The
    image is resolved beneath its root (NotBeneath, an OSError, when it no longer resolves)."""
    from arch.checkpoint.storage.beneath import opened_root
    from arch.checkpoint.storage.store import remove

    record = state.read_record() or {}
    expected = record.get("image_identity")
    if not isinstance(expected, str):
        logger.info("delete %s: exited 0; no image was at %s when it was created: nothing "
                    "removed", where, location.image_dir)  # fmt: skip
        return
    with opened_root(location.root) as root_fd:
        removed = remove(root_fd, location.relative, expected)
    if removed:
        logger.info("delete %s: exited 0, image %s removed", where, location.image_dir)
    else:
        logger.info("delete %s: exited 0, but the image at %s is not the one it was created "
                    "against: kept", where, location.image_dir)  # fmt: skip


def _release_claim(where: str, location: ImageLocation, exit_status: int | None) -> None:
    from arch.checkpoint.storage import pool

    claimed_path = location.image_dir
    try:
        released = pool.release(claimed_path, location.root)
    except OSError as error:
        logger.error("delete %s: cannot release pool image %s: %s", where, claimed_path, error)
        return
    logger.info("delete %s: exit status %s, pool image released as %s", where, exit_status,
                released)  # fmt: skip


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

