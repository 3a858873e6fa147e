"""The drill's model of AWS (harness/platform_model.py) against the documented examples it cites:
Batch's decision for an attempt and the service scheduler's replacement order."""

from __future__ import annotations

from harness.platform_model import (
    CONTAINER_EXITED,
    EXIT,
    HOST_TERMINATED,
    RETRY,
    SUCCEEDED,
    Attempt,
    Deployment,
    ServiceScheduler,
    batch_decision,
    batch_glob,
)

from arch.delivery.definitions import render_definition

HOST_GONE = Attempt(HOST_TERMINATED.format(instance="i-0123456789abcdef0"), None)
EXITED_137 = Attempt(CONTAINER_EXITED, 137)
# job_retries.html's example: two RETRY entries, then EXIT for any reason.
DOCUMENTED = {"attempts": 3, "evaluateOnExit": [
    {"action": "RETRY", "onReason": "AGENT"},
    {"action": "RETRY", "onStatusReason": "Task failed to start"},
    {"action": "EXIT", "onReason": "*"}]}  # fmt: skip


def test_batch_glob_is_exact_or_a_prefix_with_a_trailing_star() -> None:
    assert batch_glob("Host EC2*", HOST_GONE.status_reason)
    assert not batch_glob("Host EC2", HOST_GONE.status_reason)
    assert batch_glob("13*", "137") and not batch_glob("13", "137")
    assert batch_glob("*", "") and not batch_glob("*", None)


def test_the_documented_example() -> None:
    assert batch_decision(DOCUMENTED, Attempt("Task failed to start", None, ""), 1) == RETRY
    assert batch_decision(DOCUMENTED, EXITED_137, 1) == EXIT  # "*" on the (empty) reason
    assert batch_decision(DOCUMENTED, Attempt("Task failed to start", None), 3) == EXIT  # no more
    assert batch_decision({"attempts": 2}, EXITED_137, 1) == RETRY  # no rule matches: retried
    assert batch_decision(DOCUMENTED, Attempt(CONTAINER_EXITED, 0), 1) == SUCCEEDED


def test_archs_batch_template_retries_a_reclaimed_host_and_nothing_else() -> None:
    strategy = render_definition("batch-job", {"name": "j", "image": "busybox"})["retryStrategy"]
    assert batch_decision(strategy, HOST_GONE, 1) == RETRY
    assert batch_decision(strategy, EXITED_137, 1) == EXIT
    assert batch_decision(strategy, Attempt(CONTAINER_EXITED, 1), 1) == EXIT


def order(deployment: Deployment, tasks: int) -> list[str]:
    events: list[str] = []

    def start(index: int) -> str:
        events.append(f"start {index + 1}")
        return f"new-{index + 1}"

    def stop(task: str) -> None:
        events.append(f"stop {task}")

    ServiceScheduler(deployment, start, stop).drain([f"old-{i + 1}" for i in range(tasks)])
    return events


def test_scheduler_order_follows_the_draining_examples() -> None:
    # "a maximum of 200% starts four new tasks before stopping the four tasks to be drained"
    assert order(Deployment(4, 100, 200), 4) == [
        "start 1", "start 2", "start 3", "start 4",
        "stop old-1", "stop old-2", "stop old-3", "stop old-4"]  # fmt: skip
    # "a minimum of 50% allows the scheduler to stop two existing tasks before starting two new"
    assert order(Deployment(4, 50, 100), 4) == [
        "stop old-1", "stop old-2", "start 1", "start 2",
        "stop old-3", "stop old-4", "start 3", "start 4"]  # fmt: skip
    assert order(Deployment(1, 100, 200), 1) == ["start 1", "stop old-1"]
    assert order(Deployment(2, 50, 100), 2) == ["stop old-1", "start 1", "stop old-2", "start 2"]
