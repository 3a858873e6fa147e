"""`archctl watch-exits`: record the exit status of ARCH containers from containerd's events.

Runs until SIGTERM/SIGINT (as arch-exit-watch.service). See arch.container.exit_watch.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from typing import Any

from arch.checkpoint.storage.sweep import SWEEP_INTERVAL_SECONDS, sweep_host
from arch.config import ConfigError, load_config
from arch.container.exit_watch import ExitWatcher, StopRequest, WatcherPresence, find_ctr
from arch.log import setup_logging

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "watch-exits",
        help="record ARCH containers' exit statuses from containerd events (long-running)",
        description="Follow containerd's events in every namespace and record the exit status "
        "of each ARCH container's init process, so that delete removes the checkpoint image only "
        "after an exit with code 0. Reconnects when containerd restarts; stops on SIGTERM.",
    )
    parser.add_argument(
        "--ctr",
        help="the ctr binary (default: ctr on PATH, else the one beside containerd)",
    )
    parser.add_argument(
        "--sweep-interval",
        type=float,
        default=SWEEP_INTERVAL_SECONDS,
        metavar="SECONDS",
        help="clean up what killed checkpoints and restores left (interrupted operations, "
        "staging and work directories without a live lease) at start and then every SECONDS "
        f"(default {SWEEP_INTERVAL_SECONDS:g}; 0: never)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config()
    except ConfigError as error:
        print(f"archctl watch-exits: {error}", file=sys.stderr)
        return 1
    ctr = args.ctr or find_ctr()
    if ctr is None:
        print("archctl watch-exits: ctr not found on PATH or beside containerd", file=sys.stderr)
        return 1
    logger = setup_logging(config.log_file, config.log_level, journal=True)
    stop = StopRequest()
    previous_handlers = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, lambda _number, _frame: stop.request())
    sweep = None
    if args.sweep_interval > 0:
        runc = config.runc or shutil.which("runc") or "runc"

        def sweep() -> None:
            for line in sweep_host(config, runc):
                logger.info("clean-up: %s", line)

    # Deletes wait for an exit status only while a watcher has announced itself here.
    presence = WatcherPresence(config.state_dir, args.address)
    try:
        for stale in presence.announce():
            logger.info("removed %s of an exit watcher that is gone", stale)
    except OSError as error:
        logger.warning("cannot announce the watcher in %s (deletes will not wait for exit "
                       "statuses): %s", config.state_dir, error)  # fmt: skip
    try:
        ExitWatcher(ctr, args.address, config.state_dir, logger, stop, sweep,
                    args.sweep_interval).run()  # fmt: skip
    finally:
        presence.withdraw()
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)
        stop.close()
    return 0
