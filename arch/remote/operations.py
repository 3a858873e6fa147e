"""install / verify / checkpoint on many hosts over SSH, in parallel, one result per host.

Each host runs in its own thread with its own Fabric connection; a host that cannot be reached,
refuses the key or fails a command gets a result saying so, and the other hosts go on.
`install` pushes the wheel and runs the EC2 userdata bootstrap (rendered for that wheel) on the
host: the same script, the same bundled role, the same final `archctl verify` as on EC2.
"""

from __future__ import annotations

import io
import shlex
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from arch.delivery.userdata import PackageSource, UserdataOptions, render_userdata

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from arch.remote.hosts import HostSpec

ARCHCTL = "/usr/local/bin/archctl"
INSTALL_HINT = "pip install 'arch[delivery]'"
OUTPUT_TAIL_LINES = 8


class RemoteUnavailable(Exception):
    """fabric is not installed."""


class StepFailed(Exception):
    """A command on the host failed; the message says which and how."""


@dataclass(frozen=True)
class SshOptions:
    identity_file: str | None = None
    connect_timeout: float = 15.0
    # Refuse hosts whose key is not in known_hosts (default: accept and do not record, Fabric's
    # own default).
    strict_host_keys: bool = False


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

    def __init__(self, spec: HostSpec, options: SshOptions) -> None:
        self.spec = spec
        self.step = "connect"
        self.connection = _connect(spec, options)
        self.sudo = ""

    def begin(self, step: str) -> None:
        self.step = step

    def run(self, command: str, *, privileged: bool = True) -> Any:
        """Run `command` (as root: through `sudo -n` unless the SSH user is root); its result
        when it exits 0, else StepFailed with the exit status and the output's tail."""
        prefix = self.sudo if privileged else ""
        result = self.connection.run(
            prefix + command, hide=True, warn=True, in_stream=False, pty=False
        )
        if result.exited != 0:
            raise StepFailed(f"`{command}` exited {result.exited}: {tail(result)}")
        return result

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
        session.connection.put(str(plan.wheel), remote_wheel)
        script = plan.script_for(remote_wheel)
        session.connection.put(io.BytesIO(script.encode()), f"{remote_dir}/arch-bootstrap.sh")
        session.begin("install")
        session.run(f"bash {shlex.quote(remote_dir)}/arch-bootstrap.sh")
    finally:
        session.run(f"rm -rf {shlex.quote(remote_dir)}", privileged=False)
    return f"installed {plan.wheel.name}; archctl verify passed"


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
    session: HostSession | None = None
    step = "connect"
    try:
        session = HostSession(spec, options)
        session.open()
        detail = operation(session)
        return HostResult(spec.text, True, session.step, detail, time.monotonic() - started)
    except StepFailed as error:
        step = session.step if session is not None else step
        return HostResult(spec.text, False, step, str(error), time.monotonic() - started)
    except Exception as error:  # every SSH/network failure becomes this host's result
        step = session.step if session is not None else step
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
        return f"{target}: host key does not match known_hosts: {error}"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return f"cannot connect to {target}: timed out after {options.connect_timeout:g}s"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve {spec.host}: {error.strerror or error}"
    if isinstance(error, OSError):
        return f"{target}: {error.strerror or error}"
    if isinstance(error, paramiko.SSHException):
        return f"{target}: SSH error: {error}"
    return f"{target}: {type(error).__name__}: {error}"


def _connect(spec: HostSpec, options: SshOptions) -> Any:
    try:
        import paramiko
        from fabric import Connection
    except ImportError as error:
        raise RemoteUnavailable(f"archctl remote needs fabric ({INSTALL_HINT}): {error}") from None
    connect_kwargs: dict[str, Any] = {
        "banner_timeout": options.connect_timeout,
        "auth_timeout": options.connect_timeout,
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
        connect_timeout=options.connect_timeout,
        connect_kwargs=connect_kwargs,
    )
    if options.strict_host_keys:
        connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return connection
