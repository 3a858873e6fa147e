"""Host checks behind `archctl verify`: is this host a working ARCH appliance?

Each check is a small function returning a CheckResult; `run_checks` runs them in order. A check
says `fail` only for what breaks ARCH; `warn` for what an operator should know about but that
does not stop containers (e.g. dockerd installed but not running on a host without systemd).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from arch.appliance.atomic_write import FileEditError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from arch.config import HostConfig

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
MIN_RUNC = (1, 1)
CRIU_SEARCH_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin")
COMMAND_TIMEOUT = 60
PROC_ROOT = "/proc"
ARCHCTL_NAME = "archctl"
WATCH_EXITS = "watch-exits"
ADDRESS_OPTION = "--address"
# How long verify waits for a running watcher process of this containerd to announce itself.
ANNOUNCE_WAIT_SECONDS = 15.0
ANNOUNCE_POLL_SECONDS = 0.1
EXIT_WATCHER_MISSING = (
    "not running: images of containers that exit 0 are never removed (start arch-exit-watch)"
)


class CheckResult(NamedTuple):
    name: str
    status: str
    detail: str


class VerifyTarget(NamedTuple):
    """What `archctl verify` looks at; every path can be overridden for non-default hosts."""

    config: HostConfig
    arch_runc: str
    containerd_config: str
    containerd_address: str
    docker_config: str
    docker_socket: str


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run a command, returning (exit status, stdout+stderr); a missing binary is status 127."""
    try:
        completed = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: timed out after {COMMAND_TIMEOUT}s"
    return completed.returncode, completed.stdout


def parse_version(text: str) -> tuple[int, ...]:
    """The first dotted number of a `--version` text: 'runc version 1.1.5+ds1' -> (1, 1, 5)."""
    for word in text.split():
        digits = word.split("+")[0].split("-")[0].split(".")
        if len(digits) >= 2 and all(part.isdigit() for part in digits):
            return tuple(int(part) for part in digits)
    return ()


def find_criu() -> str | None:
    found = shutil.which("criu")
    if found:
        return found
    for directory in CRIU_SEARCH_DIRS:
        candidate = os.path.join(directory, "criu")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def check_config(target: VerifyTarget) -> CheckResult:
    config = target.config
    where = config.path if os.path.exists(config.path) else f"{config.path} (absent: defaults)"
    return CheckResult("config", OK, where)


def check_runc(target: VerifyTarget) -> CheckResult:
    runc = target.config.runc
    if runc is None:
        return CheckResult("runc", FAIL, f"`runc` is not set in {target.config.path}")
    status, output = run_command([runc, "--version"])
    if status != 0:
        return CheckResult("runc", FAIL, f"{runc} --version failed: {output.strip()}")
    version = parse_version(output)
    if version < MIN_RUNC:
        return CheckResult("runc", FAIL, f"{runc} is {output.splitlines()[0]}; need >= 1.1")
    return CheckResult("runc", OK, f"{runc} {'.'.join(map(str, version))}")


def check_criu(target: VerifyTarget) -> CheckResult:
    # The CRIU ARCH's checkpoints use: arch.toml's, else the one runc would find.
    criu = target.config.criu or find_criu()
    if criu is None:
        return CheckResult("criu", FAIL, "criu not found")
    _, version_output = run_command([criu, "--version"])
    version = ".".join(map(str, parse_version(version_output))) or "unknown version"
    status, output = run_command([criu, "check"])
    if status != 0:
        last_line = output.strip().splitlines()[-1] if output.strip() else f"exit {status}"
        return CheckResult("criu", FAIL, f"{criu} {version}: `criu check` failed: {last_line}")
    verdict = output.strip().splitlines()[-1] if output.strip() else "passed"
    return CheckResult("criu", OK, f"{criu} {version}, criu check: {verdict}")


def check_iptables(target: VerifyTarget) -> CheckResult:
    # CRIU built without nftables locks the container's network with iptables-restore.
    missing = [tool for tool in ("iptables", "iptables-restore") if shutil.which(tool) is None]
    if missing:
        return CheckResult("iptables", FAIL, f"not on PATH: {', '.join(missing)}")
    _, output = run_command(["iptables", "--version"])
    return CheckResult("iptables", OK, output.strip())


def check_arch_runc(target: VerifyTarget) -> CheckResult:
    runc = target.config.runc
    status, output = run_command([target.arch_runc, "--version"])
    if status != 0:
        return CheckResult("arch-runc", FAIL, f"{target.arch_runc} --version: {output.strip()}")
    if runc is not None and run_command([runc, "--version"]) != (status, output):
        return CheckResult("arch-runc", FAIL, f"{target.arch_runc} --version differs from {runc}'s")
    return CheckResult("arch-runc", OK, f"{target.arch_runc} passes through to {runc}")


def check_containerd_wiring(target: VerifyTarget) -> CheckResult:
    from arch.appliance.containerd_config import show_binary

    path = target.containerd_config
    if not os.path.exists(path):
        return CheckResult("containerd config", FAIL, f"{path} does not exist")
    try:
        binary = show_binary(Path(path))
    except FileEditError as error:
        return CheckResult("containerd config", FAIL, str(error))
    if binary != target.arch_runc:
        detail = f"{path}: runc BinaryName is {binary!r}, not {target.arch_runc}"
        return CheckResult("containerd config", FAIL, detail)
    return CheckResult("containerd config", OK, f"{path}: BinaryName = {binary}")


def check_containerd_service(target: VerifyTarget) -> CheckResult:
    address = target.containerd_address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(5)
            connection.connect(address)
    except OSError as error:
        return CheckResult("containerd", FAIL, f"not reachable at {address}: {error.strerror}")
    return CheckResult("containerd", OK, f"listening at {address}")


def check_exit_watcher(target: VerifyTarget) -> CheckResult:
    """A running `archctl watch-exits` on this containerd that records into this host's state
    dir: without it no exit status is recorded, delete keeps every image, and deletes do not
    wait for a status (arch.container.exit_watch.WatcherPresence)."""
    state_dir = target.config.state_dir
    scanned = exit_watchers()
    # A watcher started without --address follows $CONTAINERD_ADDRESS or the default socket.
    candidates = [pid for pid, address in scanned if address in (None, target.containerd_address)]
    announced = _announced_watchers(state_dir, target.containerd_address, bool(candidates))
    pids = [w["pid"] for w in announced if w.get("address") == target.containerd_address]
    if pids:
        pid_list = ", ".join(map(str, pids))
        return CheckResult("exit watcher", OK, f"archctl watch-exits running (pid {pid_list})")
    detail = EXIT_WATCHER_MISSING
    others = sorted(
        {str(w.get("address")) for w in announced}
        | {address for _, address in scanned if address is not None}
        - {target.containerd_address}
    )
    if others:
        detail += f"; watchers run only for other containerd sockets: {', '.join(others)}"
    unannounced = [pid for pid in candidates if pid not in {w["pid"] for w in announced}]
    if unannounced:
        detail += (
            f"; archctl watch-exits (pid {', '.join(map(str, unannounced))}) does not record into "
            f"{state_dir}: another arch.toml, or an older ARCH (restart arch-exit-watch)"
        )
    return CheckResult("exit watcher", FAIL, detail)


def _announced_watchers(state_dir: str, address: str, starting: bool) -> list[dict[str, Any]]:
    """The watchers announced in the state dir; while a watcher process of this containerd
    runs (`starting`) but none has announced itself for it, up to ANNOUNCE_WAIT_SECONDS for
    it to do so (a watcher just started, e.g. by the role right before verify, takes a moment
    to load)."""
    from arch.container.exit_watch import running_watchers

    deadline = time.monotonic() + (ANNOUNCE_WAIT_SECONDS if starting else 0.0)
    while True:
        announced = running_watchers(state_dir)
        if any(w.get("address") == address for w in announced) or time.monotonic() >= deadline:
            return announced
        time.sleep(ANNOUNCE_POLL_SECONDS)


def exit_watchers(proc_root: str | None = None) -> list[tuple[int, str | None]]:
    """(pid, --address or None when not given) of every `archctl watch-exits` process."""
    root = proc_root or PROC_ROOT
    found = []
    for entry in os.listdir(root):
        if not entry.isdigit():
            continue
        argv = process_argv(os.path.join(root, entry, "cmdline"))
        if is_exit_watcher(argv):
            found.append((int(entry), watcher_address(argv)))
    return sorted(found)


def process_argv(cmdline_path: str) -> list[str]:
    """A process's argv from /proc/<pid>/cmdline; [] for a process that is gone or hidden."""
    try:
        with open(cmdline_path, "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def is_exit_watcher(argv: Sequence[str]) -> bool:
    """archctl (its console script, under any directory) with the watch-exits subcommand."""
    if WATCH_EXITS not in argv:
        return False
    before_subcommand = argv[: argv.index(WATCH_EXITS)]
    return any(os.path.basename(arg) == ARCHCTL_NAME for arg in before_subcommand)


def watcher_address(argv: Sequence[str]) -> str | None:
    """archctl's global --address option (`--address X` or `--address=X`), if given."""
    for index, arg in enumerate(argv):
        if arg == ADDRESS_OPTION and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(ADDRESS_OPTION + "="):
            return arg[len(ADDRESS_OPTION) + 1 :]
    return None


def check_docker_wiring(target: VerifyTarget) -> CheckResult:
    from arch.appliance.docker_config import show_runtime_path

    if shutil.which("dockerd") is None:
        return CheckResult("docker config", SKIP, "dockerd is not installed")
    path = target.docker_config
    try:
        runtime_path = show_runtime_path(Path(path), "arch")
    except FileEditError as error:
        return CheckResult("docker config", FAIL, str(error))
    if runtime_path != target.arch_runc:
        detail = f"{path}: runtime `arch` is {runtime_path!r}, not {target.arch_runc}"
        return CheckResult("docker config", FAIL, detail)
    return CheckResult("docker config", OK, f"{path}: runtime arch = {runtime_path}")


def check_docker_service(target: VerifyTarget) -> CheckResult:
    if shutil.which("dockerd") is None:
        return CheckResult("docker", SKIP, "dockerd is not installed")
    docker_socket = target.docker_socket
    if not os.path.exists(docker_socket):
        return CheckResult("docker", WARN, f"dockerd is not running ({docker_socket} absent)")
    try:
        runtime_path = docker_runtimes(docker_socket).get("arch")
    except (OSError, ValueError) as error:
        return CheckResult("docker", FAIL, f"cannot query dockerd at {docker_socket}: {error}")
    if runtime_path != target.arch_runc:
        detail = f"dockerd's runtime `arch` is {runtime_path!r} (restart dockerd?)"
        return CheckResult("docker", FAIL, detail)
    return CheckResult("docker", OK, f"dockerd has runtime arch = {target.arch_runc}")


def docker_runtimes(docker_socket: str) -> dict[str, str]:
    """Runtime name -> path, as the running dockerd reports them (GET /info)."""
    import http.client
    import json

    class UnixHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(docker_socket)

    connection = UnixHTTPConnection("localhost")
    try:
        connection.request("GET", "/info")
        response = connection.getresponse()
        if response.status != 200:
            raise ValueError(f"GET /info answered HTTP {response.status}")
        info = json.loads(response.read())
    finally:
        connection.close()
    return {name: runtime.get("path", "") for name, runtime in info.get("Runtimes", {}).items()}


def check_storage(target: VerifyTarget) -> CheckResult:
    problems = [
        problem
        for directory in (target.config.checkpoint_root, target.config.state_dir)
        for problem in _private_directory_problems(directory)
    ]
    if problems:
        return CheckResult("storage", FAIL, "; ".join(problems))
    return CheckResult(
        "storage", OK, f"{target.config.checkpoint_root} and {target.config.state_dir}: root, 0700"
    )


def _private_directory_problems(directory: str) -> list[str]:
    try:
        info = os.stat(directory)
    except OSError as error:
        return [f"{directory}: {error.strerror}"]
    problems = []
    if not stat.S_ISDIR(info.st_mode):
        problems.append(f"{directory}: not a directory")
    if info.st_uid != 0:
        problems.append(f"{directory}: owned by uid {info.st_uid}, not root")
    if stat.S_IMODE(info.st_mode) & 0o077:
        problems.append(f"{directory}: mode {stat.S_IMODE(info.st_mode):04o}, must be 0700")
    return problems


def check_signing(target: VerifyTarget, mountinfo: str | None = None) -> CheckResult:
    """Which mode the host is in: whether its images are signed, with which key, which keys a
    restore accepts, and whether unsigned images restore (a warning on shared storage)."""
    from arch.checkpoint.image.signing import ImageKeyError, load_key

    config = target.config
    try:
        for key_file in config.verify_key_files:
            load_key(key_file)
    except ImageKeyError as error:
        return CheckResult("signing", FAIL, f"{error}: checkpoints or restores fail")
    signing = (
        f"on: images signed with {config.image_key_file}"
        if config.image_key_file
        else 'off: images are not signed (image_key_file = "")'
    )
    others = [f for f in config.verify_key_files if f != config.image_key_file]
    accepted = f"; also accepted: {', '.join(others)}" if others else ""
    if config.unsigned_images == "refuse":
        if not config.image_key_file:
            return CheckResult("signing", FAIL, f"{signing}, and unsigned_images = \"refuse\": "
                               "this host's own images never restore")  # fmt: skip
        return CheckResult("signing", OK, f"{signing}{accepted}; unsigned images refused")
    detail = f"{signing}{accepted}; unsigned images restore (unsigned_images = \"allow\")"
    shared = _shared_roots(config, mountinfo)
    if shared:
        return CheckResult(
            "signing",
            WARN,
            f"{detail}, and images live on shared storage: {', '.join(shared)}; whoever can write "
            'there decides what is restored here. Set unsigned_images = "refuse" in arch.toml',
        )
    return CheckResult("signing", OK, detail)


def _shared_roots(config: HostConfig, mountinfo: str | None) -> list[str]:
    from arch.appliance.mounts import MOUNTINFO, filesystem_type, is_network_filesystem

    shared = []
    for root in dict.fromkeys((config.checkpoint_root, *config.allowed_roots)):
        fstype = filesystem_type(root, mountinfo or MOUNTINFO)
        if is_network_filesystem(fstype):
            shared.append(f"{root} ({fstype})")
    return shared


def check_checkpoint_mount(target: VerifyTarget) -> CheckResult:
    """Which storage holds the checkpoint root; a warning for EFS without TLS and IAM."""
    from arch.appliance.checkpoint_mount import describe

    report = describe(target.config.checkpoint_root)
    return CheckResult("checkpoint-mount", OK if report.status_ok else WARN, report.detail)


CHECKS: tuple[Callable[[VerifyTarget], CheckResult], ...] = (
    check_config,
    check_runc,
    check_criu,
    check_iptables,
    check_arch_runc,
    check_containerd_wiring,
    check_containerd_service,
    check_exit_watcher,
    check_docker_wiring,
    check_docker_service,
    check_storage,
    check_checkpoint_mount,
    check_signing,
)


def run_checks(target: VerifyTarget) -> list[CheckResult]:
    return [check(target) for check in CHECKS]
