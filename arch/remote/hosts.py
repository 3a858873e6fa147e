"""HOST arguments: `[user@]host[:port]`, with `[v6-address]:port` for IPv6."""

from __future__ import annotations

import re
from dataclasses import dataclass

HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


class HostSpecError(ValueError):
    """A HOST argument that is not [user@]host[:port]."""


@dataclass(frozen=True)
class HostSpec:
    text: str
    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> HostSpec:
        user, at, rest = text.rpartition("@")
        if at and USER.match(user) is None:
            raise HostSpecError(f"{text!r}: {user!r} is not a user name")
        port_text = ""
        if rest.startswith("["):
            host, bracket, after = rest[1:].partition("]")
            if not bracket or (after and not after.startswith(":")):
                raise HostSpecError(f"{text!r}: write an IPv6 host as [address]:port")
            port_text = after[1:]
            if not host or not all(c in "0123456789abcdefABCDEF:." for c in host):
                raise HostSpecError(f"{text!r}: {host!r} is not an IPv6 address")
        else:
            host, colon, port_text = rest.partition(":")
            if colon and not port_text:
                raise HostSpecError(f"{text!r}: the port is missing after ':'")
            if HOSTNAME.match(host) is None:
                raise HostSpecError(f"{text!r}: {host!r} is not a host name or address")
        port = None
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise HostSpecError(f"{text!r}: {port_text!r} is not a port (1-65535)")
            port = int(port_text)
        return cls(text=text, host=host, user=user or None, port=port)
