"""`archctl checkpoint --all | NAMESPACE/ID ...`: checkpoint and stop, in parallel."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

from arch.cli.output import format_table, human_bytes
from arch.config import ConfigError, load_config
from arch.container.state import StateError, validate_component
from arch.operator.checkpoint_all import (
    FAILED,
    NOT_ATTEMPTED,
    OK,
    SKIPPED,
    STATUSES,
    CheckpointRun,
    Outcome,
    Report,
    default_workers,
    plan_all,
    plan_named,
    summary,
)
from arch.operator.containerd import Containerd, ContainerdError

if TYPE_CHECKING:
    from arch.operator.checkpoint_all import Target

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
HEADERS = ("RESULT", "CONTAINER", "SECONDS", "IMAGE", "REASON")


def namespaced_id(text: str) -> tuple[str, str]:
    """argparse type of NAMESPACE/ID."""
    namespace, slash, container_id = text.partition("/")
    try:
        if not slash:
            raise StateError("expected NAMESPACE/ID")
        return validate_component("namespace", namespace), validate_component("id", container_id)
    except StateError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from error


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number of at least 1")
    return value


def add_parser(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "checkpoint",
        help="checkpoint and stop ARCH containers through containerd, in parallel",
        description="Checkpoint and stop ARCH-enabled containers through containerd (their "
        "images are published by arch-runc; containerd keeps no copy), in parallel, with "
        "progress, then one line per container. A container that is not running or not "
        "ARCH-enabled is reported and skipped. Exit 0 when none failed, 1 when any failed, 2 on "
        "bad usage.",
    )
    parser.add_argument(
        "containers",
        nargs="*",
        type=namespaced_id,
        metavar="NAMESPACE/ID",
        help="containers to checkpoint (Docker's: moby/<full container id>)",
    )
    parser.add_argument(
        "--all", action="store_true", help="every running ARCH container, in every namespace"
    )
    parser.add_argument(
        "--parallel",
        type=positive_int,
        default=default_workers(),
        help="checkpoints at once (default: twice the CPUs, at least 2, at most 16: "
        f"{default_workers()} here)",
    )
    parser.add_argument(
        "--deadline",
        type=utc_time,
        help="finish by this UTC time (2026-11-30T17:00:00Z): smallest containers first, a "
        "checkpoint that cannot finish in time is not attempted, a failed one is retried while "
        "time is left (default: the active Spot notice's time, if any)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run=run)


def utc_time(text: str) -> float:
    """argparse type of an IMDS-style UTC time, as epoch seconds."""
    from arch.spot.imds import epoch_seconds

    value = epoch_seconds(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a UTC time like 2026-11-30T17:00:00Z")
    return value


def notice_deadline(state_dir: str) -> float | None:
    """The time of the Spot notice spot-watch recorded on this host, if one is active."""
    from arch.spot.imds import epoch_seconds
    from arch.spot.notice import read_marker

    notice = (read_marker(state_dir) or {}).get("notice")
    when = notice.get("time") if isinstance(notice, dict) else None
    return epoch_seconds(when) if isinstance(when, str) else None


def run(args: argparse.Namespace) -> int:
    if bool(args.all) == bool(args.containers):
        print(
            "archctl checkpoint: error: give either --all or NAMESPACE/ID ..., not both or neither",
            file=sys.stderr,
        )
        return EXIT_USAGE
    started = time.monotonic()
    try:
        config = load_config()
        client = Containerd(args.address)
        problems: list[str] = []
        if args.all:
            targets, problems = plan_all(client, config)
        else:
            targets = plan_named(client, config, args.containers)
    except (ConfigError, ContainerdError) as error:
        print(f"archctl checkpoint: {error}", file=sys.stderr)
        return EXIT_FAILED
    # Progress goes where a person watches: a live line on a terminal, else plain lines (on
    # stderr with --json, so that stdout holds only the document).
    stream = sys.stderr if args.json else sys.stdout
    progress = LiveProgress(stream, len(targets)) if stream.isatty() else PlainProgress(stream)
    deadline = args.deadline if args.deadline is not None else notice_deadline(config.state_dir)
    run_ = CheckpointRun(client, config, args.parallel, progress.finished, progress.started,
                         deadline=deadline)  # fmt: skip
    outcomes = run_.run(targets)
    progress.close()
    report = Report(outcomes, problems, time.monotonic() - started, args.parallel)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(report)
    return EXIT_FAILED if report.failed else EXIT_OK


def outcome_row(outcome: Outcome) -> tuple[str, str, str, str, str]:
    seconds = f"{outcome.seconds:.2f}" if outcome.status in (OK, FAILED) else "-"
    return (outcome.status, outcome.name, seconds, human_bytes(outcome.image_bytes), outcome.reason)


def print_report(report: Report) -> None:
    for problem in report.problems:
        print(f"archctl checkpoint: {problem}", file=sys.stderr)
    if report.outcomes:
        print(format_table(HEADERS, [outcome_row(outcome) for outcome in report.outcomes]))
    else:
        print("no ARCH-enabled containers to checkpoint")
    counts = summary(report.outcomes)
    print(
        f"{counts[OK]} ok, {counts[FAILED]} failed, {counts[NOT_ATTEMPTED]} not attempted, "
        f"{counts[SKIPPED]} skipped in {report.seconds:.2f}s (at most {report.workers} at once)"
    )


class PlainProgress:
    """One line per container as it finishes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def started(self, target: Target) -> None:
        del target

    def finished(self, outcome: Outcome, done: int, total: int) -> None:
        status, name, seconds, size, reason = outcome_row(outcome)
        with self.lock:
            print(f"[{done}/{total}] {status} {name} {seconds}s {size}: {reason}", file=self.stream)
            self.stream.flush()

    def close(self) -> None:
        return


class LiveProgress:
    """One status line on a terminal, rewritten as containers start and finish."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.lock = threading.Lock()
        self.running: set[str] = set()  # names of the containers being checkpointed
        self.counts = dict.fromkeys(STATUSES, 0)
        self.last = ""

    def started(self, target: Target) -> None:
        with self.lock:
            self.running.add(target.name)
            self._draw(f"checkpointing {target.name}")

    def finished(self, outcome: Outcome, done: int, total: int) -> None:
        del total
        with self.lock:
            self.running.discard(outcome.name)
            self.counts[outcome.status] += 1
            if outcome.status == FAILED:
                self._clear()
                print(f"failed {outcome.name}: {outcome.reason}", file=self.stream)
            self._draw(f"{done}/{self.total} done")

    def _draw(self, detail: str) -> None:
        line = (
            f"{self.counts[OK]} ok, {self.counts[FAILED]} failed, "
            f"{self.counts[NOT_ATTEMPTED]} not attempted, {self.counts[SKIPPED]} skipped, "
            f"{len(self.running)} running - {detail}"
        )
        self._clear()
        self.stream.write(line[:200])
        self.stream.flush()
        self.last = line[:200]

    def _clear(self) -> None:
        if self.last:
            self.stream.write("\r" + " " * len(self.last) + "\r")
            self.last = ""

    def close(self) -> None:
        with self.lock:
            self._clear()
            self.stream.flush()
