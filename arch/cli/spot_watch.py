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
    parse_endpoint,
)
from arch.spot.watcher import ADVISED_MAX_INTERVAL, DEFAULT_INTERVAL, REBALANCE, SpotWatcher

if TYPE_CHECKING:
    from types import FrameType

    from arch.operator.checkpoint_all import Outcome, Report

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

    def checkpoint_everything() -> Report:
        return checkpoint_all(client, config, args.parallel, log_outcome)

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


def epoch_seconds(timestamp: str) -> float | None:
    """2026-11-30T17:00:00Z (IMDS's form, fractions allowed) as seconds since the epoch."""
    import calendar
    import time

    try:
        return float(calendar.timegm(time.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def _logger(log_file: str, level: str) -> logging.Logger:
    setup_logging(log_file, level)  # the "arch" logger's file; "arch.spot" propagates to it
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger
