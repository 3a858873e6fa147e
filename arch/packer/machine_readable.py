"""Packer's `-machine-readable` output: `timestamp,target,type,data...` one event per line.

Packer escapes commas inside data as `%!(PACKER_COMMA)` and newlines as a literal `\\n`.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMA = "%!(PACKER_COMMA)"


@dataclass(frozen=True)
class MachineEvent:
    timestamp: int
    target: str  # the build ("null.local", "ecs.amazon-ebs.ecs"), empty for global events
    type: str  # "ui", "artifact", "version", "error-count", ...
    data: tuple[str, ...]

    @property
    def ui_level(self) -> str | None:
        """ "say", "message" or "error" for a ui event, else None."""
        return self.data[0] if self.type == "ui" and self.data else None

    @property
    def text(self) -> str:
        """A ui event's message, or the data joined by commas."""
        if self.type == "ui" and len(self.data) >= 2:
            return ",".join(self.data[1:])
        return ",".join(self.data)


def unescape(field: str) -> str:
    return field.replace(COMMA, ",").replace("\\n", "\n").replace("\\r", "\r")


def parse_line(line: str) -> MachineEvent | None:
    """One event, or None for a line that is not in the machine-readable format."""
    fields = line.rstrip("\r\n").split(",")
    if len(fields) < 3 or not fields[0].isdigit():
        return None
    return MachineEvent(
        timestamp=int(fields[0]),
        target=fields[1],
        type=fields[2],
        data=tuple(unescape(field) for field in fields[3:]),
    )
