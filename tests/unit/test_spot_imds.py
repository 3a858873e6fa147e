"""The IMDSv2 client against a real HTTP server on 127.0.0.1 (tests/imds_server.py)."""

from __future__ import annotations

import pytest

from arch.spot.imds import ImdsClient, ImdsError, Notice, parse_endpoint, parse_instance_action
from tests.imds_server import NOTICE, ImdsServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_no_notice_is_none_and_one_token_serves_many_polls(imds: ImdsServer) -> None:
    client = ImdsClient(imds.endpoint)
    assert [client.instance_action() for _ in range(3)] == [None, None, None]
    assert imds.token_requests == 1
    assert imds.unauthorized == 0


def test_notice_on_cue(imds: ImdsServer) -> None:
    client = ImdsClient(imds.endpoint)
    assert client.instance_action() is None
    imds.mode = "notice"
    assert client.instance_action() == Notice("terminate", NOTICE["time"])


def test_token_renewed_before_it_expires(imds: ImdsServer) -> None:
    clock = Clock()
    client = ImdsClient(imds.endpoint, token_ttl=8, clock=clock)
    client.instance_action()
    clock.now += 5.9  # renewal margin: a quarter of the TTL (2 s) before expiry
    client.instance_action()
    assert imds.token_requests == 1
    clock.now += 0.2
    client.instance_action()
    assert imds.token_requests == 2
    assert imds.unauthorized == 0


def test_stale_token_dropped_on_401_and_request_retried(imds: ImdsServer) -> None:
    client = ImdsClient(imds.endpoint)
    client.instance_action()
    imds.revoke_tokens()
    imds.mode = "notice"
    assert client.instance_action() == Notice("terminate", NOTICE["time"])
    assert (imds.unauthorized, imds.token_requests) == (1, 2)


def test_persistent_401_is_an_error(imds: ImdsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    client = ImdsClient(imds.endpoint)
    monkeypatch.setattr(imds, "valid_token", lambda token: False)
    with pytest.raises(ImdsError, match="HTTP 401"):
        client.instance_action()
    assert imds.unauthorized == 2  # one retry with a fresh token, then give up


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("garbage", "not JSON"),
        ("malformed", "not JSON"),
        ("unknown-action", "unknown action"),
        ("error", "HTTP 500"),
        ("hangup", "RemoteDisconnected"),
    ],
)
def test_bad_answers_raise(imds: ImdsServer, mode: str, message: str) -> None:
    imds.mode = mode
    with pytest.raises(ImdsError, match=message):
        ImdsClient(imds.endpoint).instance_action()


def test_service_down_raises_and_recovers(imds: ImdsServer) -> None:
    client = ImdsClient(imds.endpoint, timeout=1.0)
    client.instance_action()
    imds.stop()
    with pytest.raises(ImdsError, match=r"Connection refused|ConnectionRefused"):
        client.instance_action()
    imds.start()  # same port, new process state: the old token is unknown there
    imds.revoke_tokens()
    assert client.instance_action() is None


def test_rebalance_recommendation(imds: ImdsServer) -> None:
    client = ImdsClient(imds.endpoint)
    assert client.rebalance_recommendation() is None
    imds.rebalance = {"noticeTime": "2026-11-30T16:50:00Z"}
    recommendation = client.rebalance_recommendation()
    assert recommendation is not None and recommendation.notice_time == "2026-11-30T16:50:00Z"


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"action": "stop"}',
        b'{"action": "stop", "time": "tomorrow"}',
        b'{"action": 3, "time": "2026-11-30T17:00:00Z"}',
        b"\xff\xfe",
    ],
)
def test_instance_action_documents_refused(body: bytes) -> None:
    with pytest.raises(ImdsError):
        parse_instance_action(body)


def test_instance_action_documents_accepted() -> None:
    for action in ("terminate", "stop", "hibernate"):
        body = f'{{"action": "{action}", "time": "2026-11-30T17:00:00Z"}}'.encode()
        assert parse_instance_action(body) == Notice(action, "2026-11-30T17:00:00Z")


def test_endpoints() -> None:
    assert parse_endpoint("http://169.254.169.254") == ("http", "169.254.169.254", 80)
    assert parse_endpoint("http://127.0.0.1:8080/") == ("http", "127.0.0.1", 8080)
    assert parse_endpoint("http://[fd00:ec2::254]") == ("http", "fd00:ec2::254", 80)
    for bad in ("169.254.169.254", "ftp://x", "http://", "http://h/latest", "http://h:99999"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    with pytest.raises(ValueError):
        ImdsClient("http://127.0.0.1", token_ttl=0)
