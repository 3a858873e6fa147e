"""A real IMDSv2 HTTP server on 127.0.0.1 for the Spot tests, serving a notice on cue.

It implements the token flow the way EC2 does: `PUT /latest/api/token` with
X-aws-ec2-metadata-token-ttl-seconds (1..21600) returns a token valid for that long; a GET
without a valid, unexpired token gets 401. `revoke_tokens()` makes every issued token stale (as
after a metadata service restart). What instance-action answers is `mode`:
- "none": 404 (no notice), "notice": 200 with `notice` as JSON,
- "garbage": 200 with HTML, "malformed": 200 with truncated JSON, "unknown-action": 200 with a
  well-formed document whose action is not one AWS documents, "error": 500,
- "hangup": the connection is closed without an answer.
`stop()` takes the server down (connection refused); `start()` brings it back on the same port.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
NOTICE = {"action": "terminate", "time": "2026-11-30T17:00:00Z"}


class ImdsServer:
    def __init__(self) -> None:
        self.mode = "none"
        self.notice: dict[str, Any] = dict(NOTICE)
        self.rebalance: dict[str, Any] | None = None
        self.tokens: dict[str, float] = {}
        self.token_requests = 0
        self.unauthorized = 0
        self.gets: list[str] = []
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ImdsServer:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def valid_token(self, token: str | None) -> bool:
        with self.lock:
            expiry = self.tokens.get(token or "")
        return expiry is not None and time.monotonic() < expiry

    def issue_token(self, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.token_requests += 1
            self.tokens[token] = time.monotonic() + ttl
        return token


def _handler_for(imds: ImdsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            del format, args

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:
            if self.path != TOKEN_PATH:
                self._answer(404, b"")
                return
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                self._answer(400, b"bad TTL")
                return
            self._answer(200, imds.issue_token(int(ttl)).encode())

        def do_GET(self) -> None:
            with imds.lock:
                imds.gets.append(self.path)
            if not imds.valid_token(self.headers.get("X-aws-ec2-metadata-token")):
                with imds.lock:
                    imds.unauthorized += 1
                self._answer(401, b"")
                return
            if self.path == REBALANCE_PATH:
                if imds.rebalance is None:
                    self._answer(404, b"")
                else:
                    self._answer(200, json.dumps(imds.rebalance).encode(), "application/json")
                return
            if self.path != INSTANCE_ACTION_PATH:
                self._answer(404, b"")
                return
            mode = imds.mode
            if mode == "hangup":
                self.close_connection = True
                self.connection.close()
            elif mode == "notice":
                self._answer(200, json.dumps(imds.notice).encode(), "application/json")
            elif mode == "garbage":
                self._answer(200, b"<html><body>Service Unavailable</body></html>", "text/html")
            elif mode == "malformed":
                self._answer(200, b'{"action": "terminate", "time": ', "application/json")
            elif mode == "unknown-action":
                body = json.dumps({"action": "explode", "time": NOTICE["time"]}).encode()
                self._answer(200, body, "application/json")
            elif mode == "error":
                self._answer(500, b"internal error")
            else:
                self._answer(404, b"")

    return Handler
