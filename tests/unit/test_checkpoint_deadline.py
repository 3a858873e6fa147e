"""The deadline rule of checkpoint --all (arch.operator.checkpoint_all), with containerd stood in
for by a recorder: smallest first, not attempted when it cannot finish, retries while time is
left, a per-container report. (The real run on real containers: tests/integration/
test_spot_drill.py, 20 containers on host A.)"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from arch.config import HostConfig
from arch.container.identity import ImageLocation
from arch.operator.checkpoint_all import (
    ASSUMED_BYTES_PER_SECOND,
    DEADLINE_MARGIN,
    FAILED,
    FIXED_SECONDS,
    NOT_ATTEMPTED,
    OK,
    CheckpointRun,
    Target,
    summary,
)
from arch.operator.containerd import ContainerdError, Task
from arch.operator.inventory import FROM_STATE, ArchContainer

MIB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


class Containerd:
    """Records checkpoint calls; each one 'takes' size / rate seconds of the fake clock."""

    def __init__(self, clock: Clock, images: Path, fail_first: set[str] | None = None) -> None:
        self.clock = clock
        self.images = images
        self.calls: list[str] = []
        self.fail_first = set(fail_first or ())
        self.sizes: dict[str, int] = {}

    def tasks(self, namespace: str) -> dict[str, Task]:
        return {}  # no pid: sizes come from the containers' last images

    def checkpoint(self, namespace: str, container_id: str, image_path: str,
                   timeout: float = 0.0, *, leave_running: bool = False) -> None:  # fmt: skip
        self.calls.append(container_id)
        self.clock.advance(FIXED_SECONDS + self.sizes[container_id] / ASSUMED_BYTES_PER_SECOND)
        if container_id in self.fail_first:
            self.fail_first.discard(container_id)
            raise ContainerdError("CRIU: dump failed (injected)")
        (self.images / container_id / "metadata.json").write_text(json.dumps({}))


def target(tmp_path: Path, client: Containerd, name: str, size: int) -> Target:
    image_dir = tmp_path / name
    image_dir.mkdir()
    (image_dir / "metadata.json").write_text("{}")
    with (image_dir / "pages-1.img").open("wb") as pages:
        pages.truncate(size)  # sparse: the size is what counts
    client.sizes[name] = size
    location = ImageLocation(str(image_dir), "default", name)
    container = ArchContainer("default", name, "RUNNING", location, FROM_STATE)
    return Target("default", name, container)


def run(tmp_path: Path, client: Containerd, targets: list[Target], deadline: float | None,
        clock: Clock) -> list[str]:  # fmt: skip
    config = HostConfig(str(tmp_path / "arch.toml"), state_dir=str(tmp_path / "state"))
    outcomes = CheckpointRun(client, config, 1, deadline=deadline, clock=clock).run(targets)  # type: ignore[arg-type]
    return [f"{o.container_id}:{o.status}:{o.reason}" for o in outcomes]


def test_smallest_first_and_what_cannot_finish_is_not_attempted(tmp_path: Path) -> None:
    clock = Clock()
    client = Containerd(clock, tmp_path)
    sizes = {"big": 400 * MIB, "small": 10 * MIB, "medium": 100 * MIB, "tiny": 1 * MIB}
    targets = [target(tmp_path, client, name, size) for name, size in sizes.items()]
    # time for tiny (~1s), small (~1.2s) and medium (~3s) but not for big (~9s) as well
    deadline = clock.now + DEADLINE_MARGIN + 8.0
    report = run(tmp_path, client, targets, deadline, clock)
    print("evidence:", client.calls, report)
    assert client.calls == ["tiny", "small", "medium"]
    assert report[0].startswith("big:not_attempted:no time: needs ~")
    assert [line.split(":")[1] for line in report[1:]] == [OK, OK, OK]


def test_without_a_deadline_everything_is_attempted_smallest_first(tmp_path: Path) -> None:
    clock = Clock()
    client = Containerd(clock, tmp_path)
    targets = [target(tmp_path, client, name, size * MIB) for name, size in
               [("c", 300), ("a", 1), ("b", 20)]]  # fmt: skip
    assert all(":ok:" in line for line in run(tmp_path, client, targets, None, clock))
    assert client.calls == ["a", "b", "c"]


def test_a_failure_is_retried_while_time_is_left(tmp_path: Path) -> None:
    clock = Clock()
    client = Containerd(clock, tmp_path, fail_first={"a"})
    targets = [target(tmp_path, client, name, 5 * MIB) for name in ("a", "b")]
    report = run(tmp_path, client, targets, clock.now + 60.0, clock)
    assert client.calls == ["a", "b", "a"]  # a again, after the others
    assert report == ["a:ok:checkpointed and stopped", "b:ok:checkpointed and stopped"]


def test_a_failure_without_time_to_retry_says_so(tmp_path: Path) -> None:
    clock = Clock()
    client = Containerd(clock, tmp_path, fail_first={"a"})
    targets = [target(tmp_path, client, "a", 100 * MIB)]
    # time for one ~3s attempt, not for a second
    report = run(tmp_path, client, targets, clock.now + DEADLINE_MARGIN + 4.0, clock)
    assert client.calls == ["a"]
    assert report[0].startswith(f"a:{FAILED}:CRIU: dump failed (injected)")


def test_summary_counts_not_attempted() -> None:
    assert summary([]) == {OK: 0, FAILED: 0, "skipped": 0, NOT_ATTEMPTED: 0}


def test_a_deadline_already_past_is_no_deadline(tmp_path: Path) -> None:
    clock = Clock()
    client = Containerd(clock, tmp_path)
    targets = [target(tmp_path, client, "late", 100 * MIB)]
    assert run(tmp_path, client, targets, clock.now - 30.0, clock) == [
        "late:ok:checkpointed and stopped"]  # fmt: skip
