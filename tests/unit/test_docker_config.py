"""Tests for arch.appliance.docker_config: merging the arch runtime into daemon.json."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from arch.appliance.atomic_write import FileEditError, absent_marker
from arch.appliance.docker_config import main, set_runtime, show_runtime_path

ARCH_RUNC = "/usr/local/bin/arch-runc"
REPO_ROOT = Path(__file__).resolve().parents[2]

# What the dockerd of the development machines runs with, plus keys a host may have.
EXISTING = {
    "bridge": "none",
    "iptables": False,
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def set_runtime_cli(
    capsys: pytest.CaptureFixture[str], config: Path, backup: Path, *extra: str
) -> tuple[int, dict, str]:
    code, out, err = cli(
        capsys,
        "set-runtime",
        "--config",
        str(config),
        "--name",
        "arch",
        "--path",
        ARCH_RUNC,
        "--backup",
        str(backup),
        *extra,
    )
    return code, (json.loads(out) if out else {}), err


def write_json(path: Path, value: object, indent: int | None = 2) -> bytes:
    raw = (json.dumps(value, indent=indent) + "\n").encode()
    path.write_bytes(raw)
    return raw


@pytest.fixture
def daemon_json(tmp_path: Path) -> Path:
    (tmp_path / "docker").mkdir()
    return tmp_path / "docker" / "daemon.json"


def test_runtime_is_merged_keeping_every_other_key(
    capsys: pytest.CaptureFixture[str], daemon_json: Path, tmp_path: Path
) -> None:
    original = write_json(daemon_json, EXISTING, indent=4)

    code, result, _ = set_runtime_cli(capsys, daemon_json, tmp_path / "backup" / "daemon.json")

    assert (code, result["changed"]) == (0, True)
    merged = json.loads(daemon_json.read_text())
    expected = json.loads(json.dumps(EXISTING))
    expected["runtimes"]["arch"] = {"path": ARCH_RUNC}
    assert merged == expected
    assert list(merged) == list(EXISTING)
    assert "default-runtime" not in merged
    assert daemon_json.read_text() == json.dumps(expected, indent=2) + "\n"
    assert (tmp_path / "backup" / "daemon.json").read_bytes() == original


def test_default_flag_sets_default_runtime(
    capsys: pytest.CaptureFixture[str], daemon_json: Path, tmp_path: Path
) -> None:
    write_json(daemon_json, {**EXISTING, "default-runtime": "nvidia"})
    code, result, _ = set_runtime_cli(capsys, daemon_json, tmp_path / "backup", "--default")
    assert (code, result["changed"]) == (0, True)
    assert json.loads(daemon_json.read_text())["default-runtime"] == "arch"


def test_other_default_runtime_is_left_without_default_flag(
    capsys: pytest.CaptureFixture[str], daemon_json: Path, tmp_path: Path
) -> None:
    write_json(daemon_json, {**EXISTING, "default-runtime": "nvidia"})
    set_runtime_cli(capsys, daemon_json, tmp_path / "backup")
    merged = json.loads(daemon_json.read_text())
    assert merged["default-runtime"] == "nvidia"
    assert merged["runtimes"]["arch"] == {"path": ARCH_RUNC}


def test_existing_entry_keeps_its_other_keys(daemon_json: Path, tmp_path: Path) -> None:
    write_json(daemon_json, {"runtimes": {"arch": {"path": "/old", "runtimeArgs": ["--debug"]}}})
    set_runtime(daemon_json, "arch", ARCH_RUNC, tmp_path / "backup")
    assert json.loads(daemon_json.read_text()) == {
        "runtimes": {"arch": {"path": ARCH_RUNC, "runtimeArgs": ["--debug"]}}
    }


def test_nothing_to_change_leaves_the_file_alone(
    capsys: pytest.CaptureFixture[str], daemon_json: Path, tmp_path: Path
) -> None:
    # Same content as we would write, in another layout: not rewritten.
    raw = write_json(
        daemon_json,
        {**EXISTING, "runtimes": {"arch": {"path": ARCH_RUNC}}, "default-runtime": "arch"},
        indent=None,
    )
    os.utime(daemon_json, ns=(1_000_000_000, 1_000_000_000))

    for extra in ((), ("--default",)):
        code, result, _ = set_runtime_cli(capsys, daemon_json, tmp_path / "backup", *extra)
        assert (code, result["changed"]) == (0, False)

    assert daemon_json.read_bytes() == raw
    assert daemon_json.stat().st_mtime_ns == 1_000_000_000
    assert not (tmp_path / "backup").exists()


def test_second_run_is_unchanged_with_identical_bytes(
    capsys: pytest.CaptureFixture[str], daemon_json: Path, tmp_path: Path
) -> None:
    write_json(daemon_json, EXISTING)
    set_runtime_cli(capsys, daemon_json, tmp_path / "backup", "--default")
    first = daemon_json.read_bytes()
    code, result, _ = set_runtime_cli(capsys, daemon_json, tmp_path / "backup", "--default")
    assert (code, result["changed"]) == (0, False)
    assert daemon_json.read_bytes() == first


def test_missing_file_is_created_and_restore_deletes_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    daemon_json = tmp_path / "etc" / "docker" / "daemon.json"
    backup = tmp_path / "backup" / "daemon.json"

    code, result, _ = set_runtime_cli(capsys, daemon_json, backup)

    assert (code, result["changed"]) == (0, True)
    assert daemon_json.read_text() == (
        "{\n"
        '  "runtimes": {\n'
        '    "arch": {\n'
        '      "path": "/usr/local/bin/arch-runc"\n'
        "    }\n"
        "  }\n"
        "}\n"
    )
    assert stat.S_IMODE(daemon_json.stat().st_mode) == 0o644
    assert absent_marker(backup).exists()
    assert not backup.exists()

    code, out, _ = cli(capsys, "restore", "--config", str(daemon_json), "--backup", str(backup))
    assert (code, json.loads(out)["changed"]) == (0, True)
    assert not daemon_json.exists()
    assert not absent_marker(backup).exists()


def test_empty_file_is_treated_as_empty_object(daemon_json: Path, tmp_path: Path) -> None:
    daemon_json.write_bytes(b"\n")
    result = set_runtime(daemon_json, "arch", ARCH_RUNC, tmp_path / "backup")
    assert result.changed
    assert json.loads(daemon_json.read_text()) == {"runtimes": {"arch": {"path": ARCH_RUNC}}}
    assert (tmp_path / "backup").read_bytes() == b"\n"


def test_restore_is_byte_for_byte_and_keeps_mode(
    capsys: pytest.CaptureFixture[str], daemon_json: Path, tmp_path: Path
) -> None:
    original = b'{"bridge": "none",   "iptables": false}  \n'
    daemon_json.write_bytes(original)
    daemon_json.chmod(0o600)
    backup = tmp_path / "backup"
    set_runtime_cli(capsys, daemon_json, backup, "--default")
    assert stat.S_IMODE(daemon_json.stat().st_mode) == 0o600

    code, out, _ = cli(capsys, "restore", "--config", str(daemon_json), "--backup", str(backup))

    assert (code, json.loads(out)["changed"]) == (0, True)
    assert daemon_json.read_bytes() == original
    assert stat.S_IMODE(daemon_json.stat().st_mode) == 0o600
    assert not backup.exists()
    code, out, _ = cli(capsys, "restore", "--config", str(daemon_json), "--backup", str(backup))
    assert (code, json.loads(out)["changed"]) == (0, False)
    assert daemon_json.read_bytes() == original


def test_existing_backup_is_never_overwritten(daemon_json: Path, tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    backup.write_text('{"pre": "arch"}\n')
    write_json(daemon_json, {"runtimes": {"arch": {"path": "/old"}}})
    set_runtime(daemon_json, "arch", ARCH_RUNC, backup)
    set_runtime(daemon_json, "arch", "/elsewhere/arch-runc", backup)
    assert backup.read_text() == '{"pre": "arch"}\n'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"bridge": "none",}\n', "malformed JSON"),
        (b'{"bridge": \n', "malformed JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"runtimes": ["arch"]}\n', '"runtimes" is not a JSON object'),
        (b'{"runtimes": {"arch": "/usr/bin/x"}}\n', '"runtimes.arch" is not a JSON object'),
        (b'{"caf\xe9": 1}\n', "malformed JSON"),
    ],
    ids=["trailing-comma", "truncated", "array", "runtimes-array", "entry-string", "not-utf8"],
)
def test_refused_files_are_left_untouched(
    capsys: pytest.CaptureFixture[str],
    daemon_json: Path,
    tmp_path: Path,
    content: bytes,
    message: str,
) -> None:
    daemon_json.write_bytes(content)
    os.utime(daemon_json, ns=(2_000_000_000, 2_000_000_000))

    code, result, err = set_runtime_cli(capsys, daemon_json, tmp_path / "backup")

    assert (code, result) == (1, {})
    assert message in err
    assert str(daemon_json) in err
    assert daemon_json.read_bytes() == content
    assert daemon_json.stat().st_mtime_ns == 2_000_000_000
    assert not (tmp_path / "backup").exists()


def test_runc_is_refused_as_runtime_name(
    capsys: pytest.CaptureFixture[str], daemon_json: Path, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as bad_usage:
        main(["set-runtime", "--config", str(daemon_json), "--name", "runc", "--path", ARCH_RUNC,
              "--backup", str(tmp_path / "backup")])  # fmt: skip
    assert bad_usage.value.code == 2
    assert "reserved by Docker" in capsys.readouterr().err
    with pytest.raises(FileEditError, match="reserved"):
        set_runtime(daemon_json, "runc", ARCH_RUNC, tmp_path / "backup")
    assert not daemon_json.exists()


def test_bad_usage_exits_2(daemon_json: Path) -> None:
    for argv in (
        [],
        ["set-runtime", "--config", str(daemon_json), "--backup", "b"],
        ["set-runtime", "--config", str(daemon_json), "--path", "", "--backup", "b"],
        ["set-runtime", "--config", str(daemon_json), "--name", "", "--path", "p", "--backup", "b"],
    ):
        with pytest.raises(SystemExit) as bad_usage:
            main(argv)
        assert bad_usage.value.code == 2


def test_show(capsys: pytest.CaptureFixture[str], daemon_json: Path, tmp_path: Path) -> None:
    assert cli(capsys, "show", "--config", str(daemon_json)) == (0, "", "")
    write_json(daemon_json, EXISTING)
    assert cli(capsys, "show", "--config", str(daemon_json)) == (0, "", "")
    assert show_runtime_path(daemon_json, "nvidia") == "nvidia-container-runtime"
    set_runtime(daemon_json, "arch", ARCH_RUNC, tmp_path / "backup")
    assert cli(capsys, "show", "--config", str(daemon_json)) == (0, ARCH_RUNC + "\n", "")


def test_non_ascii_values_are_kept_verbatim(daemon_json: Path, tmp_path: Path) -> None:
    daemon_json.write_text('{"labels": ["site=Zürich"]}\n', encoding="utf-8")
    set_runtime(daemon_json, "arch", ARCH_RUNC, tmp_path / "backup")
    assert '"site=Zürich"' in daemon_json.read_text(encoding="utf-8")


def test_runs_as_python_module(daemon_json: Path, tmp_path: Path) -> None:
    write_json(daemon_json, EXISTING)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [
        sys.executable, "-m", "arch.appliance.docker_config", "set-runtime",
        "--config", str(daemon_json), "--name", "arch", "--path", ARCH_RUNC, "--default",
        "--backup", str(tmp_path / "backup"),
    ]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    second = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["changed"] is True
    assert json.loads(second.stdout)["changed"] is False
