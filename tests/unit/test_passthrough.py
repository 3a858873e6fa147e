"""The Python arch-runc passes calls through to the real runc unchanged (exec, not spawn)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.unit import fake_runc

if TYPE_CHECKING:
    from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTAINERD_CREATE = [
    "--root", "/run/containerd/runc/default",
    "--log", "/run/b/log.json", "--log-format", "json",
    "create", "--bundle", "/run/b", "--pid-file", "/run/b/init.pid", "job-1",
]  # fmt: skip


def run_shim(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "arch.shim", *args],
        env={**env, "PYTHONPATH": REPO},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


Host = tuple[dict[str, str], "Path"]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """An environment whose arch.toml names a fake runc; returns (env, record prefix)."""
    binary, record = fake_runc.install(tmp_path)
    config = tmp_path / "arch.toml"
    config.write_text(f'runc = "{binary}"\nstate_dir = "{tmp_path}/state"\n')
    env = {"PATH": "/usr/bin:/bin", "ARCH_CONFIG": str(config), "CUSTOM": "kept as is"}
    return env, record


@pytest.mark.parametrize(
    "args",
    [
        ["state", "job-1"],
        CONTAINERD_CREATE,
        ["--root", "/r", "checkpoint", "--image-path", "/i", "--leave-running", "job-1"],
        ["exec", "--process", "/tmp/p.json", "--detach", "job-1", "sh", "-c", "echo 'a b'"],
        ["--version"],
        ["state", "with\nnewline", "--", "-weird"],
    ],
)
def test_same_argv_env_stdio_and_process(host: Host, args: list[str]) -> None:
    env, record = host
    shim = run_shim(args, env)
    stdout, stderr = shim.communicate(timeout=30)
    call = fake_runc.read_call(record)
    assert shim.returncode == 0
    assert call.argv[1:] == args
    assert call.pid == shim.pid, "runc must replace arch-runc (exec), not run as its child"
    assert call.env == {**env, "PYTHONPATH": REPO}
    assert stdout == b"fake runc stdout\n"
    assert stderr == b"fake runc stderr\n"


def test_exit_status_is_runc_s(host: Host) -> None:
    env, _ = host
    shim = run_shim(["kill", "job-1", "9"], {**env, "FAKE_RUNC_EXIT": "42"})
    shim.communicate(timeout=30)
    assert shim.returncode == 42


def test_no_signal_is_left_ignored(host: Host) -> None:
    """CPython ignores SIGPIPE/SIGXFSZ; runc must start with the caller's dispositions."""
    env, record = host
    run_shim(["state", "x"], env).communicate(timeout=30)
    through_shim = fake_runc.read_call(record).sigign
    subprocess.run([fake_runc.read_call(record).argv[0], "state", "x"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    assert through_shim == fake_runc.read_call(record).sigign


def test_malformed_config_still_passes_through(tmp_path: Path) -> None:
    binary, record = fake_runc.install(tmp_path)
    config = tmp_path / "arch.toml"
    config.write_text("this is [not toml\n")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "ARCH_CONFIG": str(config)}
    shim = run_shim(["state", "x"], env)
    _, stderr = shim.communicate(timeout=30)
    assert shim.returncode == 0
    assert stderr == b"fake runc stderr\n"
    assert fake_runc.read_call(record).argv == [str(binary), "state", "x"]


def test_missing_config_uses_runc_on_path(tmp_path: Path) -> None:
    binary, record = fake_runc.install(tmp_path)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "ARCH_CONFIG": str(tmp_path / "absent.toml")}
    shim = run_shim(["list"], env)
    shim.communicate(timeout=30)
    assert shim.returncode == 0
    assert fake_runc.read_call(record).argv == [str(binary), "list"]


def test_no_runc_anywhere_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from arch.shim import passthrough

    monkeypatch.setenv("ARCH_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(passthrough, "FALLBACK_DIRS", ())
    with pytest.raises(passthrough.RuncNotFound, match="set `runc` in"):
        passthrough.resolve_runc()


def test_configured_runc_that_does_not_exist(tmp_path: Path) -> None:
    config = tmp_path / "arch.toml"
    config.write_text(f'runc = "{tmp_path}/nope"\n')
    shim = run_shim(["state", "x"], {"PATH": "/usr/bin:/bin", "ARCH_CONFIG": str(config)})
    stdout, stderr = shim.communicate(timeout=30)
    assert shim.returncode == 127
    assert stdout == b""
    assert stderr.decode() == (
        f"arch-runc: cannot execute the real runc {tmp_path}/nope: No such file or directory\n"
    )



@pytest.mark.skipif(os.geteuid() != 0, reason="writes ARCH's default log file, /var/log/arch")
def test_malformed_config_is_logged_not_printed(tmp_path: Path) -> None:
    """The warning goes to ARCH's default log file, never to runc's streams."""
    from arch.config import HostConfig

    log_file = HostConfig("unused").log_file
    before = os.path.getsize(log_file) if os.path.exists(log_file) else 0
    fake_runc.install(tmp_path)
    config = tmp_path / "arch.toml"
    config.write_text("runc = [\n")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "ARCH_CONFIG": str(config)}
    stdout, stderr = run_shim(["state", "x"], env).communicate(timeout=30)
    assert (stdout, stderr) == (b"fake runc stdout\n", b"fake runc stderr\n")
    with open(log_file, "rb") as log:
        log.seek(before)
        logged = log.read().decode()
    assert f"pass-through uses the runc on PATH: {config}: malformed TOML" in logged


def test_run_runc_as_a_child_keeps_argv_environment_and_status(host: Host) -> None:
    """delete runs runc as a child (it acts afterwards): same argv, caller's env, runc's status."""
    env, record = host
    script = (
        "import sys; from arch.shim.passthrough import run_runc; "
        "sys.exit(run_runc(['delete', 'job-1']) + 100)"
    )
    child = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "PYTHONPATH": REPO, "FAKE_RUNC_EXIT": "3"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    call = fake_runc.read_call(record)
    assert child.returncode == 103
    assert call.argv[1:] == ["delete", "job-1"]
    assert call.env == {**env, "PYTHONPATH": REPO, "FAKE_RUNC_EXIT": "3"}
    assert child.stderr == b"fake runc stderr\n"


def test_run_runc_without_runc_is_a_clear_error(tmp_path: Path) -> None:
    from arch.shim import passthrough

    script = (
        "import sys; from arch.shim import passthrough; passthrough.FALLBACK_DIRS = (); "
        "from arch.config import HostConfig; "
        "sys.exit(passthrough.run_runc(['delete', 'x'], HostConfig('/nonexistent.toml')))"
    )
    child = subprocess.run(
        [sys.executable, "-c", script],
        env={"PATH": str(tmp_path), "PYTHONPATH": REPO},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert child.returncode == passthrough.EXIT_RUNC_UNAVAILABLE
    assert child.stderr.startswith(b"arch-runc: no real runc found")
