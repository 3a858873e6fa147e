"""kill of an opted-in container while a Spot interruption notice is active: a stop signal
becomes a checkpoint.
"""

from __future__ import annotations

import logging

from arch.container.state import CHECKPOINTED
from arch.shim.call import Call, location_of
from arch.shim.checkpoint import checkpoint_and_stop, exclusive_checkpoint

logger = logging.getLogger("arch")


# The signals that stop a container (Docker's and ECS's default stop signal, SIGKILL after the
# timeout, and the usual interactive ones), by name and by number as runc accepts them.
STOP_SIGNALS = frozenset({"TERM", "KILL", "INT", "QUIT", "15", "9", "2", "3"})


def is_stop_signal(signal_argument: list[str]) -> bool:
    """runc kill's optional signal argument (default SIGTERM) names a stop signal."""
    name = (signal_argument[0] if signal_argument else "TERM").upper()
    return (name[3:] if name.startswith("SIG") else name) in STOP_SIGNALS


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
    if (
        state is None
        or location is None
        or not notice_active(call.config.state_dir)
        or not is_stop_signal(call.command.positionals[1:2])
        or call.config_error is not None
    ):
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
