"""A small local model of the AWS parts of the Spot loop that cannot run here.

Each rule is written next to the AWS documentation it follows. Nothing here touches ARCH: the
model acts on the drill's hosts only the way the platform would (HTTP to the host's metadata
service, `docker run`, `docker stop`, the host's end).

- The metadata service's notice: tests/imds_server.py (IMDSv2, token flow as EC2's).
- EcsAgent: the ECS container agent's Spot draining and its stop of a task.
- ServiceScheduler: the service scheduler's replacement order while an instance drains.
- batch_decision: AWS Batch's decision for an attempt (status reason, exit code,
  evaluateOnExit rules in order, glob patterns, attempts).
- The host's end at the notice's time: DrillHost.end (tests/integration/harness/drill.py).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from arch.spot.imds import ImdsClient, ImdsError

# "Configuring Amazon ECS Linux container instances to receive Spot Instance notices"
# (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/spot-instance-draining-linux-
# container.html): with ECS_ENABLE_SPOT_INSTANCE_DRAINING=true the agent receives the Spot
# interruption notice from instance metadata and places the instance in DRAINING status. The
# agent reads the notice as spot-watch does; it is modelled polling every second (the issue's
# field observation; AWS: "we recommend that you check for these interruption notices every 5
# seconds", "Spot Instance interruption notices", EC2 User Guide).
AGENT_POLL_SECONDS = 1.0
# "Amazon ECS container agent configuration" (https://docs.aws.amazon.com/AmazonECS/latest/
# developerguide/ecs-agent-config.html), ECS_CONTAINER_STOP_TIMEOUT: "Time to wait from when a
# task is stopped before its containers are forcefully stopped if they do not exit normally on
# their own"; default 30s on Linux. The agent stops a container as `docker stop` does: the
# stop signal, then SIGKILL after the timeout.
DEFAULT_STOP_TIMEOUT = 30
# Same page, ECS_CONTAINER_START_TIMEOUT: "Time to wait for a container to start before the
# agent gives up"; default 3m on Linux. arch.toml's restore_wait stays below it.
CONTAINER_START_TIMEOUT = 180
# The control plane's path from DRAINING to a replacement task on another instance
# (UpdateContainerInstancesState -> service scheduler -> placement -> that instance's agent)
# takes seconds in the field; AWS documents no figure. The model lets the scheduler act this
# long after the agent reported DRAINING (an assumption, named in the drill's note).
SCHEDULER_REACTION_SECONDS = 2.0


class EcsAgent:
    """The ECS agent on one host: Spot draining (when enabled) and task stops.

    On Batch compute environments the drill runs the agent with Spot draining off (ARCH's role
    leaves it off there: arch.spot.platform), so the agent never stops a job for a notice.
    """

    def __init__(
        self,
        imds_endpoint: str,
        stop_container: Callable[[str, int], None],
        *,
        spot_draining: bool,
        stop_timeout: int = DEFAULT_STOP_TIMEOUT,
        on_draining: Callable[[], None] | None = None,
        record: Callable[[str], None] | None = None,
        sees_notice_after: Callable[[], bool] | None = None,
    ) -> None:
        self.imds = ImdsClient(imds_endpoint, timeout=1.0)
        self.stop_container = stop_container
        self.spot_draining = spot_draining
        self.stop_timeout = stop_timeout
        self.on_draining = on_draining
        self.record = record or (lambda what: None)
        self.draining = threading.Event()
        # Which of the two pollers sees a notice first is chance (both poll every second); a
        # drill case fixes the order by letting the agent see it only after this is true.
        self.sees_notice_after = sees_notice_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.spot_draining:
            return
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _poll(self) -> None:
        while not self._stop.wait(AGENT_POLL_SECONDS):
            try:
                notice = self.imds.instance_action()
            except ImdsError:
                continue
            if notice is not None and (self.sees_notice_after is None
                                       or self.sees_notice_after()):  # fmt: skip
                self.record(f"ECS agent: Spot notice seen, instance DRAINING ({notice.action} "
                            f"at {notice.time})")  # fmt: skip
                self.draining.set()
                if self.on_draining is not None:
                    self.on_draining()
                return

    def stop_task(self, container: str) -> None:
        """Stop a task's container as the agent does: docker stop with the stop timeout."""
        self.record(f"ECS agent: docker stop --time {self.stop_timeout} {container}")
        self.stop_container(container, self.stop_timeout)


@dataclass
class Deployment:
    """A service's deploymentConfiguration and desired count."""

    desired: int
    minimum_healthy_percent: int
    maximum_percent: int

    @property
    def min_running(self) -> int:
        # "Amazon ECS service definition parameters", deploymentConfiguration: the lower limit
        # is minimumHealthyPercent of desiredCount, rounded up to the nearest integer.
        return math.ceil(self.desired * self.minimum_healthy_percent / 100)

    @property
    def max_running(self) -> int:
        # Same page: the upper limit is maximumPercent of desiredCount, rounded down.
        return math.floor(self.desired * self.maximum_percent / 100)


@dataclass
class ServiceScheduler:
    """Replaces a draining instance's service tasks per the deployment configuration.

    "Draining Amazon ECS container instances" (https://docs.aws.amazon.com/AmazonECS/latest/
    developerguide/container-instance-draining.html): RUNNING service tasks on the draining
    instance are stopped and "the service scheduler attempts to replace the tasks according to
    the service's deployment type and deployment configuration parameters,
    minimumHealthyPercent and maximumPercent":
    - minimumHealthyPercent below 100% lets the scheduler stop tasks before their replacements
      start ("desiredCount is four tasks, a minimum of 50% allows the scheduler to stop two
      existing tasks before starting two new tasks"); at 100% "the service scheduler can't
      remove existing tasks until the replacement tasks are considered healthy" (without a load
      balancer: RUNNING).
    - maximumPercent bounds the running tasks during replacement ("a maximum of 200% starts
      four new tasks before stopping the four tasks to be drained"; at 100% "replacement tasks
      can't start until the draining tasks have stopped").
    Each round starts as many replacements as the maximum allows (waiting until they run), then
    stops as many draining tasks as the minimum allows (waiting until they stopped).
    """

    deployment: Deployment
    start_replacement: Callable[[int], str]  # index -> the new task's container, RUNNING
    stop_task: Callable[[str], None]  # the agent's stop, returns once the container exited
    record: Callable[[str], None] = field(default=lambda what: None)

    def drain(self, draining: Sequence[str]) -> list[str]:
        """Replace the `draining` tasks; the replacements' containers."""
        old, new = list(draining), []
        while old or len(new) < len(draining):
            running = len(old) + len(new)
            starts = min(self.deployment.max_running - running, len(draining) - len(new))
            self._start(starts, new)
            stops = min(len(old), len(old) + len(new) - self.deployment.min_running)
            for task in old[: max(stops, 0)]:
                self.record(f"service scheduler: stop draining task {task}")
                self.stop_task(task)
            old = old[max(stops, 0) :]
            if starts <= 0 and stops <= 0:
                raise AssertionError(f"deployment {self.deployment} cannot replace {old}")
        return new

    def _start(self, count: int, new: list[str]) -> None:
        threads, started = [], []
        base = len(new)
        for index in range(base, base + max(count, 0)):
            self.record(f"service scheduler: start replacement task {index + 1}")
            thread = threading.Thread(target=lambda i=index: started.append(
                (i, self.start_replacement(i))))  # fmt: skip
            threads.append(thread)
            thread.start()
        for thread in threads:
            thread.join()
        new.extend(container for _, container in sorted(started))


# AWS Batch -------------------------------------------------------------------------------------
# What the attempt's task reports. "Automated job retries" (https://docs.aws.amazon.com/batch/
# latest/userguide/job_retries.html) lists "Amazon EC2 instance failure or termination" among
# the failures a retry strategy handles; the attempt then has no exit code and its status reason
# names the host, e.g. "Host EC2 (instance i-0123456789abcdef0) terminated." (the pattern
# "Host EC2*" is AWS's own example for retrying Spot reclaims: "Introducing retry strategies for
# AWS Batch", AWS Compute Blog). A container that exited while its host stayed reads "Essential
# container in task exited" with its exit code.
HOST_TERMINATED = "Host EC2 (instance {instance}) terminated."
CONTAINER_EXITED = "Essential container in task exited"
RETRY, EXIT, SUCCEEDED = "RETRY", "EXIT", "SUCCEEDED"


@dataclass(frozen=True)
class Attempt:
    """How one attempt ended, as Batch records it."""

    status_reason: str
    exit_code: int | None
    reason: str = ""


def batch_glob(pattern: str, value: str | None) -> bool:
    """EvaluateOnExit's glob (https://docs.aws.amazon.com/batch/latest/APIReference/
    API_EvaluateOnExit.html): an exact match, or, when the pattern ends with an asterisk, "only
    the start of the string needs to be an exact match". A missing value matches nothing."""
    if value is None:
        return False
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def rule_matches(rule: dict[str, Any], attempt: Attempt) -> bool:
    """A rule applies "if all of the specified conditions (onStatusReason, onReason, and
    onExitCode) are met" (API_EvaluateOnExit); onExitCode matches the decimal exit code."""
    exit_code = None if attempt.exit_code is None else str(attempt.exit_code)
    checks = (("onStatusReason", attempt.status_reason), ("onReason", attempt.reason),
              ("onExitCode", exit_code))  # fmt: skip
    return all(batch_glob(rule[key], value) for key, value in checks if key in rule)


def batch_decision(retry_strategy: dict[str, Any], attempt: Attempt, number: int) -> str:
    """What Batch does after attempt `number` (1-based): SUCCEEDED, RETRY or EXIT (FAILED).

    job_retries.html: exit code 0 succeeds; a failed attempt is retried while attempts remain
    ("a retry strategy with between 1 and 10 attempts"); "If evaluateOnExit is specified, but
    none of the retry strategies match, then the job is retried"; the first matching entry
    decides (entries are evaluated in order; the documented pattern ends with a catch-all EXIT).
    """
    if attempt.exit_code == 0 and attempt.status_reason == CONTAINER_EXITED:
        return SUCCEEDED
    if number >= int(retry_strategy.get("attempts", 1)):
        return EXIT
    for rule in retry_strategy.get("evaluateOnExit", []):
        if rule_matches(rule, attempt):
            return RETRY if str(rule["action"]).upper() == RETRY else EXIT
    return RETRY


class Clock:
    """Monotonic seconds since the drill began, for timelines."""

    def __init__(self) -> None:
        self.zero = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.zero
