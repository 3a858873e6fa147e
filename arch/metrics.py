"""ARCH's Prometheus metrics: a textfile-collector file (`metrics_file` in arch.toml).

node_exporter's textfile collector reads `*.prom` files from its directory; this module keeps
one such file with ARCH's counters. Many arch-runc processes (one per runc call) update it at
the same time, so an update takes an exclusive flock on a hidden lock file next to it, reads
the current samples back from the file, changes them, writes a hidden temporary file and
renames it over the old one: the collector never sees a half-written file, and no update is
lost. Only intercepted operations record anything (checkpoint, restore, spot notices), never
the pass-through path. A failure to write metrics is logged and never fails the operation.

Metrics (all prefixed `arch_`):
- checkpoints_total{result}, restores_total{result}            result: ok | failed
- failures_total{operation, reason}                             reason: see REASONS
- checkpoint_duration_seconds / restore_duration_seconds        histograms
- checkpoint_bytes_total / restore_bytes_total, last_checkpoint_bytes
- spot_notice_seen_timestamp_seconds{action}, spot_notice_action_timestamp_seconds{action}
- metrics_updated_timestamp_seconds
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from arch.config import HostConfig

logger = logging.getLogger("arch")

CHECKPOINT, RESTORE = "checkpoint", "restore"
OPERATIONS = (CHECKPOINT, RESTORE)
# Failure reasons: a small fixed set, so that label values stay bounded.
REASONS = (
    "container_state",  # not running/paused, cannot be frozen or stopped
    "criu",  # runc/CRIU dump or restore failed
    "filesystem",  # the overlay changes could not be captured or applied
    "storage",  # the image could not be written, published or read
    "invalid_image",  # the image failed validation
    "host_mismatch",  # CPU features, mounts or versions this host lacks
    "job_mismatch",  # the image was taken from another job (arch.checkpoint.image.job_identity)
    "credentials",  # its processes would hold more than config.json grants (image.credentials)
    "timeout",  # cut off by checkpoint_timeout / restore_timeout (runc and CRIU stopped)
    "other",
)
SPOT_ACTIONS = ("terminate", "stop", "hibernate", "rebalance", "other")
DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
FILE_MODE = 0o644  # node_exporter runs unprivileged; the file holds counts, no secrets

_HELP = {
    "arch_checkpoints_total": ("counter", "ARCH checkpoints by result."),
    "arch_restores_total": ("counter", "ARCH restores (creates from an image) by result."),
    "arch_failures_total": ("counter", "Failed ARCH checkpoints and restores by reason."),
    "arch_checkpoint_duration_seconds": ("histogram", "Duration of successful checkpoints."),
    "arch_restore_duration_seconds": ("histogram", "Duration of successful restores."),
    "arch_checkpoint_bytes_total": ("counter", "Bytes of images published by checkpoints."),
    "arch_restore_bytes_total": ("counter", "Bytes of images restored."),
    "arch_last_checkpoint_bytes": ("gauge", "Size of the last published image."),
    "arch_spot_notice_seen_timestamp_seconds": (
        "gauge", "When the last spot interruption notice was seen, by action."),
    "arch_spot_notice_action_timestamp_seconds": (
        "gauge", "When the last notice's action takes effect (its `time`), by action."),
    "arch_metrics_updated_timestamp_seconds": ("gauge", "When ARCH last updated this file."),
}  # fmt: skip
_SAMPLE = re.compile(r"^(?P<name>arch_[a-z_]+)(?P<labels>\{[^}]*\})? (?P<value>\S+)$")

Samples = dict[str, float]  # "name{labels}" -> value


def record(
    config: HostConfig,
    operation: str,
    *,
    seconds: float,
    image_bytes: int | None = None,
    failure: str | None = None,
) -> None:
    """One checkpoint or restore (OPERATIONS): successful when `failure` (REASONS) is None."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")

    def change(samples: Samples) -> None:
        result = "ok" if failure is None else "failed"
        _add(samples, f"arch_{operation}s_total{_label('result', result)}", 1)
        if failure is not None:
            reason = failure if failure in REASONS else "other"
            _add(samples, f'arch_failures_total{{operation="{operation}",reason="{reason}"}}', 1)
            return
        _observe(samples, f"arch_{operation}_duration_seconds", seconds)
        if image_bytes is not None:
            _add(samples, f"arch_{operation}_bytes_total", image_bytes)
            if operation == CHECKPOINT:
                samples["arch_last_checkpoint_bytes"] = image_bytes

    update(config, change)


def record_spot_notice(
    config: HostConfig, action: str, action_time: float | None, seen_at: float | None = None
) -> None:
    """A spot interruption notice (or rebalance recommendation) seen on instance metadata."""
    label = _label("action", action if action in SPOT_ACTIONS else "other")
    seen = time.time() if seen_at is None else seen_at

    def change(samples: Samples) -> None:
        samples[f"arch_spot_notice_seen_timestamp_seconds{label}"] = seen
        if action_time is not None:
            samples[f"arch_spot_notice_action_timestamp_seconds{label}"] = action_time

    update(config, change)


def update(config: HostConfig, change: Callable[[Samples], None]) -> bool:
    """Apply `change` to the file's samples under the lock; False (logged) when not written."""
    path = config.metrics_file
    if not path:
        return False
    directory, name = os.path.split(path)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        lock_fd = os.open(
            os.path.join(directory, f".{name}.lock"),
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            samples = read_samples(path)
            change(samples)
            samples["arch_metrics_updated_timestamp_seconds"] = time.time()
            _replace(path, render(samples))
        finally:
            os.close(lock_fd)  # releases the lock
    except OSError as error:
        logger.warning("metrics not written to %s: %s", path, error)
        return False
    return True


def read_samples(path: str) -> Samples:
    """The samples of a file this module wrote ({} when absent); foreign lines are dropped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as metrics:
            lines = metrics.read().splitlines()
    except FileNotFoundError:
        return {}
    samples: Samples = {}
    for line in lines:
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            samples[match["name"] + (match["labels"] or "")] = float(match["value"])
        except ValueError:
            continue
    return samples


def render(samples: Samples) -> str:
    """The text exposition format, one HELP/TYPE block per metric family."""
    families: dict[str, list[str]] = {}
    for key in sorted(samples, key=_sort_key):
        families.setdefault(_family(key), []).append(f"{key} {_number(samples[key])}")
    lines = []
    for family, rows in families.items():
        kind, text = _HELP.get(family, ("untyped", ""))
        lines += [f"# HELP {family} {text}", f"# TYPE {family} {kind}", *rows]
    return "\n".join(lines) + "\n"


def _observe(samples: Samples, histogram: str, value: float) -> None:
    for bound in DURATION_BUCKETS:
        if value <= bound:
            _add(samples, f'{histogram}_bucket{{le="{_number(bound)}"}}', 1)
        else:
            samples.setdefault(f'{histogram}_bucket{{le="{_number(bound)}"}}', 0)
    _add(samples, f'{histogram}_bucket{{le="+Inf"}}', 1)
    _add(samples, f"{histogram}_sum", value)
    _add(samples, f"{histogram}_count", 1)


def _add(samples: Samples, key: str, amount: float) -> None:
    samples[key] = samples.get(key, 0.0) + amount


def _label(name: str, value: str) -> str:
    return f'{{{name}="{value}"}}'


def _family(key: str) -> str:
    name = key.split("{", 1)[0]
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and _HELP.get(base, ("",))[0] == "histogram":
            return base
    return name


def _sort_key(key: str) -> tuple[str, int, float, str]:
    """Families together; a histogram's buckets in ascending order, then _sum and _count."""
    name = key.split("{", 1)[0]
    if name.endswith("_bucket"):
        bound = key.rsplit('le="', 1)[-1].rstrip('"}')
        return (_family(key), 0, float("inf") if bound == "+Inf" else float(bound), key)
    return (_family(key), 2 if name.endswith("_count") else 1, 0.0, key)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def _replace(path: str, text: str) -> None:
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 FILE_MODE)  # fmt: skip
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as output:
            output.write(text)
            os.fchmod(output.fileno(), FILE_MODE)
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
