"""arch.checkpoint.criu_config: which CRIU configuration runc hands CRIU, read as CRIU reads it."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pytest

from arch.checkpoint import criu_config
from arch.checkpoint.criu_config import CriuConfig, CriuConfigError

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, "/etc/criu/runc.conf"),
        ({"annotations": {}}, "/etc/criu/runc.conf"),
        ({"annotations": {"other": "x"}}, "/etc/criu/runc.conf"),
        ({"annotations": {"org.criu.config": ""}}, None),
        ({"annotations": {"org.criu.config": "/etc/criu/mine.conf"}}, "/etc/criu/mine.conf"),
    ],
)
def test_the_file_runc_names(spec: dict[str, object], expected: str | None) -> None:
    """runc's handleCriuConfigurationFile: the annotation, none when empty, else runc.conf."""
    assert criu_config.config_file_for(spec) == expected


@pytest.mark.parametrize(
    ("text", "settings"),
    [
        ("log-file=custom.log\n", {"log_file": "custom.log"}),
        ("log-file custom.log\n", {"log_file": "custom.log"}),
        ("  log-file   spaced.log  # a comment\n", {"log_file": "spaced.log"}),
        ("# log-file=commented.log\ntcp-established\n", {}),
        ("log-f short.log\n", {"log_file": "short.log"}),  # getopt_long abbreviation
        ("log a.log\n", {}),  # ambiguous: log-file, log-pid, log-to-stderr
        ('log-file "with space.log"\n', {"log_file": "with space.log"}),
        ('log-file "q\\"uote.log"\n', {"log_file": 'q"uote.log'}),
        ("tree 1 -o dash.log\n", {"log_file": "dash.log"}),
        ("tree 1 -ojoined.log\n", {"log_file": "joined.log"}),
        ("work-dir=/var/tmp/w\nimages-dir /srv/i\n", {"work_dir": "/var/tmp/w",
                                                      "images_dir": "/srv/i"}),
        ("log-file=a.log\nlog-file=b.log\n", {"log_file": "b.log"}),
        ("root /x\nmanage-cgroups=soft\n", {}),
    ],
)  # fmt: skip
def test_settings_as_criu_parses_them(text: str, settings: dict[str, str]) -> None:
    assert criu_config.settings_of(text) == settings


def test_a_missing_file_is_no_configuration(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.conf")
    assert criu_config.read_config(missing) == CriuConfig(missing)
    assert criu_config.read_config(None) == CriuConfig()


def test_a_file_is_read_with_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    path.write_bytes(b"log-file=c.log\nwork-dir /w\n")
    config = criu_config.for_container({"annotations": {"org.criu.config": str(path)}})
    assert config == CriuConfig(
        str(path), hashlib.sha256(path.read_bytes()).hexdigest(), "c.log", "/w", None
    )


def test_log_path_follows_the_file(tmp_path: Path) -> None:
    assert CriuConfig().log_path("/work", "dump.log") == "/work/dump.log"
    assert CriuConfig(log_file="c.log").log_path("/work", "dump.log") == "/work/c.log"
    assert CriuConfig(log_file="/var/log/c.log").log_path("/w", "dump.log") == "/var/log/c.log"
    assert CriuConfig(work_dir="/elsewhere").log_path("/w", "restore.log") == (
        "/elsewhere/restore.log"
    )


def test_an_images_dir_is_refused() -> None:
    CriuConfig(path="/c.conf", log_file="x.log").check_images_stay()
    with pytest.raises(CriuConfigError, match="sets images-dir '/srv/i'"):
        CriuConfig(path="/c.conf", images_dir="/srv/i").check_images_stay()


def test_a_configuration_that_is_no_regular_file_is_an_error_not_a_wait(tmp_path: Path) -> None:
    """org.criu.config comes from the container: a FIFO there is refused, never waited on."""
    import os

    fifo = tmp_path / "runc.conf"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        criu_config.read_config(str(fifo))
