"""kill of an opted-in container while a Spot interruption notice is active: a stop signal
becomes a checkpoint.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from arch.container.state import CHECKPOINTED
from arch.shim import notice_rules
from arch.shim.call import Call, location_of
from arch.shim.checkpoint import checkpoint_and_stop, exclusive_checkpoint
from arch.spot.platform import HELD, STOP_SIGNALS, is_stop_signal

__all__ = ["STOP_SIGNALS", "handle_kill", "is_stop_signal"]

if TYPE_CHECKING:
    from arch.container.state import ContainerState

logger = logging.getLogger("arch")


def handle_kill(call: Call) -> int:
    """While a Spot notice is active, the stop of an ARCH container becomes a checkpoint.

    Docker and the ECS agent stop a container with its stop signal, then SIGKILL: either
    arrives here as `kill <id> <signal>` from containerd's shim. Checkpointing instead (the
    processes are killed once the image is published) means that a stop racing spot-watch's
    own checkpoint run still ends in an image. The kill returns only when that is done, so the
    caller's stop timeout starts after it. If the checkpoint fails, the signal is delivered as
    asked: the stop must still stop the container.
    """
    from arch.checkpoint.checkpoint_job import CheckpointFailed
    from arch.runc.parser import parse
    from arch.spot.notice import notice_active

    state = call.state()
    location = location_of(state)
    stop = is_stop_signal(call.command.positionals[1:2])
    if state is not None and stop:
        notice_rules.note_stop_signal(state)
    if state is not None and stop and state.has(HELD):
        return _stop_held(call, state)
    if (
        state is None
        or location is None
        or not notice_active(call.config.state_dir)
        or not stop
        or call.config_error is not None
    ):
        return call.pass_through()
    refusal = notice_rules.checkpoint_refusal(state)
    if refusal is not None:
        logger.info("kill %s during a Spot notice: not checkpointed (%s)", call.where, refusal)
        return call.pass_through()
    with exclusive_checkpoint(state):
        if state.has(CHECKPOINTED):
            logger.info("kill %s: already checkpointed during the Spot notice", call.where)
            return 0
        globals_ = [token for option in call.command.global_options for token in option.tokens]
        checkpoint = parse([*globals_, "checkpoint", call.container_id])
        try:
            published = checkpoint_and_stop(call, state, location, checkpoint)
        except CheckpointFailed as error:
            logger.error("kill %s during a Spot notice: checkpoint failed, delivering the "
                         "signal instead: %s", call.where, error)  # fmt: skip
            return call.pass_through()
    logger.info("kill %s during a Spot notice: checkpointed instead, image published at %s",
                call.where, published)  # fmt: skip
    return 0


def _stop_held(call: Call, state: ContainerState) -> int:
    """A stop of a job held frozen (its image is published): the signal is delivered and the
    job thawed to act on it; its exit is still the checkpoint's (the image stays)."""
    import subprocess

    from arch.shim.passthrough import resolve_runc

    status = call.run_through()
    try:
        subprocess.run([resolve_runc(call.config), *call.runc().global_args, "resume",
                        call.container_id], check=True, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        logger.error("kill %s: signal delivered to the held job, but it was not thawed: %s",
                     call.where, error)  # fmt: skip
    state.clear(HELD)
    logger.info("kill %s: the held job gets the signal and is thawed; its image stays",
                call.where)  # fmt: skip
    return status
