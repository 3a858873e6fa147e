"""First boot under real systemd and cloud-init (harness/booted.py): the rendered userdata runs in
cloud-final of a booted Debian instance whose cloud-final and ECS agent stand-in are ordered as on
an ECS-optimized Amazon Linux instance, with no network but an HTTP server holding the bundle.

- A good bootstrap: cloud-final finishes (no deadlock between the role and the agent's
  After=cloud-final), ARCH's units run under systemd, and the agent starts only after
  ECS_CLUSTER and ARCH's attribute were written.
- A failing bootstrap: cloud-final still finishes, the agent never gets past the gate (it cannot
  join any cluster), and the reason is in the bootstrap log, the journal and on the console.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.booted import BootedInstance, cached_root, free_port
from harness.delivery import ROLE_TIMEOUT, archctl

from tests.conftest import require_executables

pytestmark = [pytest.mark.root]

CLUSTER = "arch-boot-test"
BUNDLE = "arch-bundle.tar"
# The root's package lists date from its build: the role must not refresh them (no network).
NO_APT_REFRESH = "arch_apt_cache_valid_time=315360000"
# The one check the role cannot run inside the container: `archctl selftest` runs a container,
# and inside systemd-nspawn on these cgroup v1 hosts the controllers' hierarchies are read-only
# (runc: "mkdir /sys/fs/cgroup/cpuset/...: read-only file system"). Everything else the role
# checks runs, `criu check` and `archctl verify` included; the selftest's round trip runs for
# real on the host (tests/integration/test_selftest.py).
NO_SELFTEST = "arch_run_archctl_selftest=false"
# Straight to building the pinned CRIU from the bundle's source: bookworm's criu (3.17.1, which
# `auto` would try first) is not in the root and fails `criu check` on these kernels anyway.
BUILD_CRIU = "arch_criu_source=build"


@pytest.fixture(scope="module")
def boot_root() -> Path:
    require_executables(
        "debootstrap", "systemd-nspawn", "nsenter", "ip",
        why="the first-boot test boots a Debian root with systemd-nspawn",
    )  # fmt: skip
    started = time.monotonic()
    root = cached_root()
    print(f"boot root ready in {time.monotonic() - started:.1f} s: {root}")
    return root


@pytest.fixture(scope="module")
def bundle_dir(arch_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`archctl bundle` for the root's python3 (3.11): everything the instance installs."""
    directory = tmp_path_factory.mktemp("bundle")
    made = archctl(
        "bundle", "-o", str(directory / BUNDLE), "--python", "3.11", "--wheel", str(arch_wheel),
        timeout=1800,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    print(made.stdout.strip())
    return directory


@pytest.fixture
def boot(
    boot_root: Path, bundle_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., BootedInstance]]:
    instances: list[BootedInstance] = []

    def start(*userdata_options: str) -> BootedInstance:
        port = free_port()
        script = tmp_path / f"userdata-{len(instances)}.sh"
        rendered = archctl(
            "userdata", "--package", f"http://127.0.0.1:{port}/{BUNDLE}",
            "--ecs-cluster", CLUSTER, "--role-var", NO_APT_REFRESH, "--role-var", NO_SELFTEST,
            "--role-var", BUILD_CRIU, *userdata_options,
            "-o", str(script),
        )  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr
        instance = BootedInstance(
            boot_root, tmp_path / f"boot-{len(instances)}", script.read_text(), bundle_dir, port
        )
        instances.append(instance)
        instance.start()
        return instance

    yield start
    for instance in instances:
        instance.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stand_in_record(instance: BootedInstance) -> str:
    return instance.read("/run/ecs-stand-in/record")


def wait_for_stand_in(instance: BootedInstance, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = stand_in_record(instance)
        if record:
            return record
        time.sleep(2)
    state = instance.unit("ecs.service", "ActiveState", "SubState", "Result")
    raise AssertionError(f"the agent stand-in never started: {state}")


def test_good_bootstrap_finishes_runs_units_and_then_admits(
    boot: Callable[..., BootedInstance], bundle_dir: Path
) -> None:
    bundle = bundle_dir / BUNDLE
    instance = boot("--package-sha256", sha256(bundle))
    cloud_final = instance.wait_for_cloud_final(timeout=ROLE_TIMEOUT)
    bootstrap_log = instance.read("/var/log/arch-bootstrap.log")
    result = instance.unit("cloud-final.service", "Result")["Result"]
    assert result == "success", bootstrap_log[-6000:] + instance.console()[-3000:]
    assert "done: ARCH is installed and verified" in bootstrap_log
    size = bundle.stat().st_size
    print(f"cloud-final finished {cloud_final:.0f} s after boot (bundle: {size} bytes)")

    # ARCH's units and the stack run under systemd, started by the role without blocking.
    for unit in ("containerd", "docker", "arch-exit-watch", "arch-spot-watch"):
        state = instance.unit(f"{unit}.service", "ActiveState", "SubState", "MainPID")
        print(f"{unit}: {state}")
        assert state["ActiveState"] == "active", (unit, state)
    assert instance.run(["/usr/local/bin/archctl", "verify"]).returncode == 0
    # CRIU was built in the instance from the bundle's pinned source, and works there.
    criu = instance.run(["/usr/local/sbin/criu", "--version"]).stdout
    print(f"criu built from the bundle: {criu.strip()}")
    assert "TASK [arch : Build criu (make criu" in bootstrap_log
    assert instance.run(["/usr/local/sbin/criu", "check"]).returncode == 0

    # The agent started after cloud-final and saw ECS_CLUSTER and ARCH's attribute.
    record = wait_for_stand_in(instance)
    print(f"agent stand-in saw:\n{record}")
    assert "cloud_final=active" in record
    assert f"ECS_CLUSTER={CLUSTER}" in record.splitlines()
    assert any(
        line.startswith("ECS_INSTANCE_ATTRIBUTES=") and '"arch.version"' in line
        for line in record.splitlines()
    ), record

    # Offline: the instance's only network is `lo`, and what it fetched came from the bundle.
    links = instance.run(["ip", "-o", "link"]).stdout or instance.read("/proc/net/dev")
    print(f"instance network: {links.strip()}")
    served = Path(instance.http_log).read_text()
    print(f"served: {served.strip()}")
    assert f"GET /{BUNDLE}" in served
    assert "offline" in bootstrap_log


def test_failing_bootstrap_keeps_the_agent_out_and_says_why(
    boot: Callable[..., BootedInstance],
) -> None:
    instance = boot("--package-sha256", "0" * 64)
    cloud_final = instance.wait_for_cloud_final(timeout=600)
    print(f"cloud-final ended {cloud_final:.0f} s after boot")
    bootstrap_log = instance.read("/var/log/arch-bootstrap.log")
    print(bootstrap_log[-1500:])
    assert f"expected {'0' * 64}" in bootstrap_log
    assert "the ECS agent stays out of its cluster" in bootstrap_log

    # The agent's start is refused by the gate, attempt after attempt (Restart=on-failure).
    deadline = time.monotonic() + 120
    journal = ""
    while time.monotonic() < deadline and "arch-ecs-gate:" not in journal:
        time.sleep(3)
        journal = instance.run(
            ["journalctl", "-u", "ecs.service", "--no-pager", "-o", "cat"]
        ).stdout
    print(f"ecs.service journal:\n{journal.strip()[-1500:]}")
    assert "ARCH's bootstrap has not passed on this instance" in journal
    assert stand_in_record(instance) == ""  # ExecStart never ran: nothing registered
    assert "ECS_CLUSTER" not in instance.read("/etc/ecs/ecs.config")
    assert "the ECS agent stays out of its cluster" in instance.console()
