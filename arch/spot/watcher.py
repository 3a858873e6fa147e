"""The spot-watch loop: poll IMDS, and on the first interruption notice checkpoint once.

Each poll reads `spot/instance-action` (and, when asked, the rebalance recommendation, which is
only reported). The two reads are isolated: a failure of the rebalance read, of the metrics hook
or of the log never drops a posted notice, never stops a checkpoint and never ends the watcher.
On the first notice the watcher writes the notice marker (so that stops racing it become
checkpoints, see arch.spot.notice), runs the checkpoint of every ARCH container once, and records
the outcome in the marker and the log. After a restart (spot-watch crashed or was restarted) a
notice whose marker records a successful outcome is not handled again; one without an outcome,
or with a failed one, is handled again: the run finishes the notice's work (containers already
saved are stopped or held, and only the rest is checkpointed). When the notice disappears the
marker is removed.

On a Batch host (`thaw` given) the checkpointed jobs are held frozen (arch.spot.platform); if the
host is still there `thaw_after` seconds past the notice's time, or the notice disappears, they
are thawed and go on.

Poll interval: 1 s by default, as the ECS agent polls for the same notice, so that spot-watch's
marker is in place before the agent's stops arrive.

When IMDS is unreachable or answers garbage the watcher logs (the first failure, then every
LOG_EVERY_FAILURES-th, and the recovery), backs off up to MAX_BACKOFF, and never acts.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from arch.spot.imds import ImdsError, Notice, epoch_seconds
from arch.spot.notice import read_marker, remove_marker, write_marker

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from arch.operator.checkpoint_all import Report
    from arch.spot.imds import ImdsClient

DEFAULT_INTERVAL = 1.0
# A held Batch job is thawed this long after the notice's time if the host is still there: a
# terminate notice's instance is gone by then ("Spot Instance interruption notices": the notice
# comes two minutes before the action), so the host survived (stop/hibernate, or withdrawn).
DEFAULT_THAW_AFTER = 120.0
ADVISED_MAX_INTERVAL = 5.0  # AWS advises polling at least every 5 s
MAX_BACKOFF = 5.0
LOG_EVERY_FAILURES = 30
EXIT_OK, EXIT_FAILED = 0, 1
REBALANCE = "rebalance"  # what notice_seen hears for a rebalance recommendation


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class SpotWatcher:
    """Polls one IMDS; `checkpoint_all` is the run to do on the first notice.

    `notice_seen(action, time)` hears of each new notice (and rebalance recommendation, action
    REBALANCE) before anything is done about it: the metrics hook.
    """

    def __init__(
        self,
        imds: ImdsClient,
        state_dir: str,
        checkpoint_all: Callable[[Notice], Report],
        logger: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        rebalance: bool = False,
        notice_seen: Callable[[str, str], None] | None = None,
        thaw: Callable[[], object] | None = None,
        thaw_after: float = DEFAULT_THAW_AFTER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.imds = imds
        self.state_dir = state_dir
        self.checkpoint_all = checkpoint_all
        self.log = logger
        self.interval = interval
        self.rebalance = rebalance
        self.notice_seen = notice_seen
        self.thaw = thaw
        self.thaw_after = thaw_after
        self.clock = clock
        self.thawed = False
        self.stop = threading.Event()
        self.failures = 0
        self.handled: Notice | None = None
        self.rebalance_seen: str | None = None
        self.last_run_failed = False

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Poll until `stop` is set."""
        self.log.info(
            "watching %s://%s:%d for Spot interruption notices every %.1fs",
            *self.imds.endpoint,
            self.interval,
        )
        while not self.stop.is_set():
            self.stop.wait(self.poll())
        self.log.info("stopped")

    def run_once(self) -> int:
        """One poll (for scripts): 0 when IMDS answered and any checkpoint run succeeded."""
        self.poll()
        return EXIT_FAILED if self.failures or self.last_run_failed else EXIT_OK

    def poll(self) -> float:
        """One look at IMDS; the seconds to wait before the next."""
        try:
            notice = self.imds.instance_action()
        except ImdsError as error:
            return self._failed(str(error))
        except Exception as error:  # a bug here must not end the watch: log it, back off
            self._guarded("logging", self.log.exception, "unexpected error while polling")
            return self._failed(f"{type(error).__name__}: {error}")
        if self.failures:
            self._guarded("logging", self.log.info,
                          "instance metadata answers again after %d failed polls",
                          self.failures)  # fmt: skip
            self.failures = 0
        if notice is None:
            self._guarded("ending the notice", self._no_notice)
        elif notice != self.handled:
            self._guarded("handling the notice", self._handle, notice)
        else:
            self._guarded("thawing held jobs", self._maybe_thaw, notice)
        if self.rebalance:  # after the notice: its failure never delays or drops one
            self._guarded("reading the rebalance recommendation", self._check_rebalance)
        return self.interval

    def _guarded(self, what: str, step: Callable[..., object], *args: object) -> None:
        """Run one step; an exception is logged (if logging works) and the watch goes on."""
        try:
            step(*args)
        except ImdsError as error:
            self._log_failure(what, error, traceback=False)
        except Exception as error:  # the watcher outlives any one step's bug
            self._log_failure(what, error, traceback=True)

    def _log_failure(self, what: str, error: Exception, traceback: bool) -> None:
        try:
            if traceback:
                self.log.exception("%s failed: %s", what, error)
            else:
                self.log.warning("%s failed: %s", what, error)
        except Exception:  # a broken log must not end the watch either
            pass

    def _failed(self, reason: str) -> float:
        self.failures += 1
        if self.failures == 1 or self.failures % LOG_EVERY_FAILURES == 0:
            self.log.warning(
                "instance metadata unusable (%d failed polls, backing off): %s",
                self.failures,
                reason,
            )
        doubling = 2.0 ** min(self.failures - 1, 16)
        return min(max(self.interval, MAX_BACKOFF), self.interval * doubling)

    def _check_rebalance(self) -> None:
        recommendation = self.imds.rebalance_recommendation()
        if recommendation is not None and recommendation.notice_time != self.rebalance_seen:
            self.rebalance_seen = recommendation.notice_time
            self.log.warning(
                "rebalance recommendation since %s: this instance is at elevated risk of a "
                "Spot interruption (reported only; nothing is checkpointed)",
                recommendation.notice_time,
            )
            if self.notice_seen is not None:
                self.notice_seen(REBALANCE, recommendation.notice_time)

    # -- notices ---------------------------------------------------------------------------

    def _no_notice(self) -> None:
        had_notice = self.handled is not None
        self.handled = None
        if remove_marker(self.state_dir):
            had_notice = True
            self.log.warning("the Spot interruption notice is gone: notice marker removed")
        if had_notice and self.thaw is not None and not self.thawed:
            self.log.warning("the notice is gone and this host is still here: thawing held jobs")
            self.thaw()
        self.thawed = False

    def _maybe_thaw(self, notice: Notice) -> None:
        """Thaw held jobs once the host has outlived its notice by `thaw_after` seconds."""
        if self.thaw is None or self.thawed:
            return
        action_time = epoch_seconds(notice.time)
        if action_time is None or self.clock() < action_time + self.thaw_after:
            return
        self.thawed = True
        self.log.warning(
            "this host is still here %.0fs after the notice's time (%s at %s): thawing held jobs",
            self.clock() - action_time,
            notice.action,
            notice.time,
        )
        self.thaw()

    def _handle(self, notice: Notice) -> None:
        self.handled = notice
        self.thawed = False
        recorded = read_marker(self.state_dir) or {}
        outcome = recorded.get("outcome")
        if recorded.get("notice") == notice.as_dict() and isinstance(outcome, dict) and \
                outcome.get("ok"):  # fmt: skip
            self.log.warning(
                "Spot interruption notice (%s at %s) was already handled: %s",
                notice.action,
                notice.time,
                outcome.get("summary"),
            )
            return
        again = recorded.get("notice") == notice.as_dict()
        document: dict[str, Any] = {"notice": notice.as_dict(), "seen_at": utc_now()}
        if again:  # spot-watch restarted during this notice: finish its work
            document["seen_at"] = recorded.get("seen_at", document["seen_at"])
            document["restarted_at"] = utc_now()
        self._write_marker(document)
        self._guarded("logging", self.log.warning,
                      "Spot interruption notice: %s at %s; %s", notice.action, notice.time,
                      "finishing the checkpoint of every ARCH container after a restart" if again
                      else "checkpointing every ARCH container")  # fmt: skip
        if self.notice_seen is not None:
            self._guarded("recording the notice in the metrics", self.notice_seen,
                          notice.action, notice.time)  # fmt: skip
        document["outcome"] = self._checkpoint(notice)
        self._write_marker(document)

    def _write_marker(self, document: dict[str, Any]) -> None:
        """Write the marker; without it stops are not checkpoints, but the run still goes on."""
        try:
            write_marker(self.state_dir, document)
        except OSError as error:
            self.log.error("cannot write the notice marker in %s: %s", self.state_dir, error)

    def _checkpoint(self, notice: Notice) -> dict[str, Any]:
        started = time.monotonic()
        try:
            report = self.checkpoint_all(notice)
        except Exception as error:  # the run's failure is recorded; the watch goes on
            self.log.exception("checkpoint of ARCH containers failed")
            self.last_run_failed = True
            return {
                "ok": False,
                "error": f"{type(error).__name__}: {error}",
                "finished_at": utc_now(),
            }
        not_saved = [o.name for o in report.outcomes if o.status in ("failed", "not_attempted")]
        self.last_run_failed = report.failed or bool(not_saved)
        summary = report.as_dict()["summary"]
        self._guarded("logging", self.log.error if self.last_run_failed else self.log.warning,
                      "checkpoint after the Spot notice finished in %.1fs: %s%s%s",
                      time.monotonic() - started, summary,
                      f"; not saved: {', '.join(not_saved)}" if not_saved else "",
                      f"; problems: {'; '.join(report.problems)}" if report.problems else "",
                      )  # fmt: skip
        return {
            "ok": not self.last_run_failed,
            "summary": summary,
            "failed": not_saved,
            "problems": report.problems,
            "seconds": round(report.seconds, 3),
            "finished_at": utc_now(),
        }
