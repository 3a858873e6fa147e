"""What a Spot notice does to an ARCH job on each platform (arch.toml `platform`).

- `ecs` (and `none`): the job's container ends once its image is published. The ECS agent and
  the service scheduler replace the task elsewhere (a service), or the task just stops (a
  standalone task; a new run with the same ARCH_CHECKPOINT_ID restores).
- `batch`: the job is checkpointed and then *held*, frozen, not exited. AWS Batch decides about
  a retry from the attempt's status reason and exit code ("Automated job retries",
  https://docs.aws.amazon.com/batch/latest/userguide/job_retries.html): a container that exits
  137 two minutes before the host goes reads "Essential container in task exited", which the
  documented retry rule (`onStatusReason: "Host EC2*"`) does not match, and the job fails. A job
  still RUNNING when the host is reclaimed reads "Host EC2 (instance i-...) terminated.", which
  it retries; the retry (same AWS_BATCH_JOB_ID) restores the image on another host. If the host
  is still there well after the notice's time (a stop/hibernate notice, a withdrawn one),
  spot-watch thaws the held jobs and they go on; their images stay until they finish.

State flags kept per container (arch.container.state), imported by arch-runc's hot paths: keep
this module free of heavy imports.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from arch.container.state import ContainerState

ECS, BATCH, NONE = "ecs", "batch", "none"
# Checkpointed during a notice on a Batch host and kept frozen (the image was published).
HELD = "held"
# A stop signal reached the container (arch-runc's native front or Python wrote it at `kill`);
# its mtime is when.
STOP_SIGNALLED = "stop_signalled"
# Created while this host's notice was active: it neither restored nor claimed an image, and
# its state must never replace one (no publication, no removal at exit).
NOTICE_FRESH = "notice_fresh"
# A stop this long before spot-watch's marker appears counts as a stop during the notice: the
# ECS agent (ECS_ENABLE_SPOT_INSTANCE_DRAINING, "Amazon ECS container agent configuration") and
# spot-watch each poll instance metadata and either may see the notice first; AWS advises
# checking "every 5 seconds" ("Spot Instance interruption notices", EC2 User Guide), so a
# watcher that follows that advice writes its marker at most that long after the agent saw the
# notice (spot-watch polls every second, plus its start and its HTTP round trip under load).
NOTICE_RACE_SECONDS = 5.0
SEEN_AT_RESOLUTION = 1.0


# The signals that stop a container (Docker's and ECS's default stop signal, SIGKILL after the
# timeout, and the usual interactive ones), by name and by number as runc accepts them. Keep in
# sync with stop_signals in launcher.c.
STOP_SIGNALS = frozenset({"TERM", "KILL", "INT", "QUIT", "15", "9", "2", "3"})


def is_stop_signal(signal_argument: list[str]) -> bool:
    """runc kill's optional signal argument (default SIGTERM) names a stop signal."""
    name = (signal_argument[0] if signal_argument else "TERM").upper()
    return (name[3:] if name.startswith("SIG") else name) in STOP_SIGNALS


def note_stop_signal_at(state_dir: str, namespace: str, container_id: str) -> None:
    """Leave STOP_SIGNALLED (now) in the container's state, if it has ARCH state: what the
    native front does for a kill outside a notice (no lock: a flag file, created or touched)."""
    if not container_id or "/" in container_id or container_id in (".", ".."):
        return
    if "/" in namespace or namespace in ("", ".", ".."):
        return
    path = os.path.join(state_dir, namespace, container_id, STOP_SIGNALLED)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return  # no ARCH state: nothing to note
    try:
        os.utime(fd)
    finally:
        os.close(fd)


def holds(platform: str, pool_member: bool) -> bool:
    """Whether a checkpoint during a notice keeps the job frozen instead of ending it (Batch
    jobs; pool members are replicas of a service and always end)."""
    return platform == BATCH and not pool_member


def stop_signalled_at(state: ContainerState) -> float | None:
    """When a stop signal reached the container (epoch seconds), None when none did."""
    try:
        return os.stat(os.path.join(state.path, STOP_SIGNALLED)).st_mtime
    except OSError:
        return None


def stopped_for_a_notice(
    state: ContainerState,
    notice_seen_at: Callable[[], float | None],
    race_seconds: float = NOTICE_RACE_SECONDS,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Whether the container's exit follows a stop that belongs to a Spot notice: a stop signal
    reached it while the notice was active, or at most `race_seconds` before spot-watch saw the
    notice (waited for here, only as long as that window lasts). `notice_seen_at` is when
    spot-watch saw the notice (None: no notice). A stop from before that window, one the job
    outlived, is no part of the notice: its later exit 0 is a finish.

    The window is the ECS agent's (see NOTICE_RACE_SECONDS): pass 0 where no agent drains the
    host on a notice, so that an ordinary stop is never held up here."""
    signalled = stop_signalled_at(state)
    if signalled is None:
        return False
    while True:
        seen_at = notice_seen_at()
        if seen_at is not None:
            # seen_at is recorded to the second
            return signalled >= seen_at - race_seconds - SEEN_AT_RESOLUTION
        left = signalled + race_seconds - clock()
        if left <= 0:
            return False
        sleep(min(left, 0.2))


def thaw(state: ContainerState, runc: str) -> None:
    """End a hold: the job goes on (runc resume, as the held job's runc call had it) and is an
    ordinary running job again: its image (the one published at the hold) stays until it
    finishes, and is removed at an exit 0 like any image it was created against. OSError or
    subprocess.CalledProcessError when runc cannot resume it; ValueError for an unreadable
    hold record."""
    import json
    import subprocess

    from arch.container.state import CHECKPOINTED

    document = json.loads(state.get(HELD) or "{}")
    global_args = document.get("runc_global_args")
    if not isinstance(global_args, list) or not all(isinstance(a, str) for a in global_args):
        raise ValueError(f"{state.path}: hold record without runc's options")
    subprocess.run([runc, *global_args, "resume", state.container_id], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60)  # fmt: skip
    identity = document.get("image_identity")

    def adopt_image(record: dict[str, object]) -> None:
        record["image_identity"] = identity if isinstance(identity, str) else None

    state.update_record(adopt_image)
    state.clear(CHECKPOINTED)
    state.clear(HELD)
