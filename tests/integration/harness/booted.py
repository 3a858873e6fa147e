"""A booted Debian instance: real systemd and cloud-init in systemd-nspawn, as an EC2 first boot.

The root (debootstrap, cached under ARCH_TEST_BOOT_CACHE, default /var/cache/arch-tests) is laid
out like an ECS-optimized instance where it matters to ARCH's first boot:
- cloud-init reads the user data from a NoCloud seed (bound per boot);
- cloud-final.service is ordered as on Amazon Linux: not After=multi-user.target (Debian's unit
  has that line; AL2023's does not), so units wanted by multi-user.target may wait for it;
- ecs.service is a stand-in for the ECS agent with the real unit's ordering and start conditions
  (aws/amazon-ecs-agent, packaging/amazon-linux-ami-integrated/ecs.service: Wants= and
  After=docker.service, After=cloud-final.service, Restart=on-failure, RestartSec=10s,
  EnvironmentFile=-/etc/ecs/ecs.config, ExecStartPre requiring an active docker). Its ExecStart
  records what the agent would register with: ecs.config as it is when the agent starts, and
  whether cloud-final had finished;
- the distribution's packages the role installs (containerd, runc, Docker, iptables, a compiler,
  python3-venv, CRIU's build dependencies) are preinstalled, as on the ECS AMI, so the role needs
  no package repository; what the distribution lacks, the pinned CRIU source, comes from the
  bundle, and the role builds it there; `criu check` passes inside (writable /proc/sys, all
  capabilities).

Each boot runs on a throw-away overlay of the cached root (--volatile=overlay): the cache is
never changed; /var/lib/containerd and /var/lib/docker are directories of the test (an overlay
snapshot's upper layer cannot live on an overlay). Its network is a network namespace the test
owns with only `lo`, where the test's HTTP server serves the bundle: the instance has no other
network. The container and the server are stopped by their own pids, the namespace deleted by
its own name.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import procs

CACHE_DIR = Path(os.environ.get("ARCH_TEST_BOOT_CACHE", "/var/cache/arch-tests"))
SUITE = "bookworm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PACKAGES = (
    # init and cloud-init (python3-cffi-backend: cloud-init's python3-cryptography needs it)
    "systemd",
    "systemd-sysv",
    "dbus",
    "cloud-init",
    "python3",
    "python3-cffi-backend",
    # what the role installs on Debian (vars/Debian.yml), preinstalled as on the ECS AMI
    "python3-venv",
    "python3-apt",
    "runc",
    "containerd",
    "docker.io",
    "iptables",
    "gcc",
    "libc6-dev",
    "make",
    "xz-utils",
    "ca-certificates",
    "curl",
    # CRIU's build dependencies (vars/Debian.yml arch_os_criu_build_packages): the role builds
    # the pinned CRIU from the bundle's source (bookworm's criu 3.17.1 fails on these kernels)
    "pkg-config",
    "libprotobuf-dev",
    "libprotobuf-c-dev",
    "protobuf-c-compiler",
    "protobuf-compiler",
    "python3-protobuf",
    "libnl-3-dev",
    "libnet1-dev",
    "libcap-dev",
    "libbsd-dev",
    "libgnutls28-dev",
    "uuid-dev",
    "libaio-dev",
)
CLOUD_CONFIG = """\
# ARCH boot test: user data from the NoCloud seed only (no network metadata service).
datasource_list: [ NoCloud, None ]
# No locales in the root: cc_locale would fail cloud-config.
locale: false
"""
STAND_IN_SCRIPT = """\
#!/bin/sh
# ARCH boot test: stand-in for the ECS agent. Records what the agent would register with.
mkdir -p /run/ecs-stand-in
{
    echo "started_monotonic=$(cut -d' ' -f1 /proc/uptime)"
    echo "cloud_final=$(systemctl show -p ActiveState --value cloud-final.service)"
    echo "--- /etc/ecs/ecs.config"
    cat /etc/ecs/ecs.config 2>/dev/null
} >/run/ecs-stand-in/record.tmp
mv /run/ecs-stand-in/record.tmp /run/ecs-stand-in/record
exec sleep infinity
"""
# The real unit's [Unit] ordering and [Service] start conditions; ExecStart is the stand-in.
STAND_IN_UNIT = """\
[Unit]
Description=Stand-in for the Amazon ECS container agent (ARCH boot test)
Wants=docker.service
After=docker.service
After=cloud-final.service

[Service]
Type=simple
Restart=on-failure
RestartPreventExitStatus=5
RestartSec=10s
EnvironmentFile=-/etc/ecs/ecs.config
ExecStartPre=/bin/bash -c 'if [ $(/usr/bin/systemctl is-active docker) != "active" ]; \\
then exit 1; fi'
ExecStart=/usr/local/libexec/ecs-agent-stand-in

[Install]
WantedBy=multi-user.target
"""
RECIPE = "\n".join([SUITE, *PACKAGES, CLOUD_CONFIG, STAND_IN_SCRIPT, STAND_IN_UNIT, "v1"])
BUILD_TIMEOUT = 3600
# Overlay snapshots cannot have their upper layer on the overlay root (--volatile=overlay): these
# state directories are bound from the test's own directory on the host's filesystem.
SNAPSHOT_DIRS = ("containerd", "docker")
STOP_WAIT = 90


def debian_mirror() -> str:
    """The first Debian (not security) URI of this host's apt sources, else deb.debian.org."""
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for uri in re.findall(r"^URIs:\s*(\S+)", sources.read_text(), re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def cached_root() -> Path:
    """The configured root of this recipe, built once (one builder at a time)."""
    digest = hashlib.sha256(RECIPE.encode()).hexdigest()[:12]
    root = CACHE_DIR / f"boot-root-{SUITE}-{digest}"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "boot-root.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "etc" / "os-release").exists():
            _build_root(root)
    return root


def _build_root(root: Path) -> None:
    building = root.with_name(root.name + ".building")
    if building.exists():
        shutil.rmtree(building)  # a build that died half-way (we hold the lock)
    started = time.monotonic()
    procs.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--keyring={KEYRING}",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(building),
            debian_mirror(),
        ],
        timeout=BUILD_TIMEOUT,
    )
    _configure_root(building)
    os.rename(building, root)
    print(f"boot root built in {time.monotonic() - started:.0f} s: {root}")


def _configure_root(root: Path) -> None:
    (root / "etc/cloud/cloud.cfg.d/90-arch-boot-test.cfg").write_text(CLOUD_CONFIG)
    debian_unit = (root / "lib/systemd/system/cloud-final.service").read_text()
    amazon_order = "".join(
        line
        for line in debian_unit.splitlines(keepends=True)
        if line.strip() != "After=multi-user.target"
    )
    assert amazon_order != debian_unit, "Debian's cloud-final.service changed: review the recipe"
    (root / "etc/systemd/system/cloud-final.service").write_text(amazon_order)
    script = root / "usr/local/libexec/ecs-agent-stand-in"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(STAND_IN_SCRIPT)
    script.chmod(0o755)
    (root / "etc/systemd/system/ecs.service").write_text(STAND_IN_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "ecs.service").symlink_to("/etc/systemd/system/ecs.service")
    (root / "etc/ecs").mkdir(exist_ok=True)
    # An empty machine-id: systemd makes one at each (volatile) boot.
    (root / "etc/machine-id").write_text("")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class BootedInstance:
    """One boot of `root` with `user_data`; `serve_dir` on http://127.0.0.1:`port` inside."""

    def __init__(self, root: Path, work: Path, user_data: str, serve_dir: Path, port: int) -> None:
        self.root = root
        self.work = work
        self.port = port
        self.serve_dir = serve_dir
        self.netns = f"arch-boot-{os.getpid()}-{port}"
        self.seed = work / "seed"
        self.seed.mkdir(parents=True)
        for name in SNAPSHOT_DIRS:
            (work / name).mkdir(mode=0o711)
        (self.seed / "meta-data").write_text(
            f"instance-id: i-arch-{port}\nlocal-hostname: arch-boot\n"
        )
        (self.seed / "user-data").write_text(user_data)
        self.console_log = work / "console.log"
        self.http_log = work / "http.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.http: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        self.started = 0.0

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        procs.run(["ip", "netns", "add", self.netns])
        procs.run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        with open(self.http_log, "wb") as http_log:
            self.http = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "http.server",
                 "--bind", "127.0.0.1", "--directory", str(self.serve_dir), str(self.port)],
                stdin=subprocess.DEVNULL, stdout=http_log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        environment = {**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "1"}
        with open(self.console_log, "wb") as console:
            self.nspawn = subprocess.Popen(
                ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet",
                 "--directory", str(self.root), "--volatile=overlay",
                 f"--network-namespace-path=/run/netns/{self.netns}", "--capability=all",
                 f"--bind-ro={self.seed}:/var/lib/cloud/seed/nocloud",
                 *(f"--bind={self.work / name}:/var/lib/{name}" for name in SNAPSHOT_DIRS),
                 "--boot"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, env=environment,
            )  # fmt: skip
        self.started = time.monotonic()
        self.init_pid = self._wait_for_init()

    def _wait_for_init(self, timeout: float = 300) -> int:
        assert self.nspawn is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise AssertionError(
                    f"systemd-nspawn exited {self.nspawn.returncode}: {self.console()}"
                )
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids and Path(f"/proc/{pids[0]}/root/run/systemd/system").is_dir():
                return int(pids[0])
            time.sleep(0.5)
        raise AssertionError(f"no systemd in the container after {timeout} s: {self.console()}")

    def stop(self) -> None:
        """Power the container off (SIGTERM to nspawn), SIGKILL if it hangs; then the server and
        the namespace. Only what this instance started."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(timeout=STOP_WAIT)
        if self.http is not None and self.http.poll() is None:
            self.http.terminate()
            self.http.wait(timeout=STOP_WAIT)
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)

    # -- looking inside ---------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return procs.run(
            ["nsenter", "-t", str(self.init_pid), "-a", *argv], timeout=timeout, check=False
        )

    def read(self, path: str) -> str:
        """A file inside the running container ("" when absent)."""
        try:
            return Path(f"/proc/{self.init_pid}/root{path}").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def unit(self, name: str, *properties: str) -> dict[str, str]:
        shown = self.run(["systemctl", "show", name, *(f"--property={p}" for p in properties)])
        return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)

    def wait_for_cloud_final(self, timeout: float) -> float:
        """Seconds from boot until cloud-final.service ended; AssertionError with the pending
        jobs when it has not ended after `timeout` (a first-boot deadlock)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.unit("cloud-final.service", "ActiveState", "SubState")
            if state.get("ActiveState") in ("active", "failed"):
                return time.monotonic() - self.started
            time.sleep(2)
        jobs = self.run(["systemctl", "list-jobs", "--no-pager"]).stdout
        raise AssertionError(
            f"cloud-final.service still running after {timeout:.0f} s; jobs:\n{jobs}"
        )

    def console(self) -> str:
        return self.console_log.read_text(errors="replace") if self.console_log.exists() else ""
