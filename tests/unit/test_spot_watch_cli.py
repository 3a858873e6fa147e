"""`archctl spot-watch` as a process against a real IMDSv2 server on 127.0.0.1: it survives the
service going down, stale tokens, garbage and malformed JSON without acting, stops cleanly on
SIGTERM, and --once / bad usage / --help give the contract's exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arch.cli.main import main
from arch.spot.notice import notice_active, read_marker
from tests.imds_server import ImdsServer

POLL = "0.05"


@pytest.fixture
def host(tmp_path: Path) -> dict[str, str]:
    """Environment with a private arch.toml (state and log under tmp_path)."""
    config = tmp_path / "arch.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\nlog_file = "{tmp_path}/arch.log"\n'
        f'checkpoint_root = "{tmp_path}/checkpoint"\n'
    )
    environment = {**os.environ, "ARCH_CONFIG": str(config)}
    environment.pop("AWS_EC2_METADATA_SERVICE_ENDPOINT", None)
    return environment


def spot_watch(environment: dict[str, str], *args: str) -> list[str]:
    return [sys.executable, "-m", "arch.cli.main", "--address", "/nonexistent/containerd.sock",
            "spot-watch", *args]  # fmt: skip


def polls_after(imds: ImdsServer, count: int) -> object:
    return lambda: len(imds.gets) > count


def wait_until(predicate: object, timeout: float = 20.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_survives_every_bad_answer_then_acts_on_the_notice(
    imds: ImdsServer, host: dict[str, str], tmp_path: Path
) -> None:
    state_dir = str(tmp_path / "state")
    process = subprocess.Popen(
        spot_watch(host, "--endpoint", imds.endpoint, "--interval", POLL),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=host,
    )
    try:
        for mode in ("garbage", "malformed", "unknown-action", "error", "hangup", "none"):
            imds.mode = mode
            polled = polls_after(imds, len(imds.gets))
            assert wait_until(polled), f"no poll in mode {mode}"
        imds.revoke_tokens()
        unauthorized = imds.unauthorized
        assert wait_until(lambda: imds.unauthorized > unauthorized and len(imds.gets) > 3)
        imds.stop()
        time.sleep(0.3)
        imds.start()
        assert wait_until(lambda: len(imds.gets) >= 2)  # polling again after the outage
        assert process.poll() is None, "spot-watch exited"
        assert not notice_active(state_dir)

        imds.mode = "notice"
        assert wait_until(lambda: (read_marker(state_dir) or {}).get("outcome") is not None)
        outcome = (read_marker(state_dir) or {})["outcome"]
        assert outcome["ok"] is False  # containerd is not running here: recorded, not a crash
        assert "no socket at /nonexistent/containerd.sock" in outcome["problems"][0]
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "instance metadata unusable" in stderr
    assert "Spot interruption notice: terminate at" in stderr
    assert "Traceback" not in stderr
    assert stderr.count("checkpoint after the Spot notice finished") == 1


def test_once_exit_codes(imds: ImdsServer, host: dict[str, str], tmp_path: Path) -> None:
    def once(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(spot_watch(host, "--once", *extra), capture_output=True,
                              text=True, env=host, timeout=60, check=False)  # fmt: skip

    assert once("--endpoint", imds.endpoint).returncode == 0  # no notice
    imds.mode = "garbage"
    assert once("--endpoint", imds.endpoint).returncode == 1
    imds.mode = "none"
    host["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds.endpoint  # the SDKs' variable
    assert once().returncode == 0
    assert imds.token_requests == 3
    imds.mode = "notice"
    noticed = once()
    assert noticed.returncode == 1, noticed.stderr  # the run failed: no containerd here
    marker = read_marker(str(tmp_path / "state"))
    assert marker is not None and marker["notice"] == json.loads(json.dumps(imds.notice))


@pytest.mark.parametrize(
    "argv",
    [
        ["spot-watch", "--interval", "0"],
        ["spot-watch", "--interval", "soon"],
        ["spot-watch", "--token-ttl", "21601"],
        ["spot-watch", "--endpoint", "169.254.169.254"],
        ["spot-watch", "--endpoint", "http://host/latest"],
        ["spot-watch", "extra"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        status = main(argv)
    except SystemExit as stop:
        status = int(stop.code or 0)
    assert status == 2
    assert "error" in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["spot-watch", "--help"])
    assert stop.value.code == 0
    assert "--endpoint" in capsys.readouterr().out
