"""Which SSH host keys `archctl remote` trusts: OpenSSH's known_hosts files, read as ssh reads them.

- Keys come from /etc/ssh/ssh_known_hosts, the user's ~/.ssh/known_hosts and every
  `--known-hosts FILE` (OpenSSH's GlobalKnownHostsFile and UserKnownHostsFile).
- A host whose key matches an entry is accepted.
- A host listed with another key is refused, always (paramiko raises BadHostKeyException before
  any policy is asked; `describe_changed_key` words it).
- A host not listed is refused, unless `--accept-new` (OpenSSH's StrictHostKeyChecking=accept-new):
  then its key is appended to the first --known-hosts file, else to ~/.ssh/known_hosts, so the
  next run checks it.
- `@revoked` keys are never accepted as new, whatever host pattern the line names.
  `@cert-authority` lines are skipped: certificates are not supported (a host only trusted
  through a CA is an unknown host).

paramiko (arch[delivery]) is not imported here: the policies below are duck-typed.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GLOBAL_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
ACCEPT_NEW_HINT = "verify its fingerprint and add it to known_hosts, or run with --accept-new"


class KnownHostsError(Exception):
    """A --known-hosts file that cannot be used (bad usage: nothing was contacted)."""


class HostKeyRefused(Exception):
    """The host's key is unknown (without --accept-new) or revoked: the connection is dropped
    before authentication."""


def user_known_hosts() -> Path:
    return Path(os.path.expanduser("~/.ssh/known_hosts"))


def fingerprint(key: Any) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko key: `SHA256:base64-without-padding`."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def describe_key(key: Any) -> str:
    return f"{key.get_name()} {fingerprint(key)}"


@dataclass(frozen=True)
class HostKeyTrust:
    """The known_hosts files to read, and where --accept-new records new keys (None: refuse)."""

    files: tuple[Path, ...]
    record_to: Path | None = None
    revoked: frozenset[bytes] = field(default=frozenset())

    @classmethod
    def from_options(cls, extra_files: list[str], accept_new: bool) -> HostKeyTrust:
        """The global and user files that exist plus every `--known-hosts FILE`, which must be
        readable (or, with --accept-new, may be created)."""
        given = [Path(name).expanduser() for name in extra_files]
        for path in given:
            _check_given_file(path, accept_new)
        user_file = user_known_hosts()
        files = [path for path in (GLOBAL_KNOWN_HOSTS, user_file) if path.is_file()]
        files += [path for path in given if path.is_file() and path not in files]
        record_to = (given[0] if given else user_file) if accept_new else None
        return cls(tuple(files), record_to, frozenset(_revoked_keys(files)))

    def describe_files(self) -> str:
        return ", ".join(str(path) for path in self.files) or "no known_hosts file"

    def apply(self, client: Any) -> None:
        """Load the keys into a paramiko SSHClient and set the policy for unknown hosts."""
        for path in self.files:
            load_into(client.get_host_keys(), path)
        if self.record_to is None:
            client.set_missing_host_key_policy(RefuseUnknownHost(self))
        else:
            client.set_missing_host_key_policy(RecordNewHost(self))


def _check_given_file(path: Path, accept_new: bool) -> None:
    if path.is_file():
        if not os.access(path, os.R_OK):
            raise KnownHostsError(f"--known-hosts {path}: not readable")
        return
    if path.exists():
        raise KnownHostsError(f"--known-hosts {path}: not a regular file")
    if not accept_new:
        raise KnownHostsError(
            f"--known-hosts {path}: no such file (with --accept-new it is created)"
        )
    if not path.parent.is_dir():
        raise KnownHostsError(f"--known-hosts {path}: directory {path.parent} does not exist")


def load_into(host_keys: Any, path: Path) -> None:
    """The plain `HOSTS TYPE KEY` lines of a known_hosts file into a paramiko HostKeys.

    Not HostKeys.load: it raises on the first `@cert-authority` or `@revoked` line (it reads
    the marker as a host name and the key type as the key), so a file with one such line
    would lose every entry. Marker lines are skipped here (revoked keys: _revoked_keys); so
    are lines paramiko cannot read (unknown key types), as ssh skips them."""
    from paramiko.hostkeys import HostKeyEntry, InvalidHostKey
    from paramiko.ssh_exception import SSHException

    for line in _read_lines(path):
        if line.startswith("@"):
            continue
        try:
            entry = HostKeyEntry.from_line(line)
        except (InvalidHostKey, SSHException):
            continue
        if entry is None:
            continue
        for name in entry.hostnames:
            host_keys.add(name, entry.key.get_name(), entry.key)


def _read_lines(path: Path) -> list[str]:
    """The entry lines of a known_hosts file (no blanks, no comments)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise KnownHostsError(f"cannot read {path}: {error.strerror or error}") from None
    stripped = (line.strip() for line in text.splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def _revoked_keys(files: list[Path]) -> set[bytes]:
    """The key blobs of every `@revoked HOSTS TYPE BASE64` line."""
    revoked: set[bytes] = set()
    for path in files:
        for line in _read_lines(path):
            fields = line.split()
            if len(fields) >= 4 and fields[0] == "@revoked":
                try:
                    revoked.add(base64.b64decode(fields[3], validate=True))
                except binascii.Error:
                    continue  # not a key: nothing to revoke
    return revoked


# The policies are duck-typed paramiko MissingHostKeyPolicy objects (SSHClient only calls
# missing_host_key), so this module imports without paramiko.
class RefuseUnknownHost:
    def __init__(self, trust: HostKeyTrust) -> None:
        self.trust = trust

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise HostKeyRefused(
            f"host key of {hostname} ({describe_key(key)}) is not in known_hosts "
            f"({self.trust.describe_files()}): refused; {ACCEPT_NEW_HINT}"
        )


# One lock for every thread of this process: hosts are connected in parallel and append to the
# same file (flock covers other processes).
_RECORD_LOCK = threading.Lock()


class RecordNewHost:
    """--accept-new: trust an unknown host's key on first use and record it."""

    def __init__(self, trust: HostKeyTrust) -> None:
        assert trust.record_to is not None
        self.trust = trust
        self.record_to: Path = trust.record_to

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        if key.asbytes() in self.trust.revoked:
            raise HostKeyRefused(
                f"host key of {hostname} ({describe_key(key)}) is marked @revoked in "
                f"known_hosts: refused"
            )
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        try:
            append_line(self.record_to, line)
        except OSError as error:
            raise HostKeyRefused(
                f"cannot record the new host key of {hostname} in {self.record_to}: "
                f"{error.strerror or error}"
            ) from None
        client.get_host_keys().add(hostname, key.get_name(), key)


def append_line(path: Path, line: str) -> None:
    """Append one line under an exclusive lock, creating the file (and ~/.ssh) as ssh does."""
    with _RECORD_LOCK:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "a", encoding="utf-8") as stream:
            fcntl.flock(stream, fcntl.LOCK_EX)
            try:
                if not _ends_with_newline(path):
                    stream.write("\n")  # a last line without its newline stays a line of its own
                stream.write(line)
                stream.flush()
                os.fsync(stream.fileno())
            finally:
                fcntl.flock(stream, fcntl.LOCK_UN)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as stream:
        size = stream.seek(0, os.SEEK_END)
        if size == 0:
            return True
        stream.seek(size - 1)
        return stream.read(1) == b"\n"


def describe_changed_key(target: str, error: Any) -> str:
    """BadHostKeyException in words: which key was expected, which one the host offered."""
    return (
        f"host key of {target} CHANGED: known_hosts has {describe_key(error.expected_key)}, "
        f"the host offers {describe_key(error.key)}: refused (a changed key is never accepted; "
        f"if the host was rebuilt, remove its old entry with `ssh-keygen -R`)"
    )
