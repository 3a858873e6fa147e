"""Checkpoint and stop ARCH containers through containerd, in parallel (archctl checkpoint).

Each container is checkpointed with `ctr task checkpoint --exit --image-path <scratch>`: containerd
pauses the task, the runtime (arch-runc) writes and publishes ARCH's image, and the task exits, so
containerd, Docker and ECS all see it stopped. The image path keeps containerd from building its
own checkpoint image in its content store (measured on 256 MiB resident + 256 MiB of filesystem
changes: 4.9 s with the content-store copy, 0.73 s without); arch-runc ignores the scratch
directory, which is removed afterwards.

A container that is not running, or not ARCH-enabled, is reported as skipped: only a container
that should have been checkpointed and was not counts as failed.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

from arch.operator.containerd import PAUSED, RUNNING, ContainerdError
from arch.operator.inventory import (
    FROM_STATE,
    METADATA_FILE,
    ArchContainer,
    discover,
    image_published,
    opened_image,
    recorded_location,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from arch.config import HostConfig
    from arch.container.identity import ImageLocation
    from arch.operator.containerd import Containerd

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
SCRATCH_DIR = ".work"
# CRIU's dump is mostly CPU (page copying) and disk; ctr and containerd mostly wait. Two
# checkpoints per core keep the CPUs busy without letting dumps of large containers fight.
WORKERS_PER_CPU = 2
MAX_WORKERS = 16


def default_workers() -> int:
    return max(2, min(MAX_WORKERS, (os.cpu_count() or 1) * WORKERS_PER_CPU))


class Target(NamedTuple):
    """A container to checkpoint, or to report as skipped with the reason."""

    namespace: str
    container_id: str
    container: ArchContainer | None
    skip_reason: str | None = None
    fail_reason: str | None = None

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.container_id}"


class Outcome(NamedTuple):
    """What became of one container."""

    namespace: str
    container_id: str
    status: str  # OK, FAILED or SKIPPED
    reason: str
    seconds: float
    image_dir: str | None
    image_bytes: int | None

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.container_id}"

    def as_dict(self) -> dict[str, object]:
        return {
            "namespace": self.namespace,
            "container_id": self.container_id,
            "status": self.status,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "image_dir": self.image_dir,
            "image_bytes": self.image_bytes,
        }


def plan_all(client: Containerd, config: HostConfig) -> tuple[list[Target], list[str]]:
    """Every container arch-runc created opted in, in this containerd; and namespaces unread."""
    inventory = discover(client, config, read_specs=False)
    return [_target(container) for container in inventory.containers], inventory.problems


def plan_named(
    client: Containerd, config: HostConfig, names: Iterable[tuple[str, str]]
) -> list[Target]:
    """The named containers (namespace, id), each with why it is skipped or failed, if so."""
    targets = []
    tasks_by_namespace: dict[str, dict[str, str]] = {}
    for namespace, container_id in names:
        try:
            if namespace not in tasks_by_namespace:
                tasks = client.tasks(namespace)
                tasks_by_namespace[namespace] = {key: task.status for key, task in tasks.items()}
            present = container_id in client.container_ids(namespace)
        except ContainerdError as error:
            targets.append(Target(namespace, container_id, None, fail_reason=str(error)))
            continue
        if not present:
            reason = "no such container in containerd"
            targets.append(Target(namespace, container_id, None, fail_reason=reason))
            continue
        status = tasks_by_namespace[namespace].get(container_id, "NO TASK")
        location = recorded_location(config, namespace, container_id)
        if location is None:
            reason = "not ARCH-enabled (arch-runc did not create it with ARCH_ENABLE)"
            targets.append(Target(namespace, container_id, None, skip_reason=reason))
            continue
        container = ArchContainer(namespace, container_id, status, location, FROM_STATE)
        targets.append(_target(container))
    return targets


def _target(container: ArchContainer) -> Target:
    skip = None
    if container.status not in (RUNNING, PAUSED):
        skip = f"not running ({container.status.lower()})"
    return Target(container.namespace, container.container_id, container, skip_reason=skip)


class CheckpointRun:
    """Checkpoint targets with at most `workers` at once; `progress` hears of each as it ends."""

    def __init__(
        self,
        client: Containerd,
        config: HostConfig,
        workers: int,
        progress: Callable[[Outcome, int, int], None] | None = None,
        started: Callable[[Target], None] | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.workers = max(1, workers)
        self.progress = progress
        self.started = started
        self._lock = threading.Lock()
        self._done = 0

    def run(self, targets: list[Target]) -> list[Outcome]:
        """Every target's outcome, in the targets' order."""
        self._done = 0
        total = len(targets)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            outcomes = list(pool.map(lambda target: self._one(target, total), targets))
        return outcomes

    def _one(self, target: Target, total: int) -> Outcome:
        started = time.monotonic()
        if target.fail_reason is not None or target.skip_reason is not None or not target.container:
            status = FAILED if target.fail_reason is not None else SKIPPED
            reason = target.fail_reason or target.skip_reason or ""
            outcome = Outcome(
                target.namespace, target.container_id, status, reason, 0.0, None, None
            )
        else:
            if self.started is not None:
                self.started(target)
            outcome = self._checkpoint(target, target.container, started)
        with self._lock:
            self._done += 1
            done = self._done
        if self.progress is not None:
            self.progress(outcome, done, total)
        return outcome

    def _checkpoint(self, target: Target, container: ArchContainer, started: float) -> Outcome:
        location = container.location
        assert location is not None  # a FROM_STATE container always has one
        wall_start = time.time()
        scratch_parent = os.path.join(self.config.state_dir, SCRATCH_DIR)
        status, reason = OK, "checkpointed and stopped"
        try:
            os.makedirs(scratch_parent, mode=0o700, exist_ok=True)
            scratch = tempfile.mkdtemp(prefix="ctr-checkpoint-", dir=scratch_parent)
        except OSError as error:
            return self._outcome(target, FAILED, f"no scratch directory: {error}", started, None)
        try:
            self.client.checkpoint(target.namespace, target.container_id, scratch)
        except ContainerdError as error:
            status, reason = FAILED, str(error)
            if _published_since(location, target.container_id, wall_start):
                # A concurrent stop (the Spot notice turns it into a checkpoint) did it first.
                status, reason = OK, "checkpointed by a concurrent stop"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if location.pool_dir is not None:  # published into the pool under a name of its own
            image_dir = location.pool_dir if status == OK else None
            return self._outcome(target, status, reason, started, image_dir)
        if status == OK and not image_published(location):
            status, reason = (
                FAILED,
                f"containerd reported success but no ARCH image is at {location.image_dir}",
            )
        published = location if status == OK else None
        return self._outcome(target, status, reason, started,
                             location.image_dir if published else None, published)

    @staticmethod
    def _outcome(
        target: Target,
        status: str,
        reason: str,
        started: float,
        image_dir: str | None,
        measured: ImageLocation | None = None,
    ) -> Outcome:
        size = directory_bytes(measured) if measured is not None else None
        seconds = time.monotonic() - started
        return Outcome(
            target.namespace, target.container_id, status, reason, seconds, image_dir, size
        )


def _published_since(location: ImageLocation, container_id: str, since: float) -> bool:
    """Whether the image at the location was taken of this container at or after `since`
    (epoch). Its metadata.json is read beneath the root, bounded (arch.bounded_json)."""
    import calendar

    from arch.bounded_json import read_at
    from arch.checkpoint.image.validation import METADATA_MAX_BYTES

    with opened_image(location) as dir_fd:
        if dir_fd is None:
            return False
        try:
            metadata = read_at(dir_fd, METADATA_FILE, METADATA_MAX_BYTES)
            created = calendar.timegm(
                time.strptime(str(metadata["created"]), "%Y-%m-%dT%H:%M:%SZ")
            )
        except (OSError, ValueError, KeyError, TypeError, OverflowError):
            return False
    return bool(metadata.get("container_id") == container_id and created >= int(since))


def directory_bytes(location: ImageLocation) -> int:
    """The total size of the regular files directly in the location's image (an image is
    flat), looked at beneath its root."""
    total = 0
    with opened_image(location) as dir_fd:
        if dir_fd is None:
            return 0
        try:
            names = os.listdir(dir_fd)
        except OSError:
            return 0
        for name in names:
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


class Report(NamedTuple):
    """One run: every container's outcome, what could not be looked at, and how long it took."""

    outcomes: list[Outcome]
    problems: list[str]
    seconds: float
    workers: int

    @property
    def failed(self) -> bool:
        return bool(self.problems) or any(outcome.status == FAILED for outcome in self.outcomes)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": not self.failed,
            "summary": summary(self.outcomes),
            "seconds": round(self.seconds, 3),
            "parallel": self.workers,
            "problems": self.problems,
            "containers": [outcome.as_dict() for outcome in self.outcomes],
        }


def checkpoint_all(
    client: Containerd,
    config: HostConfig,
    workers: int,
    progress: Callable[[Outcome, int, int], None] | None = None,
) -> Report:
    """Checkpoint every running ARCH container of this containerd (unreachable: a problem)."""
    started = time.monotonic()
    try:
        targets, problems = plan_all(client, config)
    except ContainerdError as error:
        return Report([], [str(error)], time.monotonic() - started, workers)
    outcomes = CheckpointRun(client, config, workers, progress).run(targets)
    return Report(outcomes, problems, time.monotonic() - started, workers)


def summary(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts = {OK: 0, FAILED: 0, SKIPPED: 0}
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts
