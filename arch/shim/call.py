"""One intercepted runc call of an opted-in container: its host configuration, its ARCH state,
and how it fails or passes through to the real runc.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from arch import failpoints, host_identity
from arch.config import ConfigError, HostConfig, config_path, load_config
from arch.container.interrupted import OPERATION_FLAG
from arch.container.state import ContainerState, StateError
from arch.log import setup_logging
from arch.runc.runtime import Runc
from arch.shim.passthrough import pass_through, resolve_runc, run_runc

if TYPE_CHECKING:
    from collections.abc import Sequence

    from arch.checkpoint.image.signing import Trust
    from arch.container.bundle import Bundle
    from arch.container.identity import ImageLocation
    from arch.runc.parser import RuncCommand

logger = logging.getLogger("arch")


EXIT_FAILED = 1


def location_of(state: ContainerState | None) -> ImageLocation | None:
    """The image location in the container's state record; None when there is no usable one."""
    from arch.container.identity import ImageLocation

    if state is None:
        return None
    record = state.read_record()
    if record is None:
        return None
    try:
        return ImageLocation.from_dict(record.get("location") or {})
    except ValueError as error:
        logger.warning("ignoring the unusable ARCH state record in %s: %s", state.path, error)
        return None


def one_line(message: str) -> str:
    """A message's first line, plus the first CRIU error line when the message quotes a log
    (criu_log.log_tail puts the errors that can explain a failure first)."""
    from arch.checkpoint.criu_log import ERROR_MARK, without_timestamp

    lines = message.splitlines() or [""]
    cause = next((line for line in lines[1:] if ERROR_MARK in line), None)
    if cause is None:
        return lines[0]
    return f"{lines[0].rstrip(': ')}; CRIU: {without_timestamp(cause)}"


class Call:
    """One intercepted runc invocation and the host configuration it runs under."""

    def __init__(self, command: RuncCommand, args: Sequence[str]) -> None:
        self.command = command
        self.args = list(args)
        self.config_error: ConfigError | None = None
        try:
            self.config = load_config()
        except ConfigError as error:
            self.config_error = error
            self.config = HostConfig(config_path())
        setup_logging(self.config.log_file, self.config.log_level)
        if self.config_error is not None:
            logger.error("%s", self.config_error)
        failpoints.configure(self.config.failpoints)
        host_identity.use_state_dir(self.config.state_dir)

    @property
    def container_id(self) -> str:
        return self.command.container_id or ""

    @property
    def namespace(self) -> str:
        # The namespace is the last component of runc's --root (containerd: .../runc/<ns>);
        # plain runc's default root /run/runc gives "runc".
        return self.command.namespace or "runc"

    @property
    def where(self) -> str:
        """The container, as log lines name it."""
        return f"{self.namespace}/{self.container_id}"

    def state(self) -> ContainerState | None:
        """The container's ARCH state, or None when it has none (it did not opt in)."""
        try:
            state = ContainerState(self.config.state_dir, self.namespace, self.container_id)
        except StateError:
            return None
        return state if state.exists() else None

    def pass_through(self) -> int:
        # With a malformed arch.toml, self.config holds the defaults: runc is found on PATH.
        return pass_through(self.args, self.config)

    def fail(self, message: str) -> int:
        """Refuse the call: one line of reason on stderr (runc's error channel) and in runc's
        log; the whole message (with CRIU's log tail) in ARCH's log."""
        logger.error("%s %s: %s", self.command.subcommand, self.where, message)
        line = f"arch-runc: {one_line(message)}"
        print(line, file=sys.stderr)
        self._report_in_runc_log(line)
        return EXIT_FAILED

    def _report_in_runc_log(self, message: str) -> None:
        """Append the error to runc's --log file as runc would: containerd's shim takes the
        reason for a failed create from there (its stderr is the container's, often lost)."""
        import json
        import time

        path = self.command.get_global("log")
        if not path:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.command.get_global("log-format") == "json":
            line = json.dumps({"level": "error", "msg": message, "time": now})
        else:
            line = f'time="{now}" level=error msg={json.dumps(message)}'
        try:
            with open(path, "a", encoding="utf-8") as log:
                log.write(line + "\n")
        except OSError as error:
            logger.warning("cannot add the error to runc's log %s: %s", path, error)

    def count(
        self,
        operation: str,
        started: float,
        image_bytes: int | None = None,
        failure: str | None = None,
    ) -> None:
        """Add this checkpoint or restore (begun at time.monotonic() `started`) to the metrics."""
        from arch import metrics

        seconds = time.monotonic() - started
        metrics.record(self.config, operation, seconds=seconds, image_bytes=image_bytes,
                       failure=failure)  # fmt: skip

    def runc(self) -> Runc:
        return Runc.for_command(resolve_runc(self.config), self.command, self.config.criu)

    def finish_interrupted(self, state: ContainerState | None) -> None:
        """Clean up after a checkpoint or restore of this container whose arch-runc was killed
        (arch.container.interrupted); cheap when there was none."""
        if state is None or not state.has(OPERATION_FLAG):
            return
        from arch.container.interrupted import finish_interrupted

        finish_interrupted(state, resolve_runc(self.config), self.config.criu)

    def run_through(self) -> int:
        """Run the call itself through the real runc as a child, on this process's stdio."""
        return run_runc(self.args, self.config)


def opted_in_bundle(command: RuncCommand) -> Bundle | None:
    """The bundle of a create whose container opted in; None when the create is runc's alone
    (not opted in, or a config.json runc's decoder refuses: runc reports that itself)."""
    from arch.container.bundle import Bundle, BundleError
    from arch.container.identity import opted_in

    try:
        bundle = Bundle.load(command.get("bundle") or os.getcwd())
    except BundleError:
        return None
    return bundle if command.container_id and opted_in(bundle.env) else None


def image_key(config: HostConfig) -> bytes | None:
    """The image signing key of arch.toml's image_key_file; None when images are unsigned."""
    from arch.checkpoint.image.signing import load_key

    return None if config.image_key_file is None else load_key(config.image_key_file)


def image_trust(config: HostConfig, location: ImageLocation) -> Trust:
    """The signatures a restore of the image at `location` accepts (ImageKeyError when a key
    file cannot be used): the signing key's and image_verify_key_files', bound to the image's
    namespace and checkpoint id (a pool member's: the pool)."""
    from arch.checkpoint.image.signing import Trust, load_key

    keys = tuple(load_key(key_file) for key_file in config.verify_key_files)
    unsigned = config.unsigned_images == "allow"
    return Trust(keys, unsigned, location.namespace, location.checkpoint_id)


def skip_once(call: Call, flag: str) -> int:
    """A no-op when ARCH already did this call's work (restored / checkpointed and stopped)."""
    state = call.state()
    if state is not None and state.take(flag) is not None:
        logger.info("%s %s: no-op (%s)", call.command.subcommand, call.where, flag)
        return 0
    return call.pass_through()
