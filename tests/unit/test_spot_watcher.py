"""The spot-watch loop against a real IMDSv2 server on 127.0.0.1; the checkpoint run is recorded.

(The real checkpoint of real containers on a notice is tested in
tests/integration/test_spot_notice.py.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from arch.operator.checkpoint_all import FAILED, OK, Outcome, Report
from arch.spot.imds import ImdsClient, Notice, epoch_seconds
from arch.spot.notice import marker_path, notice_active, read_marker
from arch.spot.watcher import MAX_BACKOFF, SpotWatcher
from tests.imds_server import NOTICE, ImdsServer

INTERVAL = 0.5


class Runs:
    """A stand-in for checkpoint --all that counts its calls."""

    def __init__(self, status: str = OK, error: Exception | None = None) -> None:
        self.calls = 0
        self.status = status
        self.error = error
        self.marker_during_run: list[bool] = []
        self.state_dir = ""
        self.notices: list[Notice] = []

    def __call__(self, notice: Notice) -> Report:
        self.calls += 1
        self.notices.append(notice)
        self.marker_during_run.append(notice_active(self.state_dir))
        if self.error is not None:
            raise self.error
        outcome = Outcome("default", "job", self.status, "reason", 0.5, None, None)
        return Report([outcome], [], 0.5, 2)


def watcher_for(imds: ImdsServer, state_dir: Path, runs: Runs, **kwargs: object) -> SpotWatcher:
    runs.state_dir = str(state_dir)
    logger = logging.getLogger("spot-watch-test")
    logger.setLevel(logging.INFO)
    client = ImdsClient(imds.endpoint, timeout=1.0)
    return SpotWatcher(client, str(state_dir), runs, logger, interval=INTERVAL, **kwargs)  # type: ignore[arg-type]


def test_no_notice_nothing_happens(imds: ImdsServer, tmp_path: Path) -> None:
    runs = Runs()
    watcher = watcher_for(imds, tmp_path, runs)
    assert [watcher.poll() for _ in range(5)] == [INTERVAL] * 5
    assert runs.calls == 0
    assert not notice_active(str(tmp_path))
    assert watcher.run_once() == 0


def test_first_notice_checkpoints_once_and_records_the_outcome(
    imds: ImdsServer, tmp_path: Path
) -> None:
    runs = Runs()
    seen: list[tuple[str, str]] = []
    watcher = watcher_for(imds, tmp_path, runs, notice_seen=lambda *notice: seen.append(notice))
    watcher.poll()
    imds.mode = "notice"
    for _ in range(4):
        watcher.poll()
    assert runs.calls == 1
    assert runs.marker_during_run == [True]  # stops racing the run already become checkpoints
    assert seen == [("terminate", NOTICE["time"])]
    marker = read_marker(str(tmp_path))
    assert marker is not None
    assert marker["notice"] == NOTICE
    assert marker["outcome"]["ok"] is True
    assert marker["outcome"]["summary"] == {"ok": 1, "failed": 0, "skipped": 0,
                                            "not_attempted": 0}  # fmt: skip
    assert runs.notices == [Notice(NOTICE["action"], NOTICE["time"])]  # the deadline goes along
    assert (Path(marker_path(str(tmp_path))).stat().st_mode & 0o777) == 0o600

    # spot-watch restarted during the same notice: the recorded outcome stands, no second run.
    again = Runs()
    watcher_for(imds, tmp_path, again).poll()
    assert again.calls == 0

    imds.mode = "none"  # the notice went away
    watcher.poll()
    assert not notice_active(str(tmp_path))


def test_a_new_notice_after_one_went_away_is_handled(imds: ImdsServer, tmp_path: Path) -> None:
    runs = Runs()
    watcher = watcher_for(imds, tmp_path, runs)
    imds.mode = "notice"
    watcher.poll()
    imds.mode = "none"
    watcher.poll()
    imds.notice = {"action": "stop", "time": "2026-11-30T18:00:00Z"}
    imds.mode = "notice"
    watcher.poll()
    assert runs.calls == 2


@pytest.mark.parametrize("mode", ["garbage", "malformed", "unknown-action", "error", "hangup"])
def test_bad_answers_back_off_and_never_trigger(
    imds: ImdsServer, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    runs = Runs()
    watcher = watcher_for(imds, tmp_path, runs)
    imds.mode = mode
    delays = [watcher.poll() for _ in range(6)]
    assert delays == [INTERVAL, 2 * INTERVAL, 4 * INTERVAL, 8 * INTERVAL, MAX_BACKOFF, MAX_BACKOFF]
    assert runs.calls == 0
    assert not notice_active(str(tmp_path))
    assert watcher.run_once() == 1
    assert "instance metadata unusable" in caplog.text
    imds.mode = "none"
    assert watcher.poll() == INTERVAL  # recovered: back to the normal interval
    assert "answers again" in caplog.text


def test_service_down_and_stale_tokens_never_trigger(imds: ImdsServer, tmp_path: Path) -> None:
    runs = Runs()
    watcher = watcher_for(imds, tmp_path, runs)
    watcher.poll()
    imds.stop()
    watcher.poll()
    watcher.poll()
    imds.start()  # back, with none of the old tokens
    imds.revoke_tokens()
    assert watcher.poll() == INTERVAL
    assert imds.unauthorized == 1
    assert runs.calls == 0
    assert watcher.failures == 0


def test_a_failed_run_is_recorded_and_the_watch_goes_on(imds: ImdsServer, tmp_path: Path) -> None:
    runs = Runs(error=RuntimeError("boom"))
    watcher = watcher_for(imds, tmp_path, runs)
    imds.mode = "notice"
    assert watcher.run_once() == 1
    marker = read_marker(str(tmp_path))
    assert marker is not None
    assert marker["outcome"] == {**marker["outcome"], "ok": False, "error": "RuntimeError: boom"}
    assert watcher.poll() == INTERVAL  # still watching; the same notice is not run again
    assert runs.calls == 1

    failing = Runs(status=FAILED)
    other_dir = tmp_path / "other"
    assert watcher_for(imds, other_dir, failing).run_once() == 1
    marker = read_marker(str(other_dir))
    assert marker is not None and marker["outcome"]["failed"] == ["default/job"]


def test_rebalance_recommendation_is_only_reported(
    imds: ImdsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = Runs()
    seen: list[tuple[str, str]] = []
    watcher = watcher_for(imds, tmp_path, runs, rebalance=True,
                          notice_seen=lambda *notice: seen.append(notice))  # fmt: skip
    imds.rebalance = {"noticeTime": "2026-11-30T16:50:00Z"}
    watcher.poll()
    watcher.poll()
    assert seen == [("rebalance", "2026-11-30T16:50:00Z")]
    assert caplog.text.count("rebalance recommendation since 2026-11-30T16:50:00Z") == 1
    assert runs.calls == 0
    assert not notice_active(str(tmp_path))


def test_an_unwritable_state_dir_does_not_stop_the_run(
    imds: ImdsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_directory = tmp_path / "state"
    not_a_directory.write_text("")
    runs = Runs()
    watcher = watcher_for(imds, not_a_directory, runs)
    imds.mode = "notice"
    assert watcher.run_once() == 0
    assert runs.calls == 1
    assert "cannot write the notice marker" in caplog.text


def test_a_failing_rebalance_read_never_drops_a_notice(
    imds: ImdsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = Runs()
    watcher = watcher_for(imds, tmp_path, runs, rebalance=True)
    imds.rebalance = {"noticeTime": 5}  # not what AWS documents: the rebalance read fails
    imds.mode = "notice"
    assert watcher.poll() == INTERVAL
    assert runs.calls == 1, caplog.text
    assert "reading the rebalance recommendation failed" in caplog.text
    print("evidence:", next(line for line in caplog.text.splitlines() if "rebalance" in line))


def test_failing_metrics_and_logging_stop_neither_the_checkpoint_nor_the_watcher(
    imds: ImdsServer, tmp_path: Path
) -> None:
    def broken_metrics(action: str, when: str) -> None:
        raise OSError(28, "No space left on device")

    class BrokenHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("log sink gone")

        def handleError(self, record: logging.LogRecord) -> None:
            raise RuntimeError("log sink gone")

    runs = Runs()
    watcher = watcher_for(imds, tmp_path, runs, notice_seen=broken_metrics)
    broken = BrokenHandler()
    watcher.log = logging.getLogger("spot-watch-broken")
    watcher.log.propagate = False
    watcher.log.addHandler(broken)
    imds.mode = "notice"
    try:
        assert watcher.poll() == INTERVAL
        assert watcher.poll() == INTERVAL
    finally:
        watcher.log.removeHandler(broken)
    assert runs.calls == 1
    marker = read_marker(str(tmp_path))
    assert marker is not None and marker["outcome"]["ok"] is True


@pytest.mark.parametrize("recorded", ["no outcome", "failed outcome"])
def test_a_restart_finishes_the_notices_work(
    imds: ImdsServer, tmp_path: Path, recorded: str
) -> None:
    from arch.spot.notice import write_marker

    document: dict[str, object] = {"notice": NOTICE, "seen_at": "2026-11-30T16:58:01Z"}
    if recorded == "failed outcome":
        document["outcome"] = {"ok": False, "failed": ["default/job"]}
    write_marker(str(tmp_path), document)  # what a spot-watch that crashed midway left
    runs = Runs()
    imds.mode = "notice"
    watcher = watcher_for(imds, tmp_path, runs)
    watcher.poll()
    assert runs.calls == 1
    marker = read_marker(str(tmp_path))
    assert marker is not None and marker["outcome"]["ok"] is True
    assert marker["seen_at"] == "2026-11-30T16:58:01Z" and "restarted_at" in marker


def test_held_jobs_are_thawed_well_past_the_notice_time_or_when_it_goes(
    imds: ImdsServer, tmp_path: Path
) -> None:
    notice_time = epoch_seconds(NOTICE["time"])
    assert notice_time is not None
    now = [notice_time - 100.0]
    thaws: list[float] = []
    runs = Runs()
    watcher = watcher_for(imds, tmp_path, runs, thaw=lambda: thaws.append(now[0]),
                          thaw_after=120.0, clock=lambda: now[0])  # fmt: skip
    imds.mode = "notice"
    watcher.poll()
    now[0] = notice_time + 119.0
    watcher.poll()
    assert thaws == []  # the host may still be reclaimed: the jobs stay frozen
    now[0] = notice_time + 121.0
    watcher.poll()
    watcher.poll()
    assert thaws == [notice_time + 121.0]  # once

    other = tmp_path / "withdrawn"
    thaws.clear()
    withdrawn = watcher_for(imds, other, Runs(), thaw=lambda: thaws.append(0.0),
                            clock=lambda: notice_time - 60.0)  # fmt: skip
    withdrawn.poll()
    imds.mode = "none"
    withdrawn.poll()
    withdrawn.poll()
    assert thaws == [0.0]
