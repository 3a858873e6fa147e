"""HOST arguments of archctl remote, and the results table."""

from __future__ import annotations

import json

import pytest

from arch.cli.delivery.remote import print_results
from arch.remote.hosts import HostSpec, HostSpecError
from arch.remote.operations import HostResult


@pytest.mark.parametrize(
    ("text", "user", "host", "port"),
    [
        ("web1", None, "web1", None),
        ("ec2-user@10.0.0.5", "ec2-user", "10.0.0.5", None),
        ("root@127.0.0.1:2222", "root", "127.0.0.1", 2222),
        ("node.example.com:22", None, "node.example.com", 22),
        ("admin@[::1]:2200", "admin", "::1", 2200),
        ("[fe80::1]", None, "fe80::1", None),
    ],
)
def test_host_specs(text: str, user: str | None, host: str, port: int | None) -> None:
    assert HostSpec.parse(text) == HostSpec(text, host, user, port)


@pytest.mark.parametrize(
    "text",
    ["", "host:", "host:0", "host:70000", "host:ssh", "bad user@h", "-oProxyCommand=x", "[::1"],
)
def test_bad_host_specs(text: str) -> None:
    with pytest.raises(HostSpecError):
        HostSpec.parse(text)


def test_results_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    results = [
        HostResult("a", True, "verify", "archctl verify passed (9 checks)", 1.25),
        HostResult("root@b:2", False, "connect", "cannot connect to root@b:2: refused", 0.01),
    ]
    print_results(results, as_json=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["HOST", "RESULT", "STEP", "SECONDS", "DETAIL"]
    assert lines[1].split()[:4] == ["a", "ok", "verify", "1.2"]
    assert lines[2].split()[:4] == ["root@b:2", "FAILED", "connect", "0.0"]
    print_results(results, as_json=True)
    assert [entry["ok"] for entry in json.loads(capsys.readouterr().out)] == [True, False]
