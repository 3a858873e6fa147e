"""`archctl gc`: find and remove checkpoint images that can no longer be used.

Rules, each reported with the image it applies to:
- finished: the container that used the image exited with code 0 after the image was made,
  but the image is still there (the exit watcher missed the event, or the delete never came).
  Known from this host's ARCH state (exit status recorded, no checkpoint since) and, for
  Docker's containers (namespace `moby`, which ECS runs), from Docker's record of the exit.
- older-than: made before the given age (`--older-than`); unreadable images by their mtime.
- invalid: a pool image moved aside because it failed validation, older than LEFTOVER_GRACE.
- orphaned claim: a pool image claimed by this host for a container that no longer exists here
  is released into the pool (not removed).
- leftovers of interrupted publications and removals (`.staging-`, `.old-`, `.removing-`): the
  store's stale sweep removes those untouched for an hour and not locked by their writer.

Never touched: an image a container on this host still uses (its ARCH state names it and it has
not exited 0), an image a restore is reading here or on another host (storage/readers.py),
pool images claimed by any host (a container runs from it or is restoring it), and staging
directories in use. Pool entries are claimed (renamed) before removal, so a
replica on another host cannot claim one while it is being removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, NamedTuple

from arch import bounded_json, failpoints
from arch.checkpoint.image.errors import InvalidImage
from arch.checkpoint.image.metadata import ImageMetadata
from arch.checkpoint.image.validation import read_metadata_at, validate_beneath
from arch.checkpoint.storage import pool
from arch.checkpoint.storage.beneath import open_beneath, opened_root
from arch.checkpoint.storage.readers import (
    readers_at,
    readers_of,
    remove_stale_markers_at,
)
from arch.checkpoint.storage.store import (
    LEFTOVER_PREFIXES,
    REMOVING_PREFIX,
    STALE_AFTER_SECONDS,
    cleanup_stale,
    remove,
    remove_old_copies,
)
from arch.container.identity import ImageLocation
from arch.container.state import (
    CHECKPOINTED,
    EXIT_STATUS,
    ContainerState,
    StateError,
    list_containers,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from arch.config import HostConfig

FINISHED, OLDER_THAN, INVALID, ORPHANED_CLAIM, LEFTOVER = (
    "finished", "older-than", "invalid", "orphaned-claim", "leftover",
)  # fmt: skip
REMOVE, RELEASE = "remove", "release"
# A leftover or moved-aside image younger than this may belong to an operation in progress.
LEFTOVER_GRACE = STALE_AFTER_SECONDS
DOCKER_NAMESPACE = "moby"
DOCKER_TIMEOUT = 30.0
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class GcSkipped(Exception):
    """The action was not taken for a reason found at the last moment (not a failure)."""


class Action(NamedTuple):
    path: str
    rule: str
    action: str  # REMOVE or RELEASE
    detail: str


class Outcome(NamedTuple):
    action: Action
    done: bool
    error: str | None = None
    skipped: str | None = None  # why it was left alone after all


class Kept(NamedTuple):
    path: str
    reason: str


class Plan(NamedTuple):
    actions: list[Action]
    kept: list[Kept]
    sweep_dirs: list[str]  # namespace and pool directories for the leftover sweep


class ContainerUse(NamedTuple):
    """What this host's ARCH state says about a container that uses an image."""

    name: str
    exit_status: int | None
    exited_at: float | None
    checkpointed: bool


def parse_duration(text: str) -> float:
    """Seconds from "90s", "30m", "12h", "7d", "2w" or plain seconds; ValueError otherwise."""
    value = text.strip().lower()
    unit = _DURATION_UNITS.get(value[-1:])
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 30m, 12h, 7d, 2w)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def default_roots(config: HostConfig) -> list[str]:
    """checkpoint_root, plus the roots of the images this host's containers use (paths set by
    ARCH_CHECKPOINT_HOST_PATH or ARCH_SHAREDFS_HOST_PATH lead elsewhere)."""
    roots = {os.path.normpath(config.checkpoint_root)}
    for namespace, container_id in list_containers(config.state_dir):
        try:
            record = ContainerState(config.state_dir, namespace, container_id).read_record()
            location = ImageLocation.from_dict((record or {}).get("location") or {})
        except (StateError, ValueError, OSError):
            continue
        directory = location.pool_dir or location.image_dir
        if directory:  # <root>/<namespace>/<id or pool>
            roots.add(os.path.dirname(os.path.dirname(os.path.normpath(directory))))
    return sorted(roots)


def plan(
    roots: Iterable[str],
    config: HostConfig,
    *,
    older_than: float | None = None,
    now: float | None = None,
    docker_socket: str | None = None,
) -> Plan:
    """What gc would do under `roots` (each laid out as <root>/<namespace>/<id or pool>)."""
    now = time.time() if now is None else now
    uses = image_uses(config)
    docker = DockerExits(docker_socket)
    actions: list[Action] = []
    kept: list[Kept] = []
    sweep: list[str] = []
    for root in roots:
        for namespace_dir in _subdirectories(root):
            sweep.append(namespace_dir)
            for path in _subdirectories(namespace_dir):
                try:
                    if pool.is_pool_dir(path):
                        sweep.append(path)
                        _plan_pool(path, uses, older_than, now, actions, kept)
                    else:
                        _plan_image(path, uses, docker, older_than, now, actions, kept)
                except Exception as error:  # whatever the storage holds, gc goes on: reported
                    kept.append(Kept(path, f"not examined: {_error_text(error)}"))
    return Plan(actions, kept, sweep)


def execute(actions: Iterable[Action]) -> list[Outcome]:
    outcomes = []
    for action in actions:
        try:
            done = _apply(action)
        except GcSkipped as skipped:
            outcomes.append(Outcome(action, False, None, str(skipped)))
            continue
        except Exception as error:  # one failed action does not stop the others: reported
            outcomes.append(Outcome(action, False, _error_text(error)))
            continue
        outcomes.append(Outcome(action, done, None, None if done else "gone or taken meanwhile"))
    return outcomes


def sweep_leftovers(directories: Iterable[str], dry_run: bool, now: float) -> list[Outcome]:
    """Leftovers of interrupted publications: listed (dry run) or removed by the store's sweep
    (only those untouched for an hour and not locked by the process writing them)."""
    outcomes = []
    for directory in directories:
        if dry_run:
            outcomes += [
                Outcome(Action(os.path.join(directory, name), LEFTOVER, REMOVE,
                               "removed if untouched for an hour and not locked"), False)
                for name in _leftover_names(directory)
            ]  # fmt: skip
            continue
        try:
            with _beneath_slash(directory) as (root_fd, relative):
                swept = cleanup_stale(root_fd, relative, now=now)
                parent_fd = open_beneath(root_fd, relative)
            try:
                markers = [os.path.join(directory, name)
                           for name in remove_stale_markers_at(parent_fd, now)]  # fmt: skip
            finally:
                os.close(parent_fd)
        except Exception as error:  # the next directory is still swept: reported
            outcomes.append(Outcome(Action(directory, LEFTOVER, REMOVE, ""), False,
                                    _error_text(error)))  # fmt: skip
            continue
        outcomes += [
            Outcome(Action(os.path.join(directory, item.name), LEFTOVER, REMOVE, "stale"), True)
            for item in swept
        ]
        outcomes += [
            Outcome(Action(marker, LEFTOVER, REMOVE, "reader marker of a finished restore"), True)
            for marker in markers
        ]
    return outcomes


def image_uses(config: HostConfig) -> dict[str, list[ContainerUse]]:
    """Image directory -> the containers of this host whose ARCH state names it."""
    uses: dict[str, list[ContainerUse]] = {}
    for namespace, container_id in list_containers(config.state_dir):
        try:
            state = ContainerState(config.state_dir, namespace, container_id)
            record = state.read_record()
            location = ImageLocation.from_dict((record or {}).get("location") or {})
        except (StateError, ValueError, OSError):
            continue
        if not location.image_dir:
            continue
        status_text = state.get(EXIT_STATUS)
        exit_status = int(status_text) if status_text and status_text.strip().isdigit() else None
        exited_at = _mtime(os.path.join(state.path, EXIT_STATUS)) if status_text else None
        use = ContainerUse(f"{namespace}/{container_id}", exit_status, exited_at,
                           state.has(CHECKPOINTED))  # fmt: skip
        uses.setdefault(os.path.normpath(location.image_dir), []).append(use)
    return uses


class DockerExits:
    """Docker's record of how a container ended (`docker inspect`), for namespace `moby`."""

    def __init__(self, socket: str | None) -> None:
        self.docker = shutil.which("docker")
        self.socket = socket
        self.cache: dict[str, tuple[int, float] | None] = {}

    @property
    def available(self) -> bool:
        return bool(self.docker and self.socket and os.path.exists(self.socket))

    def exit_of(self, container_id: str) -> tuple[int, float] | None:
        """(exit code, finished at) of an exited container; None when unknown or running."""
        if not self.available:
            return None
        if container_id not in self.cache:
            self.cache[container_id] = self._inspect(container_id)
        return self.cache[container_id]

    def _inspect(self, container_id: str) -> tuple[int, float] | None:
        assert self.docker is not None and self.socket is not None
        try:
            completed = subprocess.run(
                [self.docker, "--host", f"unix://{self.socket}", "inspect", "--type",
                 "container", "--format", "{{json .State}}", "--", container_id],
                capture_output=True, text=True, timeout=DOCKER_TIMEOUT, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        if completed.returncode != 0:
            return None
        try:
            state = bounded_json.loads(completed.stdout)
            if state.get("Status") != "exited" or not isinstance(state.get("ExitCode"), int):
                return None
            return state["ExitCode"], _rfc3339_seconds(str(state.get("FinishedAt", "")))
        except (ValueError, AttributeError):
            return None


def _plan_image(
    path: str,
    uses: dict[str, list[ContainerUse]],
    docker: DockerExits,
    older_than: float | None,
    now: float,
    actions: list[Action],
    kept: list[Kept],
) -> None:
    metadata: ImageMetadata | None = None
    problem: str | None = None
    try:
        metadata = _validated(path)
    except InvalidImage as error:
        problem = error.reason
    except OSError as error:  # e.g. a symlink on the way: judged by its age, never followed
        problem = str(error)
    created = _created_seconds(metadata) if metadata else _mtime(path)
    users = uses.get(os.path.normpath(path), [])
    finished = [use for use in users if _finished_after(use, created)]
    running = [use for use in users if use.exit_status is None and not use.checkpointed]
    if running:
        kept.append(Kept(path, f"in use by {', '.join(use.name for use in running)}"))
        return
    restoring = readers_of(path, now)
    if restoring:
        kept.append(Kept(path, f"being restored on {', '.join(r.host for r in restoring)}"))
        return
    if finished:
        actions.append(Action(path, FINISHED, REMOVE, f"{finished[0].name} exited 0"))
        return
    if metadata is not None and metadata.namespace == DOCKER_NAMESPACE:
        ended = docker.exit_of(metadata.container_id)
        if ended is not None and ended[0] == 0 and ended[1] >= (created or 0):
            detail = f"Docker container {metadata.container_id[:12]} exited 0"
            actions.append(Action(path, FINISHED, REMOVE, detail))
            return
    age = None if created is None else now - created
    if older_than is not None and age is not None and age > older_than:
        what = "invalid image " if problem else ""
        actions.append(Action(path, OLDER_THAN, REMOVE, f"{what}made {_age_text(age)} ago"))
        return
    kept.append(Kept(path, f"invalid: {problem}" if problem else "restorable, not expired"))


def _plan_pool(
    pool_dir: str,
    uses: dict[str, list[ContainerUse]],
    older_than: float | None,
    now: float,
    actions: list[Action],
    kept: list[Kept],
) -> None:
    here = pool.host_label()
    for name in sorted(os.listdir(pool_dir)):
        path = os.path.join(pool_dir, name)
        try:
            _plan_pool_entry(path, name, here, uses, older_than, now, actions, kept)
        except Exception as error:  # whatever the storage holds, gc goes on: reported
            kept.append(Kept(path, f"not examined: {_error_text(error)}"))


def _plan_pool_entry(
    path: str,
    name: str,
    here: str,
    uses: dict[str, list[ContainerUse]],
    older_than: float | None,
    now: float,
    actions: list[Action],
    kept: list[Kept],
) -> None:
    claimed = pool.parse_claimed(name)
    if claimed is not None:
        users = uses.get(os.path.normpath(path), [])
        age = now - (_mtime(path) or now)
        if claimed.host == here and not users and age > LEFTOVER_GRACE:
            detail = "claimed here by a container that no longer exists"
            actions.append(Action(path, ORPHANED_CLAIM, RELEASE, detail))
        else:
            kept.append(Kept(path, f"claimed by {claimed.host}"))
    elif name.startswith(pool.INVALID_PREFIX):
        age = now - (_mtime(path) or now)
        if age > LEFTOVER_GRACE:
            actions.append(Action(path, INVALID, REMOVE, "failed validation when claimed"))
        else:
            kept.append(Kept(path, "moved aside recently"))
    elif pool.is_entry(name):
        created = _entry_created(path)
        if older_than is not None and created is not None and now - created > older_than:
            actions.append(Action(path, OLDER_THAN, REMOVE,
                                  f"made {_age_text(now - created)} ago"))  # fmt: skip
        else:
            kept.append(Kept(path, "unclaimed, not expired"))


def _apply(action: Action) -> bool:
    # The pool module resolves beneath "/" following no symlink: resolve the listed parent now.
    parent, name = os.path.realpath(os.path.dirname(action.path)), os.path.basename(action.path)
    if action.action == RELEASE:
        return pool.release(os.path.join(parent, name)) is not None
    if pool.is_entry(name):
        # Claimed first: a replica elsewhere cannot take it while it is being removed.
        claim = pool.claim_entry(parent, name)
        return claim is not None and _remove(claim.path)
    # Swapped-out copies of earlier publications first: once the path is empty, `recover`
    # would bring such an older state back as the job's image.
    with _beneath_slash(action.path) as (root_fd, relative):
        remove_old_copies(root_fd, relative)
    # Moved aside first, then checked for readers: a restore that starts meanwhile finds no
    # image instead of one being deleted; one that started before puts it back.
    aside = f"{REMOVING_PREFIX}{name}-{os.urandom(6).hex()}"
    with opened_root("/") as root_fd:
        parent_fd = open_beneath(root_fd, parent.lstrip("/"))  # no symlink on the way
    try:
        try:
            os.rename(name, aside, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except FileNotFoundError:
            return False
        failpoints.hit("gc.renamed-aside")
        restoring = readers_at(parent_fd, name)
        if restoring:
            os.rename(aside, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            hosts = ", ".join(reader.host for reader in restoring)
            raise GcSkipped(f"being restored on {hosts}: left in place")
    finally:
        os.close(parent_fd)
    return _remove(os.path.join(parent, aside))


def _remove(path: str) -> bool:
    with _beneath_slash(path) as (root_fd, relative):
        return remove(root_fd, relative)


@contextlib.contextmanager
def _beneath_slash(path: str) -> Iterator[tuple[int, str]]:
    """(descriptor of "/", `path` relative to it) with the parent's symlinks resolved now: the
    store then follows no symlink on the way (gc walks paths it listed from the roots itself).
    """
    parent = os.path.realpath(os.path.dirname(path))
    with opened_root("/") as root_fd:
        yield root_fd, os.path.join(parent, os.path.basename(path)).lstrip("/")


def _finished_after(use: ContainerUse, created: float | None) -> bool:
    if use.exit_status != 0 or use.checkpointed:
        return False
    return created is None or use.exited_at is None or use.exited_at >= created


def _validated(path: str) -> ImageMetadata:
    """The metadata of the image at `path` once it validates, looked at beneath "/" following
    no symlink (as gc removes it)."""
    with _beneath_slash(path) as (root_fd, relative):
        image = validate_beneath(root_fd, relative)
    image.close()
    return image.metadata


def _entry_created(path: str) -> float | None:
    try:
        with _beneath_slash(path) as (root_fd, relative):
            dir_fd = open_beneath(root_fd, relative)
        try:
            return _created_seconds(read_metadata_at(dir_fd))
        finally:
            os.close(dir_fd)
    except (InvalidImage, OSError):
        return _mtime(path)


def _created_seconds(metadata: ImageMetadata | None) -> float | None:
    return None if metadata is None else _rfc3339_seconds(metadata.created)


def _rfc3339_seconds(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (fractions beyond microseconds dropped)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    main, dot, rest = value.partition(".")
    if dot:
        fraction = len(rest) - len(rest.lstrip("0123456789"))
        value = f"{main}.{rest[:fraction][:6].ljust(6, '0')}{rest[fraction:]}"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path, follow_symlinks=False).st_mtime
    except OSError:
        return None


def _subdirectories(path: str) -> list[str]:
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    return sorted(
        entry.path
        for entry in entries
        if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
    )


def _leftover_names(directory: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(directory) if n.startswith(LEFTOVER_PREFIXES))
    except OSError:
        return []


def _error_text(error: Exception) -> str:
    return str(error) if isinstance(error, OSError) else f"{type(error).__name__}: {error}"


def _age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
