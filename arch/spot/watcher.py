"""The spot-watch loop: poll IMDS, and on the first interruption notice checkpoint once.

Each poll reads `spot/instance-action` (and, when asked, the rebalance recommendation, which is
only reported). On the first notice the watcher writes the notice marker (so that stops racing it
become checkpoints, see arch.spot.notice), runs the checkpoint of every ARCH container once, and
records the outcome in the marker and the log. A notice whose outcome the marker already holds
(spot-watch restarted) is not handled again. When the notice disappears the marker is removed.

When IMDS is unreachable or answers garbage the watcher logs (the first failure, then every
LOG_EVERY_FAILURES-th, and the recovery), backs off up to MAX_BACKOFF, and never acts.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from arch.spot.imds import ImdsError, Notice
from arch.spot.notice import read_marker, remove_marker, write_marker

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from arch.operator.checkpoint_all import Report
    from arch.spot.imds import ImdsClient

DEFAULT_INTERVAL = 2.0
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
        checkpoint_all: Callable[[], Report],
        logger: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        rebalance: bool = False,
        notice_seen: Callable[[str, str], None] | None = None,
    ) -> None:
        self.imds = imds
        self.state_dir = state_dir
        self.checkpoint_all = checkpoint_all
        self.log = logger
        self.interval = interval
        self.rebalance = rebalance
        self.notice_seen = notice_seen
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
            if self.rebalance:
                self._check_rebalance()
        except ImdsError as error:
            return self._failed(str(error))
        except Exception as error:  # a bug here must not end the watch: log it, back off
            self.log.exception("unexpected error while polling")
            return self._failed(f"{type(error).__name__}: {error}")
        if self.failures:
            self.log.info("instance metadata answers again after %d failed polls", self.failures)
            self.failures = 0
        if notice is None:
            self._no_notice()
        elif notice != self.handled:
            self._handle(notice)
        return self.interval

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
        if remove_marker(self.state_dir):
            self.log.warning("the Spot interruption notice is gone: notice marker removed")
        self.handled = None

    def _handle(self, notice: Notice) -> None:
        self.handled = notice
        recorded = read_marker(self.state_dir) or {}
        if recorded.get("notice") == notice.as_dict() and recorded.get("outcome"):
            self.log.warning(
                "Spot interruption notice (%s at %s) was already handled: %s",
                notice.action,
                notice.time,
                recorded["outcome"].get("summary"),
            )
            return
        document: dict[str, Any] = {"notice": notice.as_dict(), "seen_at": utc_now()}
        self._write_marker(document)
        self.log.warning(
            "Spot interruption notice: %s at %s; checkpointing every ARCH container",
            notice.action,
            notice.time,
        )
        if self.notice_seen is not None:
            self.notice_seen(notice.action, notice.time)
        document["outcome"] = self._checkpoint()
        self._write_marker(document)

    def _write_marker(self, document: dict[str, Any]) -> None:
        """Write the marker; without it stops are not checkpoints, but the run still goes on."""
        try:
            write_marker(self.state_dir, document)
        except OSError as error:
            self.log.error("cannot write the notice marker in %s: %s", self.state_dir, error)

    def _checkpoint(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            report = self.checkpoint_all()
        except Exception as error:  # the run's failure is recorded; the watch goes on
            self.log.exception("checkpoint of ARCH containers failed")
            self.last_run_failed = True
            return {
                "ok": False,
                "error": f"{type(error).__name__}: {error}",
                "finished_at": utc_now(),
            }
        self.last_run_failed = report.failed
        failed = [o.name for o in report.outcomes if o.status == "failed"]
        summary = report.as_dict()["summary"]
        log = self.log.error if report.failed else self.log.warning
        log(
            "checkpoint after the Spot notice finished in %.1fs: %s%s%s",
            time.monotonic() - started,
            summary,
            f"; failed: {', '.join(failed)}" if failed else "",
            f"; problems: {'; '.join(report.problems)}" if report.problems else "",
        )
        return {
            "ok": not report.failed,
            "summary": summary,
            "failed": failed,
            "problems": report.problems,
            "seconds": round(report.seconds, 3),
            "finished_at": utc_now(),
        }
