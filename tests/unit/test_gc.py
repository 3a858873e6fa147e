"""archctl gc's planning rules (arch.operator.gc) on directories laid out like image roots, and
the inspect/gc command lines (usage errors exit 2, --help)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import pytest

from arch.checkpoint.storage import pool
from arch.cli.main import main
from arch.config import HostConfig
from arch.container.identity import ImageLocation
from arch.container.state import EXIT_STATUS, ContainerState
from arch.operator import gc

if TYPE_CHECKING:
    from pathlib import Path

NOW = 1_900_000_000.0


@pytest.fixture
def config(tmp_path: Path) -> HostConfig:
    return HostConfig("/nonexistent/arch.toml", checkpoint_root=str(tmp_path / "root"),
                      state_dir=str(tmp_path / "state"), metrics_file="")  # fmt: skip


def aged(path: Path, seconds_ago: float) -> Path:
    os.utime(path, (NOW - seconds_ago, NOW - seconds_ago))
    return path


def record(config: HostConfig, container_id: str, image_dir: str, exit_status: str | None) -> None:
    state = ContainerState(config.state_dir, "default", container_id)
    location = ImageLocation(image_dir, "default", "x")
    state.write_record({"version": 1, "location": location.as_dict()})
    if exit_status is not None:
        state.set(EXIT_STATUS, exit_status)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800),
                          ("2w", 1209600), ("45", 45), ("1.5h", 5400)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert gc.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5m", "0", "soon", "inf", "nan"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        gc.parse_duration(text)


def test_unreadable_images_go_by_age_and_use(config: HostConfig, tmp_path: Path) -> None:
    namespace = tmp_path / "root" / "default"
    for name in ("young", "old", "used-old", "exited-old"):
        (namespace / name).mkdir(parents=True)
    aged(namespace / "young", 60)
    for name in ("old", "used-old", "exited-old"):
        aged(namespace / name, 86400 * 10)
    record(config, "runner", str(namespace / "used-old"), None)
    record(config, "failed", str(namespace / "exited-old"), "3")
    plan = gc.plan([config.checkpoint_root], config, older_than=86400 * 7, now=NOW)
    assert [(os.path.basename(a.path), a.rule) for a in plan.actions] == [
        ("exited-old", "older-than"), ("old", "older-than"),
    ]  # fmt: skip
    assert all("invalid image" in a.detail for a in plan.actions)
    kept = {os.path.basename(k.path): k.reason for k in plan.kept}
    assert kept["used-old"] == "in use by default/runner"
    assert kept["young"].startswith("invalid: metadata.json is missing")
    assert plan.sweep_dirs == [str(namespace)]
    # Without --older-than nothing is removed.
    assert gc.plan([config.checkpoint_root], config, now=NOW).actions == []


def test_exit_0_recorded_here_means_finished(config: HostConfig, tmp_path: Path) -> None:
    image = tmp_path / "root" / "default" / "job"
    image.mkdir(parents=True)
    record(config, "c1", str(image), "0")
    plan = gc.plan([config.checkpoint_root], config, now=time.time())
    assert [(a.rule, a.detail) for a in plan.actions] == [("finished", "default/c1 exited 0")]
    ContainerState(config.state_dir, "default", "c1").set("checkpointed")
    assert gc.plan([config.checkpoint_root], config).actions == []


def test_pool_rules(config: HostConfig, tmp_path: Path) -> None:
    pool_dir = tmp_path / "root" / "default" / "web"
    pool_dir.mkdir(parents=True)
    old_entry = pool_dir / pool.new_entry_name(NOW - 86400 * 30)
    old_entry.mkdir()
    aged(old_entry, 86400 * 30)
    new_entry = pool_dir / pool.new_entry_name(NOW)
    new_entry.mkdir()
    aged(new_entry, 60)
    orphan = pool_dir / pool.claimed_name(pool.new_entry_name(NOW))
    orphan.mkdir()
    aged(orphan, 7200)
    elsewhere = pool_dir / pool.claimed_name(pool.new_entry_name(NOW), host="other-host")
    elsewhere.mkdir()
    aged(elsewhere, 86400 * 30)
    used = pool_dir / pool.claimed_name(pool.new_entry_name(NOW))
    used.mkdir()
    aged(used, 86400 * 30)
    record(config, "replica", str(used), None)
    invalid = pool_dir / ".invalid~0123456789ab~image-20200101T000000Z-0123456789ab"
    invalid.mkdir()
    aged(invalid, 7200)
    plan = gc.plan([config.checkpoint_root], config, older_than=86400 * 7, now=NOW)
    actions = {os.path.basename(a.path): (a.rule, a.action) for a in plan.actions}
    assert actions == {
        old_entry.name: ("older-than", "remove"),
        orphan.name: ("orphaned-claim", "release"),
        invalid.name: ("invalid", "remove"),
    }
    kept = {os.path.basename(k.path): k.reason for k in plan.kept}
    assert kept == {
        new_entry.name: "unclaimed, not expired",
        elsewhere.name: "claimed by other-host",
        used.name: f"claimed by {pool.host_label()}",
    }
    assert str(pool_dir) in plan.sweep_dirs
    outcomes = gc.execute(plan.actions)
    assert all(outcome.done for outcome in outcomes), outcomes
    names = sorted(p.name for p in pool_dir.iterdir())
    released = pool.parse_claimed(orphan.name)
    assert released is not None
    assert names == sorted([new_entry.name, elsewhere.name, used.name, released.entry])


def test_dry_run_lists_leftovers_and_touches_nothing(config: HostConfig, tmp_path: Path) -> None:
    namespace = tmp_path / "root" / "default"
    leftover = namespace / ".staging-job-0123456789ab"
    leftover.mkdir(parents=True)
    listed = gc.sweep_leftovers([str(namespace)], dry_run=True, now=NOW)
    assert [(o.action.rule, o.done) for o in listed] == [("leftover", False)]
    assert leftover.exists()


@pytest.mark.parametrize(
    "argv",
    [["inspect"], ["inspect", "a/b/c"], ["inspect", "x", "y"], ["inspect", "ns/.."],
     ["inspect", "no-slash"], ["gc", "--older-than", "x"], ["gc", "extra"], ["gc", "--bogus"]],
)  # fmt: skip
def test_bad_usage_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCH_CONFIG", "/nonexistent/arch.toml")
    try:
        status = main(["--address", "/nonexistent.sock", *argv])
    except SystemExit as stop:
        status = int(stop.code or 0)
    assert status == 2
    assert "archctl" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["inspect", "gc", "verify"])
def test_help_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert "--json" in capsys.readouterr().out


def test_inspect_resolves_targets_and_lists_pools(config: HostConfig, tmp_path: Path) -> None:
    from arch.operator.inspect import inspect, resolve_target

    root = config.checkpoint_root
    assert resolve_target("/abs/img", config) == "/abs/img"
    assert resolve_target("default/job-1", config) == f"{root}/default/job-1"
    record(config, "c1", "/elsewhere/ns/claimed", None)
    assert resolve_target("default/c1", config) == "/elsewhere/ns/claimed"
    for bad in ("no-slash", "a/b/c", "ns/..", "bad ns/x"):
        with pytest.raises(ValueError):
            resolve_target(bad, config)
    pool_dir = tmp_path / "root" / "default" / "web"
    entry = pool_dir / pool.new_entry_name(NOW)
    entry.mkdir(parents=True)
    claimed = pool_dir / pool.claimed_name(pool.new_entry_name(NOW), host="h2")
    claimed.mkdir()
    report = inspect(str(pool_dir), config)
    document = report.as_dict()
    assert [(e["name"], e["status"]) for e in document["pool"]] == [
        (claimed.name, "claimed by h2"), (entry.name, "unclaimed"),
    ]  # fmt: skip
    assert all("metadata.json is missing" in str(e["problem"]) for e in document["pool"])


def test_images_being_restored_are_left_alone(config: HostConfig, tmp_path: Path) -> None:
    from arch.checkpoint.storage import readers

    now = time.time()  # gc's removal judges markers and ages by the real clock

    def ago(path: Path, seconds: float) -> Path:
        os.utime(path, (now - seconds, now - seconds))
        return path

    namespace = tmp_path / "root" / "default"
    image = namespace / "job"
    image.mkdir(parents=True)
    ago(image, 86400 * 30)
    with readers.reading("/", str(image).lstrip("/")):
        (marker,) = [p for p in namespace.iterdir() if p.name.startswith(".reading~job~")]
        plan = gc.plan([config.checkpoint_root], config, older_than=60)
        assert plan.actions == []
        assert plan.kept[0].reason == f"being restored on {pool.host_label()}"
    assert not marker.exists()

    def marker_of(host: str, pid: int, seconds_ago: float) -> Path:
        path = namespace / f".reading~job~{host}~{pid}~0123456789ab"
        path.touch()
        return ago(path, seconds_ago)

    elsewhere = marker_of("other-host", 1, 60)
    assert [r.host for r in readers.readers_of(str(image), now)] == ["other-host"]
    ago(elsewhere, readers.READ_TTL_SECONDS + 1)
    dead_here = marker_of(pool.host_label(), 2**22 + 7, 60)  # above pid_max: no such process
    assert readers.readers_of(str(image), now) == []
    assert sorted(readers.stale_markers(str(namespace), now)) == sorted(
        [str(elsewhere), str(dead_here)]
    )

    # A restore that starts between plan and removal wins: the image is put back.
    plan = gc.plan([config.checkpoint_root], config, older_than=60, now=now)
    assert [a.rule for a in plan.actions] == ["older-than"]
    with readers.reading("/", str(image).lstrip("/")):
        (outcome,) = gc.execute(plan.actions)
    assert (outcome.done, outcome.error) == (False, None)
    assert str(outcome.skipped).startswith("being restored on")
    assert image.is_dir()
    assert [o.done for o in gc.execute(plan.actions)] == [True]
    assert not image.exists()
    swept = gc.sweep_leftovers([str(namespace)], dry_run=False, now=now)
    assert sorted(o.action.path for o in swept) == sorted([str(elsewhere), str(dead_here)])


def test_default_roots_follow_this_hosts_containers(config: HostConfig, tmp_path: Path) -> None:
    record(config, "c1", str(tmp_path / "efs" / "checkpoint" / "default" / "job"), None)
    state = ContainerState(config.state_dir, "default", "p1")
    pool_dir = str(tmp_path / "data" / "default" / "web")
    member = ImageLocation("", "default", "web", pool_dir=pool_dir)
    state.write_record({"version": 1, "location": member.as_dict()})
    assert gc.default_roots(config) == sorted(
        [config.checkpoint_root, str(tmp_path / "efs" / "checkpoint"), str(tmp_path / "data")]
    )


FAKE_DOCKER = """#!/bin/sh
# A stand-in for `docker --host unix://S inspect --type container --format F -- ID`: an id
# from (unsigned) metadata must never be read as an option.
[ "$8" = "--" ] || { echo "no -- before the id: $8" >&2; exit 3; }
case "$9" in
  done-c) echo '{"Status":"exited","ExitCode":0,"FinishedAt":"2099-01-01T00:00:00.123456789Z"}';;
  failed-c) echo '{"Status":"exited","ExitCode":2,"FinishedAt":"2099-01-01T00:00:00Z"}';;
  early-c) echo '{"Status":"exited","ExitCode":0,"FinishedAt":"2001-01-01T00:00:00Z"}';;
  running-c) echo '{"Status":"running","ExitCode":0,"FinishedAt":"0001-01-01T00:00:00Z"}';;
  *) echo "Error: No such container: $9" >&2; exit 1;;
esac
"""


def test_docker_containers_that_exited_0_after_their_image(
    config: HostConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.test_image import publish_image

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    socket = tmp_path / "docker.sock"
    socket.touch()
    moby = tmp_path / "root" / "moby"
    for container in ("done-c", "failed-c", "early-c", "running-c", "unknown-c"):
        publish_image(moby / f"job-{container}", container_id=container)
    publish_image(moby / "job-option", container_id="--host=unix:///elsewhere.sock")
    plan = gc.plan([config.checkpoint_root], config, docker_socket=str(socket))
    assert [(os.path.basename(a.path), a.rule, a.detail) for a in plan.actions] == [
        ("job-done-c", "finished", "Docker container done-c exited 0")
    ]
    assert len(plan.kept) == 5
    without_docker = gc.plan([config.checkpoint_root], config, docker_socket=str(tmp_path / "x"))
    assert without_docker.actions == []


def test_reader_marker_is_made_beneath_the_root_only(tmp_path: Path) -> None:
    from arch.checkpoint.storage import readers

    (tmp_path / "real").mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "ns").symlink_to(tmp_path / "real")
    with readers.reading(str(tmp_path / "root"), "ns/job"):  # through a symlink: no marker
        assert list((tmp_path / "real").iterdir()) == []
    with readers.reading(str(tmp_path / "root"), "missing/job"):
        pass
    (tmp_path / "root" / "ok").mkdir()
    with readers.reading(str(tmp_path / "root"), "ok/job"):
        assert len(readers.readers_of(str(tmp_path / "root" / "ok" / "job"))) == 1
    assert list((tmp_path / "root" / "ok").iterdir()) == []
