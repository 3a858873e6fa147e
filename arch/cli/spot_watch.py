"""`archctl spot-watch`: watch instance metadata and checkpoint every ARCH container on a notice.

The service `arch-spot-watch` runs it. Log lines go to stderr (journald adds time and unit) and
to ARCH's log file.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from arch.cli.checkpoint import positive_int
from arch.config import ConfigError, load_config
from arch.log import setup_logging
from arch.operator.checkpoint_all import checkpoint_all, default_workers
from arch.operator.containerd import Containerd
from arch.spot.imds import (
    DEFAULT_ENDPOINT,
    DEFAULT_TOKEN_TTL,
    ENDPOINT_ENV,
    MAX_TOKEN_TTL,
    ImdsClient,
    epoch_seconds,
    parse_endpoint,
)
from arch.spot.watcher import (
    ADVISED_MAX_INTERVAL,
    DEFAULT_INTERVAL,
    DEFAULT_THAW_AFTER,
    REBALANCE,
    SpotWatcher,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from arch.config import HostConfig
    from arch.operator.checkpoint_all import Outcome, Report, Target
    from arch.spot.imds import Notice

EXIT_FAILED, EXIT_USAGE = 1, 2
LOGGER_NAME = "arch.spot"
STDERR_FORMAT = "archctl spot-watch: %(levelname)s %(message)s"


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.0 < value <= 3600.0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be seconds, more than 0")
    return value


def token_ttl(text: str) -> int:
    value = positive_int(text)
    if value > MAX_TOKEN_TTL:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_TOKEN_TTL} seconds")
    return value


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "spot-watch",
        help="poll EC2 instance metadata; checkpoint every ARCH container on a Spot notice",
        description="Poll EC2 instance metadata (IMDSv2) for a Spot interruption notice. On the "
        "first notice, leave the notice marker (stops of ARCH containers become checkpoints), "
        "checkpoint every running ARCH container once (as `archctl checkpoint --all`) and record "
        "the outcome. IMDS unreachable or answering garbage: back off and log, never act. "
        "--once: poll once; exit 0 when IMDS answered (and any checkpoint run succeeded), 1 "
        "otherwise.",
    )
    parser.add_argument(
        "--endpoint",
        help=f"metadata service (default: ${ENDPOINT_ENV}, else {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--interval",
        type=positive_seconds,
        default=DEFAULT_INTERVAL,
        help=f"seconds between polls (default {DEFAULT_INTERVAL:g}; AWS advises at most "
        f"{ADVISED_MAX_INTERVAL:g})",
    )
    parser.add_argument("--once", action="store_true", help="poll once and exit")
    parser.add_argument(
        "--rebalance",
        action="store_true",
        help="also report EC2 rebalance recommendations (nothing is checkpointed for them)",
    )
    parser.add_argument(
        "--parallel",
        type=positive_int,
        default=default_workers(),
        help=f"checkpoints at once on a notice (default {default_workers()} here)",
    )
    parser.add_argument(
        "--token-ttl",
        type=token_ttl,
        default=DEFAULT_TOKEN_TTL,
        help=f"IMDSv2 session token lifetime in seconds (default {DEFAULT_TOKEN_TTL})",
    )
    parser.add_argument(
        "--thaw-after",
        type=positive_seconds,
        default=DEFAULT_THAW_AFTER,
        help="platform batch: thaw the held jobs when this host is still here this many seconds "
        f"after the notice's time (default {DEFAULT_THAW_AFTER:g})",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    endpoint = args.endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    try:
        parse_endpoint(endpoint)
    except ValueError as error:
        print(f"archctl spot-watch: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config()
    except ConfigError as error:
        print(f"archctl spot-watch: {error}", file=sys.stderr)
        return EXIT_FAILED
    logger = _logger(config.log_file, config.log_level)
    if args.interval > ADVISED_MAX_INTERVAL:
        logger.warning(
            "polling every %.1fs: AWS advises at most every %gs (the notice comes two minutes "
            "ahead)",
            args.interval,
            ADVISED_MAX_INTERVAL,
        )
    client = Containerd(args.address)

    def log_outcome(outcome: Outcome, done: int, total: int) -> None:
        level = logging.ERROR if outcome.status == "failed" else logging.INFO
        logger.log(
            level,
            "[%d/%d] %s %s (%.2fs): %s",
            done,
            total,
            outcome.status,
            outcome.name,
            outcome.seconds,
            outcome.reason,
        )

    def checkpoint_everything(notice: Notice) -> Report:
        return checkpoint_for_notice(client, config, args.parallel, notice, logger, log_outcome)

    def record_notice(action: str, when: str) -> None:
        from arch import metrics

        action_time = None if action == REBALANCE else epoch_seconds(when)
        metrics.record_spot_notice(config, action, action_time)

    watcher = SpotWatcher(
        ImdsClient(endpoint, token_ttl=args.token_ttl),
        config.state_dir,
        checkpoint_everything,
        logger,
        interval=args.interval,
        rebalance=args.rebalance,
        notice_seen=record_notice,
        thaw=(lambda: thaw_held(config, logger)) if config.platform == "batch" else None,
        thaw_after=args.thaw_after,
    )
    if args.once:
        return watcher.run_once()

    def stop(number: int, frame: FrameType | None) -> None:
        del frame
        logger.info("signal %d: stopping", number)
        watcher.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    watcher.run()
    return 0


def checkpoint_for_notice(
    client: Containerd,
    config: HostConfig,
    workers: int,
    notice: Notice,
    logger: logging.Logger,
    log_outcome: Callable[[Outcome, int, int], None],
) -> Report:
    """`checkpoint --all` against the notice's deadline. Pool members' images are announced
    as on the way first (arch.spot.pending), each announcement removed as its checkpoint ends.
    On a Batch host the jobs are held frozen (arch.spot.platform)."""
    from arch.spot.pending import Announcements
    from arch.spot.platform import holds

    deadline = epoch_seconds(notice.time)
    announcements = Announcements(pool_host_label())

    def announce(targets: list[Target]) -> None:
        for target in targets:
            location = target.container.location if target.container else None
            if location is None or location.pool_dir is None or deadline is None:
                continue
            if target.skip_reason or target.fail_reason or target.saved_reason:
                continue
            try:
                announcements.announce(target.name, location.root, location.pool_dir, deadline)
            except OSError as error:
                logger.error("%s: cannot announce its image in %s: %s", target.name,
                             location.pool_dir, error)  # fmt: skip

    def finished(outcome: Outcome, done: int, total: int) -> None:
        try:
            announcements.settle(outcome.name)
        except OSError as error:
            logger.error("%s: pending record not removed: %s", outcome.name, error)
        log_outcome(outcome, done, total)

    try:
        hold = holds(config.platform, pool_member=False)
        return checkpoint_all(client, config, workers, finished, deadline=deadline, hold=hold,
                              planned=announce)  # fmt: skip
    finally:
        for problem in announcements.settle_all():
            logger.error("%s", problem)


def pool_host_label() -> str:
    from arch.checkpoint.storage.pool import host_label

    return host_label()


def thaw_held(config: HostConfig, logger: logging.Logger) -> int:
    """Resume every job held frozen on this host; the number thawed."""
    import subprocess

    from arch.container.state import ContainerState, StateError, list_containers
    from arch.shim.passthrough import RuncNotFound, resolve_runc
    from arch.spot.platform import HELD, thaw

    thawed = 0
    for namespace, container_id in list_containers(config.state_dir):
        try:
            state = ContainerState(config.state_dir, namespace, container_id)
            if not state.has(HELD):
                continue
            thaw(state, resolve_runc(config))
        except (StateError, RuncNotFound, OSError, ValueError,
                subprocess.CalledProcessError) as error:  # fmt: skip
            logger.error("cannot thaw %s/%s: %s", namespace, container_id, error)
            continue
        thawed += 1
        logger.warning("thawed %s/%s: it goes on; its image stays until it finishes",
                       namespace, container_id)  # fmt: skip
    return thawed


def _logger(log_file: str, level: str) -> logging.Logger:
    setup_logging(log_file, level)  # the "arch" logger's file; "arch.spot" propagates to it
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger
