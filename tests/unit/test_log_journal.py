"""archctl services log to the journal (stderr with priority prefixes) only when systemd says
stderr is the journal stream; arch-runc never does."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

PROGRAM = """
import logging, sys
from arch.log import setup_logging
logger = setup_logging(sys.argv[1], "debug", journal=sys.argv[2] == "1")
logger.error("bad\\nsecond line")
logger.warning("careful")
logger.info("note")
logger.debug("detail")
"""


def run(tmp_path: Path, journal: bool, stream_matches: bool) -> tuple[str, str]:
    stderr_file = tmp_path / "stderr"
    with stderr_file.open("wb") as stderr:
        info = os.fstat(stderr.fileno())
        stream = f"{info.st_dev}:{info.st_ino}" if stream_matches else f"{info.st_dev}:1"
        subprocess.run(
            [sys.executable, "-c", PROGRAM, str(tmp_path / "arch.log"), "1" if journal else "0"],
            stderr=stderr,
            env={**os.environ, "JOURNAL_STREAM": stream},
            check=True,
        )
    return stderr_file.read_text(), (tmp_path / "arch.log").read_text()


def test_journal_lines_carry_priorities(tmp_path: Path) -> None:
    stderr, log = run(tmp_path, journal=True, stream_matches=True)
    assert stderr.splitlines() == [
        "<3>arch: bad", "<3>second line", "<4>arch: careful", "<6>arch: note", "<7>arch: detail",
    ]  # fmt: skip
    assert "ERROR" in log and "careful" in log


def test_no_journal_output_unless_asked_and_connected(tmp_path: Path) -> None:
    assert run(tmp_path, journal=False, stream_matches=True)[0] == ""
    assert run(tmp_path, journal=True, stream_matches=False)[0] == ""
