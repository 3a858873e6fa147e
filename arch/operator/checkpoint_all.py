"""Checkpoint and stop ARCH containers through containerd, in parallel (archctl checkpoint).

Each container is checkpointed with `ctr task checkpoint --exit --image-path <scratch>`: containerd
pauses the task, the runtime (arch-runc) writes and publishes ARCH's image, and the task exits, so
containerd, Docker and ECS all see it stopped. The image path keeps containerd from building its
own checkpoint image in its content store (measured on 256 MiB resident + 256 MiB of filesystem
changes: 4.9 s with the content-store copy, 0.73 s without); arch-runc ignores the scratch
directory, which is removed afterwards.

A container that is not running, or not ARCH-enabled, is reported as skipped: only a container
that should have been checkpointed and was not counts as failed.

With a deadline (a Spot notice's time: the host is gone then) the run saves as many containers
as it can before it. The rule:
1. Smallest first. Every dump streams the container's memory (and its filesystem changes) to
   storage; with one deadline for all, running the shortest jobs first finishes the most of
   them (shortest processing time first). A container's size is its cgroup's memory use (else
   the size of its last image); one of unknown size goes after those of known size.
2. A dump starts only when its estimate fits in the time left before the deadline, less a
   margin (DEADLINE_MARGIN) for the stop and publication. The estimate is a fixed cost per
   checkpoint plus size / rate, the rate measured from this run's finished dumps (before the
   first, ASSUMED_BYTES_PER_SECOND, deliberately low). A container that does not fit is not
   attempted: it would not finish, and it would slow the dumps that can.
3. A failed checkpoint leaves the container running (ARCH's contract): it goes to the back of
   the queue and is tried again while its estimate still fits, at most MAX_ATTEMPTS times.
4. A deadline that has already passed when the run starts is no deadline: the host outlived
   the notice's time (clock skew, a delayed stop), so every container is tried.
Each container is reported: ok (saved), failed (why, after how many attempts), not attempted
(no time: what it needed and what was left), skipped (not running, not ARCH's).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections import deque
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

logger = logging.getLogger("arch")
OK, FAILED, SKIPPED, NOT_ATTEMPTED = "ok", "failed", "skipped", "not_attempted"
STATUSES = (OK, FAILED, SKIPPED, NOT_ATTEMPTED)
# The deadline rule (module docstring).
DEADLINE_MARGIN = 5.0
FIXED_SECONDS = 1.0  # ctr, pause, the state calls, the publication's renames and fsyncs
ASSUMED_BYTES_PER_SECOND = 50 * 1024 * 1024
MAX_ATTEMPTS = 3
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
    saved_reason: str | None = None  # saved before this run (held frozen on a Batch host)

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
    targets = [_target(container, config.state_dir) for container in inventory.containers]
    return targets, inventory.problems


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
        targets.append(_target(container, config.state_dir))
    return targets


def _target(container: ArchContainer, state_dir: str) -> Target:
    from arch.container.state import ContainerState, StateError
    from arch.spot.platform import HELD, NOTICE_FRESH

    target = Target(container.namespace, container.container_id, container)
    if container.status not in (RUNNING, PAUSED):
        return target._replace(skip_reason=f"not running ({container.status.lower()})")
    try:
        state = ContainerState(state_dir, container.namespace, container.container_id)
        held, fresh = state.has(HELD), state.has(NOTICE_FRESH)
    except StateError:
        held = fresh = False
    if held:
        return target._replace(saved_reason="checkpointed earlier and held frozen")
    if fresh:
        reason = "started fresh during this host's Spot notice: never replaces the job's image"
        return target._replace(skip_reason=reason)
    return target


class CheckpointRun:
    """Checkpoint targets with at most `workers` at once; `progress` hears of each as it ends.

    `deadline` (epoch seconds): the module's deadline rule applies. `hold`: checkpoint and keep
    each container frozen (a Batch host under a notice, arch.spot.platform) instead of ending it.
    """

    def __init__(
        self,
        client: Containerd,
        config: HostConfig,
        workers: int,
        progress: Callable[[Outcome, int, int], None] | None = None,
        started: Callable[[Target], None] | None = None,
        *,
        deadline: float | None = None,
        hold: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.config = config
        self.workers = max(1, workers)
        self.progress = progress
        self.started = started
        self.deadline = deadline
        self.hold = hold
        self.clock = clock
        self._lock = threading.Lock()
        self._done = 0
        self._rate = RateMeter()

    def run(self, targets: list[Target]) -> list[Outcome]:
        """Every target's outcome, in the targets' order."""
        self._done = 0
        left = self._time_left()
        if left is not None and left <= 0:
            logger.warning("the deadline passed %.0fs ago and this host is still here: "
                           "checkpointing without one", -left)  # fmt: skip
            self.deadline = None
        total = len(targets)
        outcomes: list[Outcome | None] = [None] * total
        sizes = target_sizes(self.client, targets)
        queue: deque[int] = deque()
        for index in smallest_first(targets, sizes):
            target = targets[index]
            if _runnable(target):
                queue.append(index)
            else:
                outcomes[index] = self._finish(_not_run(target), total)
        attempts = [0] * total
        workers = [
            threading.Thread(target=self._work, args=(queue, targets, sizes, attempts, outcomes))
            for _ in range(min(self.workers, len(queue)))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return [outcome for outcome in outcomes if outcome is not None]

    def _work(
        self,
        queue: deque[int],
        targets: list[Target],
        sizes: list[int | None],
        attempts: list[int],
        outcomes: list[Outcome | None],
    ) -> None:
        total = len(targets)
        while True:
            with self._lock:
                if not queue:
                    return
                index = queue.popleft()
                attempts[index] += 1
            target, attempt = targets[index], attempts[index]
            needed, left = self._rate.seconds_for(sizes[index]), self._time_left()
            if left is not None and needed > left:
                outcome = _no_time(target, needed, left, attempt)
            else:
                outcome = self._attempt(target, sizes[index])
                if outcome.status == FAILED and attempt < MAX_ATTEMPTS and self._retry_fits(
                    sizes[index]
                ):
                    with self._lock:
                        queue.append(index)
                    continue
                if outcome.status == FAILED and attempt > 1:
                    outcome = outcome._replace(reason=f"{outcome.reason} ({attempt} attempts)")
            outcomes[index] = self._finish(outcome, total)

    def _attempt(self, target: Target, size: int | None) -> Outcome:
        assert target.container is not None
        if self.started is not None:
            try:
                self.started(target)
            except Exception:  # reporting must never stop the checkpoints
                logger.exception("progress report of %s failed", target.name)
        began = self.clock()
        outcome = self._checkpoint(target, target.container, time.monotonic())
        if outcome.status == OK:
            self._rate.add(outcome.image_bytes or size, self.clock() - began)
        return outcome

    def _time_left(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - self.clock() - DEADLINE_MARGIN

    def _retry_fits(self, size: int | None) -> bool:
        left = self._time_left()
        return left is None or self._rate.seconds_for(size) <= left

    def _finish(self, outcome: Outcome, total: int) -> Outcome:
        with self._lock:
            self._done += 1
            done = self._done
        if self.progress is not None:
            try:
                self.progress(outcome, done, total)
            except Exception:  # reporting must never stop the checkpoints (e.g. a full disk)
                logger.exception("progress report of %s failed", outcome.name)
        return outcome

    def _checkpoint(self, target: Target, container: ArchContainer, started: float) -> Outcome:
        location = container.location
        assert location is not None  # a FROM_STATE container always has one
        wall_start = time.time()
        scratch_parent = os.path.join(self.config.state_dir, SCRATCH_DIR)
        status = OK
        reason = "checkpointed and held frozen" if self.hold else "checkpointed and stopped"
        try:
            os.makedirs(scratch_parent, mode=0o700, exist_ok=True)
            scratch = tempfile.mkdtemp(prefix="ctr-checkpoint-", dir=scratch_parent)
        except OSError as error:
            return self._outcome(target, FAILED, f"no scratch directory: {error}", started, None)
        try:
            self.client.checkpoint(
                target.namespace, target.container_id, scratch, leave_running=self.hold
            )
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


def _runnable(target: Target) -> bool:
    return target.container is not None and not (
        target.fail_reason or target.skip_reason or target.saved_reason
    )


def _not_run(target: Target) -> Outcome:
    status = FAILED if target.fail_reason else OK if target.saved_reason else SKIPPED
    reason = target.fail_reason or target.saved_reason or target.skip_reason or ""
    return Outcome(target.namespace, target.container_id, status, reason, 0.0, None, None)


def _no_time(target: Target, needed: float, left: float, attempt: int) -> Outcome:
    status = NOT_ATTEMPTED if attempt == 1 else FAILED
    what = "no time" if attempt == 1 else f"failed {attempt - 1} times, no time to try again"
    reason = f"{what}: needs ~{needed:.0f}s, {max(left, 0.0):.0f}s left before the deadline"
    return Outcome(target.namespace, target.container_id, status, reason, 0.0, None, None)


class RateMeter:
    """How fast this run's dumps go: the estimate of a checkpoint's seconds (deadline rule)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = 0
        self._seconds = 0.0

    def add(self, size: int | None, seconds: float) -> None:
        if size:
            with self._lock:
                self._bytes += size
                self._seconds += max(seconds - FIXED_SECONDS, 0.05)

    def seconds_for(self, size: int | None) -> float:
        with self._lock:
            measured = self._bytes / self._seconds if self._bytes else 0.0
        rate = max(measured, ASSUMED_BYTES_PER_SECOND) if measured else ASSUMED_BYTES_PER_SECOND
        return FIXED_SECONDS + (size or 0) / rate


def smallest_first(targets: list[Target], sizes: list[int | None]) -> list[int]:
    """Target indexes in the order the deadline rule takes them: known sizes, smallest first,
    then the unknown ones in their given order."""
    return sorted(range(len(targets)), key=lambda i: (sizes[i] is None, sizes[i] or 0, i))


def target_sizes(client: Containerd, targets: list[Target]) -> list[int | None]:
    """Each target's memory in use (its cgroup's), else its last image's size; None: unknown."""
    pids: dict[str, dict[str, int]] = {}
    sizes: list[int | None] = []
    for target in targets:
        if not _runnable(target) or target.container is None:
            sizes.append(None)
            continue
        if target.namespace not in pids:
            try:
                tasks = client.tasks(target.namespace)
            except ContainerdError:
                tasks = {}
            pids[target.namespace] = {key: task.pid for key, task in tasks.items()}
        size = cgroup_memory_bytes(pids[target.namespace].get(target.container_id, 0))
        location = target.container.location
        if size is None and location is not None and image_published(location):
            size = directory_bytes(location) or None
        sizes.append(size)
    return sizes


def cgroup_memory_bytes(pid: int) -> int | None:
    """The memory charged to the cgroup of `pid` (cgroup v1 or v2); None when unknown."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            candidates = [f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes"]
        elif controllers == "":
            candidates = [f"/sys/fs/cgroup{path}/memory.current",
                          f"/sys/fs/cgroup/unified{path}/memory.current"]  # fmt: skip
        else:
            continue
        for candidate in candidates:
            try:
                with open(candidate, encoding="ascii") as handle:
                    return int(handle.read().strip())
            except (OSError, ValueError):
                continue
    return None


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
    *,
    deadline: float | None = None,
    hold: bool = False,
    planned: Callable[[list[Target]], None] | None = None,
) -> Report:
    """Checkpoint every running ARCH container of this containerd (unreachable: a problem).
    `planned` hears of the targets before any checkpoint starts."""
    started = time.monotonic()
    try:
        targets, problems = plan_all(client, config)
    except ContainerdError as error:
        return Report([], [str(error)], time.monotonic() - started, workers)
    if planned is not None:
        planned(targets)
    run = CheckpointRun(client, config, workers, progress, deadline=deadline, hold=hold)
    outcomes = run.run(targets)
    return Report(outcomes, problems, time.monotonic() - started, workers)


def summary(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts
