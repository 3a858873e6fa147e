"""A client of EC2 instance metadata (IMDSv2) for Spot interruption notices; stdlib HTTP only.

IMDSv2 as the AWS SDKs use it: `PUT /latest/api/token` with the TTL header gives a session
token, sent with every GET; the token is renewed before it expires and dropped when the service
answers 401 (it restarted, or the token was revoked), then fetched again once for the same
request. http.client is used directly (not urllib) so that no HTTP proxy from the environment is
ever applied to the link-local metadata address.

Every failure (unreachable, timeout, an unexpected status, a body that is not what the
documentation says) raises ImdsError: the caller backs off and never acts on it.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_ENDPOINT = "http://169.254.169.254"
ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
TOKEN_PATH = "/latest/api/token"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
DEFAULT_TOKEN_TTL = 21600  # seconds; the service's maximum, as the SDKs request
MAX_TOKEN_TTL = 21600
# Renew this long before expiry (at most a quarter of the TTL).
TOKEN_RENEW_MARGIN = 60.0
REQUEST_TIMEOUT = 2.0
MAX_BODY_BYTES = 64 * 1024
MAX_TOKEN_BYTES = 4096
# The instance-action `action` values AWS documents; all three take the instance away.
ACTIONS = frozenset({"terminate", "stop", "hibernate"})
# "Instance IDs": i- followed by 8 or 17 hexadecimal characters (EC2 User Guide, Resource IDs).
_INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


class ImdsError(Exception):
    """Instance metadata could not be read, or did not say what it should."""


class Notice(NamedTuple):
    """A Spot interruption notice: what will happen to the instance, and when (UTC)."""

    action: str
    time: str

    def as_dict(self) -> dict[str, str]:
        return {"action": self.action, "time": self.time}


class Rebalance(NamedTuple):
    """A rebalance recommendation: elevated risk of interruption, no deadline."""

    notice_time: str


class Endpoint(NamedTuple):
    scheme: str
    host: str
    port: int


def parse_endpoint(url: str) -> Endpoint:
    """http://host[:port] (or https); ValueError for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise ValueError(f"metadata endpoint {url!r}: {error}") from error
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"metadata endpoint {url!r}: expected http://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"metadata endpoint {url!r}: expected no path, query or credentials")
    default_port = 443 if parts.scheme == "https" else 80
    return Endpoint(parts.scheme, parts.hostname, port or default_port)


class ImdsClient:
    """IMDSv2 at one endpoint, with a cached session token."""

    def __init__(
        self,
        endpoint: str,
        token_ttl: int = DEFAULT_TOKEN_TTL,
        timeout: float = REQUEST_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= token_ttl <= MAX_TOKEN_TTL:
            raise ValueError(f"token TTL {token_ttl}: must be 1 to {MAX_TOKEN_TTL} seconds")
        self.endpoint = parse_endpoint(endpoint)
        self.token_ttl = token_ttl
        self.timeout = timeout
        self.clock = clock
        self._token: str | None = None
        self._renew_at = 0.0

    def instance_action(self) -> Notice | None:
        """The Spot interruption notice, or None when there is none (404)."""
        body = self._get_optional(INSTANCE_ACTION_PATH)
        return None if body is None else parse_instance_action(body)

    def rebalance_recommendation(self) -> Rebalance | None:
        body = self._get_optional(REBALANCE_PATH)
        if body is None:
            return None
        document = _json_object(body, "rebalance recommendation")
        notice_time = document.get("noticeTime")
        if not isinstance(notice_time, str) or not _TIMESTAMP.match(notice_time):
            raise ImdsError(f"rebalance recommendation without a valid noticeTime: {body[:200]!r}")
        return Rebalance(notice_time)

    def instance_id(self) -> str:
        """This instance's id (`i-` and hex digits)."""
        body = self._get_optional(INSTANCE_ID_PATH)
        text = (body or b"").decode("ascii", "replace").strip()
        if not _INSTANCE_ID.match(text):
            raise ImdsError(f"GET {INSTANCE_ID_PATH}: not an instance id: {text[:80]!r}")
        return text

    def drop_token(self) -> None:
        self._token = None

    def _get_optional(self, path: str) -> bytes | None:
        """The body of a 200, None for a 404; a 401 drops the token and retries once."""
        for attempt in (1, 2):
            status, body = self._request("GET", path, {TOKEN_HEADER: self._session_token()})
            if status == 200:
                return body
            if status == 404:
                return None
            if status == 401 and attempt == 1:
                self.drop_token()
                continue
            raise ImdsError(f"GET {path}: HTTP {status}")
        raise AssertionError("unreachable")

    def _session_token(self) -> str:
        if self._token is not None and self.clock() < self._renew_at:
            return self._token
        self._token = None
        requested_at = self.clock()
        status, body = self._request("PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: str(self.token_ttl)})
        if status != 200:
            raise ImdsError(f"PUT {TOKEN_PATH}: HTTP {status} (IMDSv2 session token refused)")
        token = body.decode("ascii", "replace").strip()
        if not token or len(body) > MAX_TOKEN_BYTES or not token.isprintable():
            raise ImdsError(f"PUT {TOKEN_PATH}: the answer is not a token")
        margin = min(TOKEN_RENEW_MARGIN, self.token_ttl / 4)
        self._token, self._renew_at = token, requested_at + self.token_ttl - margin
        return token

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        endpoint = self.endpoint
        connection_class = (
            http.client.HTTPSConnection
            if endpoint.scheme == "https"
            else http.client.HTTPConnection
        )
        connection = connection_class(endpoint.host, endpoint.port, timeout=self.timeout)
        try:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            body = response.read(MAX_BODY_BYTES + 1)
        except (OSError, http.client.HTTPException) as error:
            raise ImdsError(f"{method} {path}: {type(error).__name__}: {error}") from error
        finally:
            connection.close()
        if len(body) > MAX_BODY_BYTES:
            raise ImdsError(f"{method} {path}: answer larger than {MAX_BODY_BYTES} bytes")
        return response.status, body


def parse_instance_action(body: bytes) -> Notice:
    """`{"action": "terminate", "time": "2017-09-18T08:22:00Z"}` -> Notice; ImdsError else."""
    document = _json_object(body, "instance-action")
    action, when = document.get("action"), document.get("time")
    if not isinstance(action, str) or action not in ACTIONS:
        raise ImdsError(f"instance-action with an unknown action: {body[:200]!r}")
    if not isinstance(when, str) or not _TIMESTAMP.match(when):
        raise ImdsError(f"instance-action without a valid time: {body[:200]!r}")
    return Notice(action, when)


def _json_object(body: bytes, what: str) -> dict[str, object]:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ImdsError(f"{what} is not JSON: {body[:200]!r}") from error
    if not isinstance(document, dict):
        raise ImdsError(f"{what} is not a JSON object: {body[:200]!r}")
    return document


def epoch_seconds(timestamp: str) -> float | None:
    """2026-11-30T17:00:00Z (IMDS's form, fractions allowed) as seconds since the epoch."""
    import calendar

    if not _TIMESTAMP.match(timestamp):
        return None
    try:
        return float(calendar.timegm(time.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None
