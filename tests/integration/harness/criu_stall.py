"""A CRIU that stalls: arch.toml's `criu` pointed at a wrapper that runs the real CRIU, except
that the CRIU runc starts for a chosen subcommand stops itself with SIGSTOP, as a hung CRIU
would (a crafted image once made CRIU's restore hang for good, see issue 21).

runc talks to CRIU over RPC (`criu swrk <fd>`), so the wrapper knows the operation from its
parent, runc: its command line names `restore` or `checkpoint`. What the wrapper does is chosen
by a mode file beside it, so a test can checkpoint normally and then stall the restore:
- `restore`: CRIU runs until its cgroup yard is mounted (`.criu.cgyard.*` in its work directory,
  one cgroup mount per hierarchy: what a hung restore leaves mounted), then a watcher stops it;
- `checkpoint`: CRIU stops before it starts its dump;
- anything else: the real CRIU, untouched (also for ARCH's own `criu --version`/`cpuinfo`).
When it stops CRIU, the wrapper writes the evidence file: the CRIU pid, runc's pid, and the
yard mounts CRIU had made (from CRIU's own mountinfo).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from arch.runc.process_group import ProcessIdentity

from . import procs
from .containerd import ContainerdNode

STALL_TIMEOUT = 120.0
OFF, RESTORE, CHECKPOINT = "off", "restore", "checkpoint"

_WRAPPER = """#!/bin/sh
# Written by the ARCH integration-test harness (criu_stall.py): a CRIU that stalls on purpose.
here={here}
mode=$(cat "$here/mode" 2>/dev/null)
runc_pid=$PPID
if [ "$1" = swrk ] && [ -n "$mode" ] && [ "$mode" != off ] &&
   tr '\\0' ' ' < "/proc/$runc_pid/cmdline" | grep -q " $mode "; then
  me=$$
  if [ "$mode" = checkpoint ]; then
    printf 'criu %s\\nrunc %s\\n' "$me" "$runc_pid" > "$here/evidence.tmp"
    mv "$here/evidence.tmp" "$here/evidence"
    kill -STOP "$me"
  else
    # Detached (double fork): CRIU must not find an unknown child of its own exiting.
    ( (
      while kill -0 "$me" 2>/dev/null; do
        # CRIU's own yard: in its work directory, its cwd once it started the restore.
        yard=" $(readlink "/proc/$me/cwd")/.criu.cgyard."
        # The yard's tmpfs and at least one hierarchy in it: CRIU is setting up cgroups.
        if [ "$(grep -cF "$yard" "/proc/$me/mountinfo" 2>/dev/null)" -ge 2 ]; then
          kill -STOP "$me"
          {{ printf 'criu %s\\nrunc %s\\n' "$me" "$runc_pid"
             grep -F "$yard" "/proc/$me/mountinfo" | awk '{{print "mount " $5}}'
          }} > "$here/evidence.tmp"
          mv "$here/evidence.tmp" "$here/evidence"
          exit 0
        fi
        sleep 0.005
      done
    ) </dev/null >/dev/null 2>&1 & )
  fi
fi
exec {real_criu} "$@"
"""


@dataclass(frozen=True)
class Stall:
    """What the wrapper saw when it stopped CRIU."""

    criu: ProcessIdentity | None  # None: gone before the test looked
    runc: ProcessIdentity | None
    criu_pid: int
    runc_pid: int
    yard_mounts: list[str]

    def survivors(self) -> list[str]:
        """The stopped CRIU and its runc, if either still runs (same pid and start time)."""
        return [f"{name} {identity.pid}"
                for name, identity in (("criu", self.criu), ("runc", self.runc))
                if identity is not None and identity.alive()]  # fmt: skip


class StallingCriu:
    """The wrapper installed for one node: `criu = <dir>/criu` in the node's arch.toml."""

    def __init__(self, directory: Path, real_criu: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        wrapper = directory / "criu"  # named criu: runc >= 1.2 finds CRIU on PATH only
        wrapper.write_text(_WRAPPER.format(here=_quote(directory), real_criu=_quote(real_criu)))
        os.chmod(wrapper, 0o755)
        self.set(OFF)

    @classmethod
    def install(cls, node: ContainerdNode) -> StallingCriu:
        real_criu = _configured_criu(node.arch.config_file) or "/usr/local/sbin/criu"
        stalling = cls(node.base_dir / "stalling-criu", real_criu)
        text = re.sub(r"(?m)^criu = .*\n", "", node.arch.config_file.read_text())
        node.arch.config_file.write_text(text + f'criu = "{stalling.directory / "criu"}"\n')
        return stalling

    def set(self, mode: str) -> None:
        (self.directory / "mode").write_text(mode)
        (self.directory / "evidence").unlink(missing_ok=True)

    def wait_for_stall(self, timeout: float = STALL_TIMEOUT) -> Stall:
        evidence = self.directory / "evidence"
        assert procs.wait_until(evidence.exists, timeout, interval=0.01), (
            f"CRIU was not stopped within {timeout} s"
        )
        fields: dict[str, list[str]] = {}
        for line in evidence.read_text().splitlines():
            key, _, value = line.partition(" ")
            fields.setdefault(key, []).append(value)
        criu_pid, runc_pid = int(fields["criu"][0]), int(fields["runc"][0])
        return Stall(ProcessIdentity.of(criu_pid), ProcessIdentity.of(runc_pid), criu_pid,
                     runc_pid, fields.get("mount", []))  # fmt: skip


def _configured_criu(config_file: Path) -> str | None:
    match = re.search(r'(?m)^criu = "([^"]+)"$', config_file.read_text())
    return match.group(1) if match else None


def _quote(path: object) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"
