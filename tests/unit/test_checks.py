"""archctl verify's checks against hosts laid out in tmp dirs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest

from arch.appliance import checks
from arch.config import HostConfig

if TYPE_CHECKING:
    from pathlib import Path


def script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def target(tmp_path: Path, runc: str | None, **overrides: str) -> checks.VerifyTarget:
    config = HostConfig(
        str(tmp_path / "arch.toml"),
        runc=runc,
        checkpoint_root=str(tmp_path / "checkpoint"),
        state_dir=str(tmp_path / "state"),
    )
    fields = {
        "config": config,
        "arch_runc": str(tmp_path / "arch-runc"),
        "containerd_config": str(tmp_path / "config.toml"),
        "containerd_address": str(tmp_path / "containerd.sock"),
        "docker_config": str(tmp_path / "daemon.json"),
        "docker_socket": str(tmp_path / "docker.sock"),
        **overrides,
    }
    return checks.VerifyTarget(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("runc version 1.1.5+ds1\ncommit: x", (1, 1, 5)),
        ("Version: 4.2.1\n", (4, 2, 1)),
        ("runc version 1.3.0-rc.1", (1, 3, 0)),
        ("no version here", ()),
    ],
)
def test_parse_version(text: str, version: tuple[int, ...]) -> None:
    assert checks.parse_version(text) == version


def test_runc_missing_from_config_fails(tmp_path: Path) -> None:
    result = checks.check_runc(target(tmp_path, None))
    assert result.status == checks.FAIL
    assert "not set" in result.detail


def test_runc_too_old_fails(tmp_path: Path) -> None:
    runc = script(tmp_path / "runc", 'echo "runc version 1.0.3"')
    assert checks.check_runc(target(tmp_path, runc)).status == checks.FAIL


def test_runc_ok(tmp_path: Path) -> None:
    runc = script(tmp_path / "runc", 'echo "runc version 1.1.5+ds1"')
    result = checks.check_runc(target(tmp_path, runc))
    assert result == checks.CheckResult("runc", checks.OK, f"{runc} 1.1.5")


def test_arch_runc_must_answer_like_runc(tmp_path: Path) -> None:
    runc = script(tmp_path / "runc", 'echo "runc version 1.1.5"')
    script(tmp_path / "arch-runc", 'echo "runc version 1.1.5"')
    assert checks.check_arch_runc(target(tmp_path, runc)).status == checks.OK
    script(tmp_path / "arch-runc", 'echo "something else"')
    assert checks.check_arch_runc(target(tmp_path, runc)).status == checks.FAIL


def test_containerd_wiring(tmp_path: Path) -> None:
    arch_runc = str(tmp_path / "arch-runc")
    config = tmp_path / "config.toml"
    assert checks.check_containerd_wiring(target(tmp_path, None)).status == checks.FAIL
    config.write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n'
        f'BinaryName = "{arch_runc}"\n'
    )
    assert checks.check_containerd_wiring(target(tmp_path, None)).status == checks.OK
    config.write_text("version = 2\n")
    assert checks.check_containerd_wiring(target(tmp_path, None)).status == checks.FAIL
    config.write_text("version = [\n")
    assert checks.check_containerd_wiring(target(tmp_path, None)).status == checks.FAIL


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own directories as root")
def test_storage_must_be_private_and_root_owned(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir(mode=0o700)
    (tmp_path / "state").mkdir(mode=0o755)
    os.chmod(tmp_path / "state", 0o755)
    result = checks.check_storage(target(tmp_path, None))
    assert result.status == checks.FAIL
    assert "state: mode 0755, must be 0700" in result.detail
    os.chmod(tmp_path / "state", 0o700)
    assert checks.check_storage(target(tmp_path, None)).status == checks.OK


def test_containerd_service_needs_a_listening_socket(tmp_path: Path) -> None:
    import socket

    sock_path = str(tmp_path / "containerd.sock")
    assert checks.check_containerd_service(target(tmp_path, None)).status == checks.FAIL
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(sock_path)
        listener.listen(1)
        assert checks.check_containerd_service(target(tmp_path, None)).status == checks.OK


def test_verify_exit_status_and_json(tmp_path: Path) -> None:
    config = tmp_path / "arch.toml"
    config.write_text("runc = ")
    result = subprocess.run(
        [sys.executable, "-m", "arch.cli.main", "verify", "--json"],
        env={**os.environ, "ARCH_CONFIG": str(config)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert [(c["name"], c["status"]) for c in document["checks"]] == [("config", "fail")]
    assert "malformed TOML" in document["checks"][0]["detail"]
    usage = subprocess.run(
        [sys.executable, "-m", "arch.cli.main", "verify", "--bogus"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert usage.returncode == 2 and "unrecognized arguments" in usage.stderr


def start_fake_watcher(*archctl_args: str) -> subprocess.Popen[bytes]:
    """A real process whose argv reads like `archctl [ARGS...]` (python -c keeps extra args)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "/opt/x/bin/archctl", *archctl_args],
        stdin=subprocess.DEVNULL,
    )
    # Popen may return (vfork) before the kernel has set up the new argv: cmdline is empty then.
    deadline = time.monotonic() + 10
    while not checks.process_argv(f"/proc/{process.pid}/cmdline"):
        if time.monotonic() > deadline:
            stop_process(process)
            pytest.fail(f"pid {process.pid} shows no argv in /proc after 10 s")
        time.sleep(0.01)
    return process


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=10)


def announce(state_dir: Path, process: subprocess.Popen[bytes], address: str) -> None:
    """Write the presence file `archctl watch-exits` writes, for the fake watcher `process`."""
    from arch.container import exit_watch
    from arch.runc.process_group import ProcessIdentity

    identity = ProcessIdentity.of(process.pid)
    assert identity is not None
    state_dir.mkdir(parents=True, exist_ok=True)
    document = {"pid": identity.pid, "start": identity.start, "boot": exit_watch._boot_id(),
                "address": address}  # fmt: skip
    (state_dir / f"{exit_watch.PRESENCE_PREFIX}{process.pid}").write_text(json.dumps(document))


def test_exit_watcher_running_for_this_containerd_is_ok(tmp_path: Path) -> None:
    verify_target = target(tmp_path, None)
    watcher = start_fake_watcher("--address", verify_target.containerd_address, "watch-exits")
    try:
        announce(tmp_path / "state", watcher, verify_target.containerd_address)
        result = checks.check_exit_watcher(verify_target)
        assert result.status == checks.OK
        assert str(watcher.pid) in result.detail
    finally:
        stop_process(watcher)


def test_a_watcher_that_is_starting_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify right after the watcher was started (the role, user data): the process runs but
    has not announced itself yet."""
    monkeypatch.setattr(checks, "ANNOUNCE_WAIT_SECONDS", 60.0)
    verify_target = target(tmp_path, None)
    watcher = start_fake_watcher("--address", verify_target.containerd_address, "watch-exits")
    late = threading.Timer(
        0.5, announce, args=(tmp_path / "state", watcher, verify_target.containerd_address)
    )
    late.start()
    try:
        result = checks.check_exit_watcher(verify_target)
        assert result.status == checks.OK, result
    finally:
        late.cancel()
        late.join()
        stop_process(watcher)


def test_exit_watcher_that_records_elsewhere_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher of this containerd that does not announce itself in this host's state dir
    (another arch.toml, an older ARCH): deletes here would not wait for it."""
    monkeypatch.setattr(checks, "ANNOUNCE_WAIT_SECONDS", 0.3)
    verify_target = target(tmp_path, None)
    watcher = start_fake_watcher("--address", verify_target.containerd_address, "watch-exits")
    try:
        announce(tmp_path / "other-state", watcher, verify_target.containerd_address)
        result = checks.check_exit_watcher(verify_target)
        assert result.status == checks.FAIL
        assert f"(pid {watcher.pid}) does not record into {tmp_path / 'state'}" in result.detail
    finally:
        stop_process(watcher)


def test_announcement_of_a_dead_watcher_counts_for_nothing(tmp_path: Path) -> None:
    verify_target = target(tmp_path, None)
    watcher = start_fake_watcher("--address", verify_target.containerd_address, "watch-exits")
    announce(tmp_path / "state", watcher, verify_target.containerd_address)
    stop_process(watcher)
    result = checks.check_exit_watcher(verify_target)
    assert result.status == checks.FAIL
    assert result.detail.startswith(checks.EXIT_WATCHER_MISSING)


def test_exit_watcher_for_another_containerd_fails(tmp_path: Path) -> None:
    other_socket = str(tmp_path / "other.sock")
    watcher = start_fake_watcher(f"--address={other_socket}", "watch-exits")
    try:
        announce(tmp_path / "state", watcher, other_socket)
        assert (watcher.pid, other_socket) in checks.exit_watchers()
        result = checks.check_exit_watcher(target(tmp_path, None))
        assert result.status == checks.FAIL
        assert result.detail.startswith(checks.EXIT_WATCHER_MISSING)
        assert other_socket in result.detail
    finally:
        stop_process(watcher)


def test_exit_watcher_gone_after_it_stops(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "containerd.sock")
    watcher = start_fake_watcher("--address", socket_path, "watch-exits")
    stop_process(watcher)
    assert all(pid != watcher.pid for pid, _ in checks.exit_watchers())


def fake_proc(tmp_path: Path, argvs: dict[int, list[str]]) -> str:
    proc_root = tmp_path / "proc"
    for pid, argv in argvs.items():
        (proc_root / str(pid)).mkdir(parents=True)
        (proc_root / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (proc_root / "self").mkdir(parents=True, exist_ok=True)
    (proc_root / "7").mkdir()  # a process that exited between listdir and open: no cmdline
    return str(proc_root)


def test_exit_watchers_reads_argv_from_proc(tmp_path: Path) -> None:
    proc_root = fake_proc(
        tmp_path,
        {
            10: ["/opt/arch/venv/bin/python", "/usr/local/bin/archctl", "watch-exits"],
            11: ["/usr/local/bin/archctl", "--address", "/s.sock", "watch-exits"],
            12: ["/usr/local/bin/archctl", "verify"],
            13: ["/bin/sh", "-c", "echo archctl watch-exits"],
            14: ["/usr/bin/grep", "watch-exits", "/var/log/archctl"],
        },
    )
    assert checks.exit_watchers(proc_root) == [(10, None), (11, "/s.sock")]


def test_no_exit_watcher_fails_with_the_remedy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc_root = fake_proc(tmp_path, {20: ["/usr/local/bin/archctl", "verify"]})
    monkeypatch.setattr(checks, "PROC_ROOT", proc_root)
    result = checks.check_exit_watcher(target(tmp_path, None))
    assert result == checks.CheckResult(
        "exit watcher",
        checks.FAIL,
        "not running: images of containers that exit 0 are never removed (start arch-exit-watch)",
    )


def test_exit_watcher_is_checked_after_containerd() -> None:
    order = list(checks.CHECKS)
    assert (
        order.index(checks.check_exit_watcher) == order.index(checks.check_containerd_service) + 1
    )


def test_criu_check_uses_the_configured_criu(tmp_path: Path) -> None:
    criu = script(tmp_path / "criu", 'case "$1" in --version) echo "Version: 4.2.1";; '
                  'check) echo "Looks good.";; esac')  # fmt: skip
    verify_target = target(tmp_path, None)._replace(
        config=HostConfig(str(tmp_path / "arch.toml"), criu=criu)
    )
    result = checks.check_criu(verify_target)
    assert result == checks.CheckResult("criu", checks.OK, f"{criu} 4.2.1, criu check: Looks good.")


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:40 / /mnt/efs rw,relatime shared:20 - nfs4 fs-1.efs.example:/ rw,vers=4.1
41 40 0:41 / /mnt/efs/local\\040disk rw shared:21 - xfs /dev/sdb rw
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/mnt/efs/teams/a", "nfs4"),
        ("/mnt/efs", "nfs4"),
        ("/mnt/efsx", "ext4"),
        ("/mnt/efs/local disk/ckpt", "xfs"),
        ("/checkpoint", "ext4"),
    ],
)
def test_filesystem_type_of_a_path(tmp_path: Path, path: str, fstype: str) -> None:
    from arch.appliance.mounts import filesystem_type

    (tmp_path / "mountinfo").write_text(MOUNTINFO)
    assert filesystem_type(path, str(tmp_path / "mountinfo")) == fstype


def test_unsigned_modes_are_reported_and_allowing_them_on_shared_storage_warned(
    tmp_path: Path,
) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    path = str(tmp_path / "arch.toml")
    allowing = target(tmp_path, None)._replace(
        config=HostConfig(path, image_key_file=None, unsigned_images="allow")
    )
    result = checks.check_signing(allowing, str(mountinfo))
    assert (result.status, result.detail) == (checks.OK, 'off: images are not signed '
        '(image_key_file = ""); unsigned images restore (unsigned_images = "allow")')  # fmt: skip
    refusing = allowing._replace(config=HostConfig(path, image_key_file=None))
    result = checks.check_signing(refusing, str(mountinfo))
    assert result.status == checks.FAIL
    assert "this host's own images never restore" in result.detail
    shared = allowing._replace(config=HostConfig(
        path, checkpoint_root="/checkpoint", allowed_roots=("/checkpoint", "/mnt/efs/teams"),
        image_key_file=None, unsigned_images="allow",
    ))  # fmt: skip
    result = checks.check_signing(shared, str(mountinfo))
    assert result.status == checks.WARN
    assert "shared storage: /mnt/efs/teams (nfs4)" in result.detail
    assert 'unsigned_images = "refuse"' in result.detail


def test_a_missing_default_key_fails_the_check(tmp_path: Path) -> None:
    config = HostConfig(str(tmp_path / "arch.toml"), image_key_file=str(tmp_path / "none.key"))
    result = checks.check_signing(target(tmp_path, None)._replace(config=config))
    assert result.status == checks.FAIL
    assert "none.key: No such file or directory" in result.detail


@pytest.mark.root  # the key file must be owned by root
def test_signing_on_needs_a_usable_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "image.key"
    key_file.write_text("k" * 64 + "\n")
    os.chmod(key_file, 0o600)
    signed = target(tmp_path, None)._replace(config=HostConfig(
        str(tmp_path / "arch.toml"), image_key_file=str(key_file),
    ))
    result = checks.check_signing(signed)
    assert (result.status, result.detail) == (
        checks.OK, f"on: images signed with {key_file}; unsigned images refused"
    )
    old_key = tmp_path / "old.key"
    old_key.write_text("o" * 64 + "\n")
    os.chmod(old_key, 0o400)
    rotating = signed._replace(config=HostConfig(
        str(tmp_path / "arch.toml"), image_key_file=str(key_file),
        image_verify_key_files=(str(old_key),),
    ))  # fmt: skip
    assert checks.check_signing(rotating).detail == (
        f"on: images signed with {key_file}; also accepted: {old_key}; unsigned images refused"
    )
    os.chmod(key_file, 0o644)
    result = checks.check_signing(signed)
    assert result.status == checks.FAIL and "mode 0644" in result.detail
    assert "k" * 64 not in result.detail
