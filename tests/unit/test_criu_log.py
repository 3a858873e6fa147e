"""arch.checkpoint.criu_log: the CRIU error that explains a failure comes first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from arch.checkpoint.criu_log import cause_lines, log_tail, without_timestamp
from arch.shim.call import one_line

if TYPE_CHECKING:
    from pathlib import Path

# A real dump.log's errors (CRIU 4.2.1, a container with an established TCP connection).
TCP_DUMP_LOG = """(00.000000) Version: 4.2.1 (gitid 0)
(00.067463) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.100000) Dumping path for 5 fd via self 14 [/]
(00.102484) Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using --tcp-established option.
(00.102498) Error (criu/cr-dump.c:1545): Dump files (pid: 24270) failed with -1
(00.102573) 24270 was stopped
(00.178331) Error (criu/cr-dump.c:1975): Dumping FAILED.
"""  # noqa: E501


def test_the_cause_comes_before_what_criu_carried_on_from_and_its_summaries() -> None:
    causes = cause_lines(TCP_DUMP_LOG.splitlines())
    assert [without_timestamp(line) for line in causes] == [
        "Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using "
        "--tcp-established option.",
        "Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not "
        "permitted",
        "Error (criu/cr-dump.c:1545): Dump files (pid: 24270) failed with -1",
    ]


def test_the_one_line_refusal_names_the_cause(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text(TCP_DUMP_LOG)
    message = f"runc checkpoint exited 1: criu failed\ndump.log (last lines):\n{log_tail(str(log))}"
    print(one_line(message))
    assert one_line(message) == (
        "runc checkpoint exited 1: criu failed; CRIU: Error (criu/sk-inet.c:200): inet: "
        "Connected TCP socket, consider using --tcp-established option."
    )


def test_only_summaries_are_still_quoted() -> None:
    lines = ["(00.1) Error (criu/cr-dump.c:1975): Dumping FAILED."]
    assert cause_lines(lines) == lines


def test_an_unreadable_log_says_so(tmp_path: Path) -> None:
    assert log_tail(str(tmp_path / "absent.log")) == f"({tmp_path / 'absent.log'} unreadable)"


def test_a_log_that_is_a_fifo_is_reported_unreadable_at_once(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "restore.log"
    os.mkfifo(fifo)
    assert log_tail(str(fifo)) == f"({fifo} unreadable)"
