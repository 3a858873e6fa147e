"""archctl list / checkpoint: usage errors (exit 2), --help, argument forms, output helpers."""

from __future__ import annotations

import io

import pytest

from arch.cli.checkpoint import LiveProgress, PlainProgress
from arch.cli.main import main
from arch.cli.output import format_table, human_bytes
from arch.operator.checkpoint_all import Outcome, Target
from arch.operator.containerd import Task, parse_task_list


@pytest.mark.parametrize(
    "argv",
    [
        ["checkpoint"],  # neither --all nor a container
        ["checkpoint", "--all", "default/web"],  # both
        ["checkpoint", "no-slash"],
        ["checkpoint", "default/"],
        ["checkpoint", "/web"],
        ["checkpoint", "default/../etc"],
        ["checkpoint", "--all", "--parallel", "0"],
        ["checkpoint", "--all", "--parallel", "many"],
        ["list", "--bogus"],
        ["list", "extra"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        status = main(["--address", "/nonexistent.sock", *argv])
    except SystemExit as stop:
        status = int(stop.code or 0)
    assert status == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["list", "checkpoint"])
def test_help_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert "--json" in capsys.readouterr().out


def test_unreachable_containerd_is_a_failure_not_a_crash(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("ARCH_CONFIG", "/nonexistent/arch.toml")  # defaults
    assert main(["--address", "/nonexistent/containerd.sock", "list"]) == 1
    assert main(["--address", "/nonexistent/containerd.sock", "checkpoint", "--all"]) == 1
    assert "archctl checkpoint:" in capsys.readouterr().err


def test_task_list_rows() -> None:
    text = "TASK    PID     STATUS\nweb     1234    RUNNING\ndb      0       STOPPED\n"
    assert parse_task_list(text) == [Task("web", 1234, "RUNNING"), Task("db", 0, "STOPPED")]
    assert parse_task_list("TASK    PID     STATUS\n") == []


def test_table_and_sizes() -> None:
    table = format_table(("A", "LONGER", "C"), [("xyz", "1", "last"), ("", "22", "")])
    assert table.splitlines() == ["A    LONGER  C", "xyz  1       last", "     22"]
    assert [human_bytes(n) for n in (None, 0, 1536, 5 * 1024**3)] == [
        "-",
        "0 B",
        "1.5 KiB",
        "5.0 GiB",
    ]


@pytest.mark.parametrize(
    ("argument", "stops"),
    [
        ([], True),  # runc kill's default: SIGTERM
        (["15"], True),
        (["9"], True),
        (["SIGKILL"], True),
        (["term"], True),
        (["INT"], True),
        (["QUIT"], True),
        (["HUP"], False),
        (["SIGUSR1"], False),
        (["0"], False),
        (["10"], False),
    ],
)
def test_stop_signals(argument: list[str], stops: bool) -> None:
    from arch.shim.kill import is_stop_signal

    assert is_stop_signal(argument) is stops


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def outcome(name: str, status: str, reason: str = "checkpointed and stopped") -> Outcome:
    return Outcome("default", name, status, reason, 0.5, None, 2048 if status == "ok" else None)


def test_plain_progress_is_one_line_per_container() -> None:
    stream = io.StringIO()
    progress = PlainProgress(stream)
    progress.finished(outcome("web", "ok"), 1, 2)
    progress.finished(outcome("db", "failed", "CRIU said no"), 2, 2)
    assert stream.getvalue().splitlines() == [
        "[1/2] ok default/web 0.50s 2.0 KiB: checkpointed and stopped",
        "[2/2] failed default/db 0.50s -: CRIU said no",
    ]


def test_live_progress_rewrites_one_line_and_keeps_failures() -> None:
    stream = Terminal()
    progress = LiveProgress(stream, 2)
    progress.started(Target("default", "web", None))
    progress.finished(outcome("web", "ok"), 1, 2)
    progress.finished(outcome("db", "failed", "CRIU said no"), 2, 2)
    progress.close()
    text = stream.getvalue()
    assert "\r" in text
    assert "1 ok, 0 failed, 0 not attempted, 0 skipped, 0 running - 1/2 done" in text
    assert "failed default/db: CRIU said no\n" in text
    assert "0 running - 2/2 done" in text  # db failed before it started: never counted
    assert text.endswith("\r")  # the live line is cleared before the table
