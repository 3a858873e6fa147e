"""The role's lifecycle on this host: idempotence, --check, and a clean uninstall.

Runs last among the appliance tests (file name) because it uninstalls and reinstalls the
appliance; it always leaves it installed again. Needs root and the bootstrap venv that
ansible/install.sh creates.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.appliance, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
ANSIBLE_PLAYBOOK = Path("/opt/arch/bootstrap/bin/ansible-playbook")
BACKUP_DIR = Path("/var/lib/arch/backup")
ABSENT_SUFFIX = ".absent"
CONTAINERD_CONFIG = Path("/etc/containerd/config.toml")
DAEMON_JSON = Path("/etc/docker/daemon.json")
EXIT_WATCH_PIDFILE = Path("/run/arch/exit-watch.pid")
ARCH_TOML = Path("/etc/arch/arch.toml")
IMAGE_KEY_FILE = Path("/etc/arch/image.key")
# (edited file, its backup's name) as the role passes them to the editors.
EDITED_FILES = ((CONTAINERD_CONFIG, "containerd-config.toml"), (DAEMON_JSON, "docker-daemon.json"))
# A daemon.json as a person would write it (4-space indent), to prove a byte-exact restore.
HANDWRITTEN_DAEMON_JSON = b'{\n    "log-level": "info",\n    "iptables": false\n}\n'
PLAYBOOK_TIMEOUT_S = 1200
RECAP = re.compile(
    r"^localhost\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Recap:
    ok: int
    changed: int
    unreachable: int
    failed: int
    output: str


_source_snapshot: list[Path] = []


def run_playbook(*args: str) -> Recap:
    """Run site.yml on this host with the bootstrap's ansible-playbook; parse PLAY RECAP.

    The package source is a snapshot taken when this module starts, so that edits to the
    checkout during the test cannot show up as changes.
    """
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    args = ("-e", f"arch_source_dir={_source_snapshot[0]}", *args)
    completed = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(ANSIBLE_DIR / "site.yml"),
            *args,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PLAYBOOK_TIMEOUT_S,
        check=False,
    )
    output = completed.stdout + completed.stderr
    found = RECAP.search(completed.stdout)
    assert found, f"no PLAY RECAP (rc {completed.returncode}):\n{output[-6000:]}"
    recap = Recap(
        ok=int(found["ok"]),
        changed=int(found["changed"]),
        unreachable=int(found["unreachable"]),
        failed=int(found["failed"]),
        output=output,
    )
    assert completed.returncode == 0 and recap.failed == 0, f"playbook failed:\n{output[-6000:]}"
    return recap


def changed_tasks(output: str) -> list[str]:
    """Names of the tasks that reported `changed`, for a readable failure."""
    names: list[str] = []
    current = ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:"):
            names.append(current)
    return names


def pre_arch_state(config: Path, backup_name: str) -> bytes | None:
    """What the role saved before it edited `config`: its bytes, or None (it did not exist)."""
    backup = BACKUP_DIR / backup_name
    if backup.exists():
        return backup.read_bytes()
    assert (BACKUP_DIR / (backup_name + ABSENT_SUFFIX)).exists() or not config.exists(), (
        f"no backup of {config} under {BACKUP_DIR}"
    )
    return None


def current_state(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def dockerd_installed() -> bool:
    return any(Path(path).exists() for path in ("/usr/sbin/dockerd", "/usr/bin/dockerd"))


@pytest.fixture(scope="module", autouse=True)
def _bootstrap_venv_and_source(tmp_path_factory: pytest.TempPathFactory) -> None:
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.fail(f"{ANSIBLE_PLAYBOOK} missing: the appliance was not installed by install.sh")
    snapshot = tmp_path_factory.mktemp("arch-source")
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, snapshot / name)
    shutil.copytree(REPO / "arch", snapshot / "arch", ignore=shutil.ignore_patterns("__pycache__"))
    _source_snapshot[:] = [snapshot]


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    # With arch_ecs on (ECS agent settings into a scratch ecs.config): no run of its own.
    ecs_config = tmp_path / "ecs" / "ecs.config"
    ecs_config.parent.mkdir()
    ecs_config.write_text("ECS_CLUSTER=prod\nECS_CONTAINER_STOP_TIMEOUT=10s\n")
    ecs = ("-e", "arch_ecs=true", "-e", f"arch_ecs_config={ecs_config}")
    run_playbook(*ecs)  # converge on the current checkout first
    recap = run_playbook(*ecs)
    assert recap.changed == 0, f"changed on a second run: {changed_tasks(recap.output)}"
    assert ecs_config.read_text().splitlines() == [
        "ECS_CLUSTER=prod",
        "ECS_CONTAINER_STOP_TIMEOUT=2m",
        "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true",
    ]


def test_check_mode_changes_nothing() -> None:
    recap = run_playbook("--check")
    assert recap.changed == 0, f"--check reported changes: {changed_tasks(recap.output)}"


def assert_arch_removed() -> None:
    for path in (
        "/etc/arch",
        "/opt/arch/venv",
        "/usr/local/bin/arch-runc",
        "/usr/local/bin/archctl",
        "/etc/systemd/system/arch-verify.service",
        "/etc/systemd/system/arch-exit-watch.service",
        "/etc/systemd/system/multi-user.target.wants/arch-exit-watch.service",
        "/etc/systemd/system/arch-spot-watch.service",
        "/etc/systemd/system/multi-user.target.wants/arch-spot-watch.service",
        str(EXIT_WATCH_PIDFILE),
        "/etc/tmpfiles.d/arch.conf",
    ):
        assert not os.path.lexists(path), f"{path} left after arch_state=absent"
    assert not BACKUP_DIR.exists() or not any(BACKUP_DIR.iterdir())


def running_exit_watcher() -> int | None:
    """The pid of the exit watcher that the role started directly (pidfile), if it runs."""
    try:
        pid = int(EXIT_WATCH_PIDFILE.read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"watch-exits" in argv else None


def is_exit_watcher(pid: int) -> bool:
    try:
        return b"watch-exits" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def test_absent_restores_configs_byte_for_byte_then_present_reinstalls() -> None:
    originals = {config: pre_arch_state(config, name) for config, name in EDITED_FILES}
    watcher_before = running_exit_watcher()
    try:
        run_playbook("-e", "arch_state=absent")
        for config, original in originals.items():
            assert current_state(config) == original, f"{config} not restored byte for byte"
        assert_arch_removed()
        if watcher_before is not None:
            assert not is_exit_watcher(watcher_before), "exit watcher still runs after absent"

        if dockerd_installed():
            # A real, hand-formatted daemon.json must come back exactly as written too.
            DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
            DAEMON_JSON.write_bytes(HANDWRITTEN_DAEMON_JSON)
            try:
                run_playbook()
                assert b'"arch"' in DAEMON_JSON.read_bytes()
                assert (BACKUP_DIR / "docker-daemon.json").read_bytes() == HANDWRITTEN_DAEMON_JSON
                run_playbook("-e", "arch_state=absent")
                assert DAEMON_JSON.read_bytes() == HANDWRITTEN_DAEMON_JSON
            finally:
                original_daemon_json = originals[DAEMON_JSON]
                if original_daemon_json is None:
                    DAEMON_JSON.unlink(missing_ok=True)
                else:
                    DAEMON_JSON.write_bytes(original_daemon_json)
    finally:
        run_playbook()

    for config, original in originals.items():
        assert pre_arch_state(config, dict(EDITED_FILES)[config]) == original
    assert Path("/etc/arch/arch.toml").exists()
    assert "arch-runc" in CONTAINERD_CONFIG.read_text()
    if watcher_before is not None:
        assert running_exit_watcher() is not None, "exit watcher not started again by present"
    verify = subprocess.run(
        ["/usr/local/bin/archctl", "verify"], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def assert_root_only_key(text: str) -> None:
    info = IMAGE_KEY_FILE.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, 0, 0o600)
    assert IMAGE_KEY_FILE.read_text() == text


def test_image_key_is_generated_once_replaced_by_a_fleet_key_and_never_logged() -> None:
    """Without a fleet key the role generated this host's key at install and keeps it across
    runs; arch_image_key replaces it (root's, 0600, named in arch.toml, verify reports signing
    on, never in the role's output); without the file a run generates a new one."""
    host_key = IMAGE_KEY_FILE.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", host_key)
    fleet_key = os.urandom(32).hex()
    try:
        run_playbook()
        assert_root_only_key(host_key)
        recap = run_playbook("-e", f"arch_image_key={fleet_key}")
        assert fleet_key not in recap.output
        assert_root_only_key(fleet_key + "\n")
        assert f'image_key_file = "{IMAGE_KEY_FILE}"' in ARCH_TOML.read_text()
        assert 'unsigned_images = "refuse"' in ARCH_TOML.read_text()
        verify = subprocess.run(
            ["/usr/local/bin/archctl", "verify", "--json"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert fleet_key not in verify.stdout + verify.stderr
        assert f"on: images signed with {IMAGE_KEY_FILE}; unsigned images refused" in (
            verify.stdout
        ), verify.stdout
    finally:
        IMAGE_KEY_FILE.unlink(missing_ok=True)
        recap = run_playbook()
        generated = IMAGE_KEY_FILE.read_text()
        IMAGE_KEY_FILE.write_text(host_key)  # images this host signed before stay valid
    assert generated not in recap.output
    assert re.fullmatch(r"[0-9a-f]{64}\n", generated) and generated != fleet_key + "\n"
    assert_root_only_key(host_key)
