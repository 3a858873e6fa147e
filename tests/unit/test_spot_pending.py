"""Pool images on the way (arch.spot.pending) and the stop-during-a-notice rule
(arch.spot.platform), on real files; the clock is stood in for where time matters."""

from __future__ import annotations

import calendar
import os
import time
from pathlib import Path

from arch.checkpoint.storage.pool import new_entry_name
from arch.container.state import ContainerState
from arch.spot import pending
from arch.spot.notice import notice_seen_at, write_marker
from arch.spot.platform import NOTICE_RACE_SECONDS, STOP_SIGNALLED, stopped_for_a_notice


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_announced_images_are_awaited_until_their_deadline(tmp_path: Path) -> None:
    pool = tmp_path / "ns" / "svc"
    announcements = pending.Announcements("host-a")
    announcements.announce("moby/web-1", str(tmp_path), str(pool), deadline=time.time() + 60)
    fd = os.open(pool, os.O_RDONLY | os.O_DIRECTORY)
    try:
        [record] = pending.awaited(fd)
        assert record.host == "host-a" and record.container == "moby/web-1"
        assert pending.awaited(fd, now=time.time() + 60 + pending.DEADLINE_GRACE + 1) == []
        announcements.settle("moby/web-1")
        assert pending.read_all(fd) == []
    finally:
        os.close(fd)


def test_malformed_or_oversized_records_are_ignored(tmp_path: Path) -> None:
    pool = tmp_path / "svc"
    pool.mkdir()
    (pool / ".pending~x~1").write_text("not json")
    (pool / ".pending~x~2").write_text('{"deadline": true}')
    (pool / ".pending~x~3").write_text('{"deadline": 1e12, "pad": "' + "x" * 5000 + '"}')
    os.symlink("/etc/passwd", pool / ".pending~x~4")
    (pool / ".pending~x~5").write_text("[" * 4000)  # json.loads alone: RecursionError
    os.mkfifo(pool / ".pending~x~6")  # an open without O_NONBLOCK would wait for a writer
    fd = os.open(pool, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert pending.read_all(fd) == []
    finally:
        os.close(fd)


def test_a_new_member_waits_while_an_image_is_on_the_way(tmp_path: Path) -> None:
    pool = tmp_path / "svc"
    pending.Announcements("host-a").announce("moby/web-1", str(tmp_path), str(pool),
                                             deadline=time.time() + 60)  # fmt: skip
    clock = Clock()
    told: list[int] = []

    def publish_on_third_look(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:
            (pool / new_entry_name()).mkdir()

    arrived = pending.wait_for_arrival(str(tmp_path), str(pool), 30.0, clock=clock,
                                       sleep=publish_on_third_look,
                                       on_wait=told.append)  # fmt: skip
    assert arrived and len(clock.sleeps) == 3 and told == [1]

    # the wait is bounded
    [entry] = [name for name in os.listdir(pool) if name.startswith("image-")]
    (pool / entry).rename(pool / "claimed-by-someone")
    clock = Clock()
    assert not pending.wait_for_arrival(str(tmp_path), str(pool), 5.0, clock=clock,
                                        sleep=clock.sleep)  # fmt: skip
    assert sum(clock.sleeps) >= 5.0


def test_nothing_on_the_way_means_no_wait(tmp_path: Path) -> None:
    pool = tmp_path / "svc"
    pool.mkdir()
    clock = Clock()
    assert not pending.wait_for_arrival(str(tmp_path), str(pool), 30.0, clock=clock,
                                        sleep=clock.sleep)  # fmt: skip
    assert clock.sleeps == []
    assert not pending.wait_for_arrival(str(tmp_path), str(tmp_path / "absent"), 30.0)


def signalled(tmp_path: Path, at: float) -> ContainerState:
    state = ContainerState(str(tmp_path / "state"), "moby", "job")
    state.set(STOP_SIGNALLED)
    os.utime(os.path.join(state.path, STOP_SIGNALLED), (at, at))
    return state


def test_an_exit_after_a_stop_during_the_notice_is_not_a_finish(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    unsignalled = ContainerState(str(state_dir), "moby", "other")
    unsignalled.set("checkpointed")
    write_marker(str(state_dir), {"notice": {}, "seen_at": "2026-12-05T10:00:00Z"})
    seen_at = notice_seen_at(str(state_dir))
    assert seen_at == calendar.timegm((2026, 12, 5, 10, 0, 0, 0, 0, 0))
    assert not stopped_for_a_notice(unsignalled, lambda: seen_at)  # a natural exit: a finish
    state = signalled(tmp_path, seen_at + 30)
    assert stopped_for_a_notice(state, lambda: seen_at)


def test_a_stop_the_job_outlived_before_the_notice_is_no_part_of_it(tmp_path: Path) -> None:
    """A SIGTERM an hour before the notice that the job ignored, then an exit 0 during the
    notice: the job finished; its image goes as for any finish."""
    seen_at = 100_000.0
    state = signalled(tmp_path, seen_at - 3600)
    assert not stopped_for_a_notice(state, lambda: seen_at)
    assert stopped_for_a_notice(signalled(tmp_path, seen_at - NOTICE_RACE_SECONDS), lambda: seen_at)


def test_a_marker_without_a_readable_time_counts_every_stop(tmp_path: Path) -> None:
    write_marker(str(tmp_path), {"notice": {}})
    assert notice_seen_at(str(tmp_path)) == 0.0
    assert notice_seen_at(str(tmp_path / "no-marker")) is None


def test_a_stop_seconds_before_the_marker_counts(tmp_path: Path) -> None:
    clock = Clock()
    state = signalled(tmp_path, clock.now)
    marker: dict[str, float | None] = {"seen_at": None}

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= 1001.0:  # spot-watch sees the notice a second after the stop
            marker["seen_at"] = 1001.0

    assert stopped_for_a_notice(state, lambda: marker["seen_at"], NOTICE_RACE_SECONDS, clock,
                                sleep)  # fmt: skip
    assert sum(clock.sleeps) < NOTICE_RACE_SECONDS

    clock = Clock()
    state = signalled(tmp_path, clock.now)
    assert not stopped_for_a_notice(state, lambda: None, NOTICE_RACE_SECONDS, clock,
                                    clock.sleep)  # a user's stop  # fmt: skip
    assert NOTICE_RACE_SECONDS - 0.01 <= sum(clock.sleeps) < NOTICE_RACE_SECONDS + 0.3


def test_without_a_draining_agent_an_ordinary_stop_is_not_held_up(tmp_path: Path) -> None:
    """race_seconds 0 (platform none or batch: no ECS agent stops tasks on a notice): a stop
    with no notice is decided at once, without waiting for a marker."""
    clock = Clock()
    state = signalled(tmp_path, clock.now)
    assert not stopped_for_a_notice(state, lambda: None, 0.0, clock, clock.sleep)
    assert clock.sleeps == []
