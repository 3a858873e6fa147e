"""install / verify / checkpoint on many hosts over SSH, in parallel, one result per host.

Each host runs in its own thread with its own Fabric connection; a host that cannot be reached,
refuses the key or fails a command gets a result saying so, and the other hosts go on.
`install` pushes the wheel and runs the EC2 userdata bootstrap (rendered for that wheel) on the
host: the same script, the same bundled role, the same final `archctl verify` as on EC2.
"""

from __future__ import annotations

import io
import logging
import math
import shlex
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from arch.delivery.userdata import PackageSource, UserdataOptions, render_userdata
from arch.remote.known_hosts import (
    HostKeyRefused,
    HostKeyTrust,
    KnownHostsError,
    describe_changed_key,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from arch.remote.hosts import HostSpec

ARCHCTL = "/usr/local/bin/archctl"
INSTALL_HINT = "pip install 'arch[delivery]'"
OUTPUT_TAIL_LINES = 8
# timeout(1): TERM when the time is up, KILL this much later; it exits 124 when it ended the
# command (coreutils' documented status).
KILL_AFTER_SECONDS = 10
TIMEOUT_EXIT_STATUS = 124
# The client gives up this long after the host should have ended the command.
CLIENT_GRACE_SECONDS = 5
CLEANUP_SECONDS = 30
# What paramiko says when the SSH handshake ended before authentication could start.
NO_SESSION = "No existing session"

log = logging.getLogger(__name__)


class RemoteUnavailable(Exception):
    """fabric is not installed."""


class StepFailed(Exception):
    """A command on the host failed; the message says which and how."""


class StepTimedOut(StepFailed):
    """The host's --timeout ran out during a step."""


@dataclass(frozen=True)
class SshOptions:
    trust: HostKeyTrust
    identity_file: str | None = None
    # TCP connect, SSH banner and authentication, each (and never more than `timeout`).
    connect_timeout: float = 15.0
    # The most one host may take, from connecting to the end of its last command.
    timeout: float = 300.0


class HostDeadline:
    """One host's time budget: every command gets what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.ends - time.monotonic()


@dataclass(frozen=True)
class HostResult:
    host: str
    ok: bool
    step: str
    detail: str
    seconds: float


@dataclass
class InstallPlan:
    """What `remote install` delivers: a wheel and the userdata options around it."""

    wheel: Path
    role_variables: dict[str, str] = field(default_factory=dict)
    ecs_cluster: str = ""
    spot_watch: bool = True

    def script_for(self, remote_wheel: str) -> str:
        options = UserdataOptions(
            package=PackageSource.parse(remote_wheel),
            ecs_cluster=self.ecs_cluster,
            spot_watch=self.spot_watch,
            role_variables=self.role_variables,
            configure_ecs_agent=bool(self.ecs_cluster),
        )
        return render_userdata(options)


class HostSession:
    """One host's connection and the step in progress (named in the result when it fails)."""

    def __init__(self, spec: HostSpec, options: SshOptions, deadline: HostDeadline) -> None:
        self.spec = spec
        self.step = "connect"
        self.deadline = deadline
        self.connection = _connect(spec, options, deadline)
        self.sudo = ""

    def begin(self, step: str) -> None:
        self.step = step

    def run(
        self, command: str, *, privileged: bool = True, budget: float | None = None
    ) -> Any:
        """Run `command` (as root: through `sudo -n` unless the SSH user is root) within the
        host's remaining time (or `budget` seconds); its result when it exits 0, else StepFailed
        with the exit status and the output's tail, or StepTimedOut.

        The host ends the command itself (timeout(1) from coreutils, TERM then KILL to its
        process group), so nothing is left running there; the client waits a little longer
        and gives up on its own if the host does not answer at all."""
        from invoke.exceptions import CommandTimedOut

        seconds = self.deadline.remaining() if budget is None else budget
        if seconds < 1:
            raise StepTimedOut(
                f"no time left for `{command}` (--timeout {self.deadline.seconds:g}s)"
            )
        limit = math.floor(seconds)
        prefix = self.sudo if privileged else ""
        wrapped = f"{prefix}timeout -k {KILL_AFTER_SECONDS} {limit} {command}"
        try:
            result = self.connection.run(
                wrapped,
                hide=True,
                warn=True,
                in_stream=False,
                pty=False,
                timeout=limit + KILL_AFTER_SECONDS + CLIENT_GRACE_SECONDS,
            )
        except CommandTimedOut:
            raise StepTimedOut(
                f"`{command}` timed out: no answer from the host within {limit}s "
                f"(+{KILL_AFTER_SECONDS + CLIENT_GRACE_SECONDS}s grace)"
            ) from None
        if result.exited == TIMEOUT_EXIT_STATUS:
            raise StepTimedOut(
                f"`{command}` timed out after {limit}s (--timeout {self.deadline.seconds:g}s); "
                f"ended on the host; output: {tail(result)}"
            )
        if result.exited != 0:
            raise StepFailed(f"`{command}` exited {result.exited}: {tail(result)}")
        return result

    def put(self, local: str | IO[bytes], remote: str) -> None:
        """Upload over SFTP; a transfer that stalls past the deadline fails with socket.timeout."""
        remaining = self.deadline.remaining()
        if remaining < 1:
            raise StepTimedOut(f"no time left to upload {remote}")
        self.connection.sftp().get_channel().settimeout(remaining)
        self.connection.put(local, remote)

    def open(self) -> None:
        """Connect and learn whether commands need sudo."""
        uid = self.run("id -u", privileged=False).stdout.strip()
        self.sudo = "" if uid == "0" else "sudo -n "

    def close(self) -> None:
        self.connection.close()


def tail(result: Any) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    return " | ".join(line.strip() for line in lines[-OUTPUT_TAIL_LINES:]) or "no output"


def install(session: HostSession, plan: InstallPlan) -> str:
    session.begin("upload")
    remote_dir = session.run("mktemp -d /tmp/arch-remote.XXXXXXXX", privileged=False)
    remote_dir = remote_dir.stdout.strip()
    try:
        remote_wheel = f"{remote_dir}/{plan.wheel.name}"
        session.put(str(plan.wheel), remote_wheel)
        script = plan.script_for(remote_wheel)
        session.put(io.BytesIO(script.encode()), f"{remote_dir}/arch-bootstrap.sh")
        session.begin("install")
        session.run(f"bash {shlex.quote(remote_dir)}/arch-bootstrap.sh")
    finally:
        # Its own small budget: the upload directory goes even when the install used up the
        # host's time (a failure here would hide the install's own, so it is only reported
        # when the install itself passed).
        _remove_upload_dir(session, remote_dir)
    return f"installed {plan.wheel.name}; archctl verify passed"


def _remove_upload_dir(session: HostSession, remote_dir: str) -> None:
    command = f"rm -rf {shlex.quote(remote_dir)}"
    if sys.exc_info()[0] is None:
        session.run(command, privileged=False, budget=CLEANUP_SECONDS)
        return
    try:
        session.run(command, privileged=False, budget=CLEANUP_SECONDS)
    except StepFailed as cleanup_error:
        log.warning("%s: could not remove %s: %s", session.spec.text, remote_dir, cleanup_error)


def verify(session: HostSession) -> str:
    session.begin("verify")
    result = session.run(f"{ARCHCTL} verify")
    checks = [line for line in result.stdout.splitlines() if line.strip()]
    return f"archctl verify passed ({len(checks)} checks)"


def checkpoint(session: HostSession) -> str:
    session.begin("checkpoint")
    result = session.run(f"{ARCHCTL} checkpoint --all")
    return tail(result)


def run_on_hosts(
    specs: Sequence[HostSpec],
    operation: Callable[[HostSession], str],
    options: SshOptions,
    on_result: Callable[[HostResult], None] | None = None,
    max_parallel: int = 16,
) -> list[HostResult]:
    """`operation` on every host in parallel; results in the order of `specs`."""

    def one(spec: HostSpec) -> HostResult:
        result = _run_one(spec, operation, options)
        if on_result is not None:
            on_result(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(specs)))) as pool:
        return list(pool.map(one, specs))


def _run_one(
    spec: HostSpec, operation: Callable[[HostSession], str], options: SshOptions
) -> HostResult:
    started = time.monotonic()
    deadline = HostDeadline(options.timeout)
    session: HostSession | None = None
    try:
        session = HostSession(spec, options, deadline)
        session.open()
        detail = operation(session)
        return HostResult(spec.text, True, session.step, detail, time.monotonic() - started)
    except (RemoteUnavailable, KnownHostsError):
        raise  # the same for every host: the caller reports it once
    except StepFailed as error:
        step = session.step if session is not None else "connect"
        return HostResult(spec.text, False, step, str(error), time.monotonic() - started)
    except Exception as error:  # every SSH/network failure becomes this host's result
        step = session.step if session is not None else "connect"
        detail = describe_ssh_error(error, spec, options)
        return HostResult(spec.text, False, step, detail, time.monotonic() - started)
    finally:
        if session is not None:
            session.close()


def describe_ssh_error(error: BaseException, spec: HostSpec, options: SshOptions) -> str:
    """A plain sentence for what went wrong talking to the host."""
    import paramiko

    target = f"{spec.user + '@' if spec.user else ''}{spec.host}:{spec.port or 22}"
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        return f"cannot connect to {target}: connection refused (no SSH server listening?)"
    if isinstance(error, paramiko.AuthenticationException):
        key = f" with key {options.identity_file}" if options.identity_file else ""
        return f"{target} refused the login{key}: {error}"
    if isinstance(error, paramiko.BadHostKeyException):
        return describe_changed_key(target, error)
    if isinstance(error, HostKeyRefused):
        return f"{target}: {error}"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return f"{target}: timed out (connect timeout {options.connect_timeout:g}s)"
    if isinstance(error, paramiko.SSHException) and "banner" in str(error):
        return (
            f"{target}: no SSH banner within {options.connect_timeout:g}s "
            f"(connected, but the server does not speak SSH or hangs): {error}"
        )
    if isinstance(error, paramiko.SSHException) and str(error) == NO_SESSION:
        # The transport thread ended the handshake before _open could read why (a race with
        # paramiko's own read of the cause): the same case seen from the client's side.
        return (
            f"{target}: no SSH banner within {options.connect_timeout:g}s, or the handshake "
            f"failed (connected, but the server does not speak SSH or hangs): {error}"
        )
    if isinstance(error, socket.gaierror):
        return f"cannot resolve {spec.host}: {error.strerror or error}"
    if isinstance(error, OSError):
        return f"{target}: {error.strerror or error}"
    if isinstance(error, paramiko.SSHException):
        return f"{target}: SSH error: {error}"
    return f"{target}: {type(error).__name__}: {error}"


def _connect(spec: HostSpec, options: SshOptions, deadline: HostDeadline) -> Any:
    try:
        from fabric import Connection
    except ImportError as error:
        raise RemoteUnavailable(f"archctl remote needs fabric ({INSTALL_HINT}): {error}") from None
    # Fabric turns connect_timeout into an int: never less than 1 s, never past the deadline.
    seconds = max(1, math.ceil(min(options.connect_timeout, deadline.remaining())))
    connect_kwargs: dict[str, Any] = {
        "banner_timeout": seconds,
        "auth_timeout": seconds,
        "channel_timeout": seconds,
    }
    if options.identity_file:
        # Only this key: a refused key must not be rescued by an agent's or ~/.ssh's keys.
        connect_kwargs.update(
            key_filename=[options.identity_file], look_for_keys=False, allow_agent=False
        )
    connection = Connection(
        host=spec.host,
        user=spec.user,
        port=spec.port,
        connect_timeout=seconds,
        connect_kwargs=connect_kwargs,
    )
    # Fabric's own default accepts any host key (AutoAddPolicy): replaced, before connecting.
    options.trust.apply(connection.client)
    _open(connection)
    return connection


def _open(connection: Any) -> None:
    """Connect now, raising the transport's own error: when the SSH handshake fails in
    paramiko's transport thread (no banner, a protocol error), SSHClient.connect only says
    "No existing session" and keeps the cause on the transport."""
    import paramiko

    try:
        connection.open()
    except paramiko.SSHException as error:
        transport = connection.client.get_transport()
        cause = transport.get_exception() if transport is not None else None
        if isinstance(cause, Exception) and cause is not error:
            raise cause from error
        raise
