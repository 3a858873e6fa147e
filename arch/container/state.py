"""Per-container flags and a JSON record, kept under the host's state_dir (default /run/arch).

Layout: `<state_dir>/<namespace>/<container id>/` (directories 0700) holds
- one file per set flag, named after the flag; its content is the flag's value (often empty),
- `record.json`: what `create` learnt about an opted-in container (image location, checkpoint
  id, bundle), so that later calls need not re-read config.json,
- `.lock`: the per-container lock file (fcntl.flock) that serialises changes.

Every file is replaced with temp + rename, so readers never see a partial file and need no lock.
Writers hold the container's lock, which makes read-modify-write (`update_record`, `take`) exact
and keeps `remove_all` from racing a concurrent `set` (containerd may call delete and state in
parallel). `clear` needs no lock: unlink succeeds for exactly one caller, which makes it an
atomic test-and-clear ("was skip_start set? then this start is a no-op").

No fsync: the state describes running containers, which do not survive a reboot either, and
state_dir is meant to be on tmpfs (/run).

Imported by arch-runc for start/delete of every container: module-level imports are limited to
modules the interpreter has loaded anyway or that cost nothing (fcntl); json is imported only
where a record is read or written.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# launcher.c takes these two flags natively too (by unlinking them): keep the names in sync.
SKIP_START = "skip_start"
SKIP_RESUME = "skip_resume"
EXIT_STATUS = "exit_status"
# The container was checkpointed: its exit is the checkpoint's, and its image stays.
CHECKPOINTED = "checkpointed"

RECORD_FILE = "record.json"
LOCK_FILE = ".lock"
TEMP_PREFIX = ".tmp-"
DIR_MODE = 0o700
FILE_MODE = 0o600

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
# containerd ids and namespaces use [A-Za-z0-9_.-]; Docker ids are 64 hex digits.
COMPONENT_CHARS = _ALNUM | frozenset("_.-")
COMPONENT_MAX = 128
# Flag names cannot contain "." so they never collide with record.json, .lock or temp files.
FLAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
FLAG_MAX = 64
# ARCH writes records and flags of a few KiB; anything larger was not written by it.
STATE_FILE_MAX_BYTES = 1 << 20


class StateError(ValueError):
    """A refused name, or a state file that does not hold what it should."""


def validate_component(kind: str, value: str) -> str:
    """`value` when it is a single safe path component ([A-Za-z0-9_.-], not '.' or '..')."""
    if (
        not 1 <= len(value) <= COMPONENT_MAX
        or value in (".", "..")
        or not COMPONENT_CHARS.issuperset(value)
    ):
        raise StateError(
            f"{kind} {value!r}: must be 1 to {COMPONENT_MAX} letters, digits, _ . - "
            "and not '.' or '..'"
        )
    return value


def validate_flag(flag: str) -> str:
    if not 1 <= len(flag) <= FLAG_MAX or not FLAG_CHARS.issuperset(flag):
        raise StateError(f"flag {flag!r}: must be 1 to {FLAG_MAX} of [a-z0-9_]")
    return flag


def list_containers(state_dir: str) -> list[tuple[str, str]]:
    """(namespace, container id) of every container that has state, sorted."""
    found: list[tuple[str, str]] = []
    for namespace in _subdirectory_names(state_dir):
        found.extend(
            (namespace, container_id)
            for container_id in _subdirectory_names(os.path.join(state_dir, namespace))
        )
    return sorted(found)


class ContainerState:
    """The flags and record of one container, keyed by (namespace, container id)."""

    __slots__ = ("container_id", "namespace", "path", "state_dir")

    def __init__(self, state_dir: str, namespace: str, container_id: str) -> None:
        self.state_dir = state_dir
        self.namespace = validate_component("namespace", namespace)
        self.container_id = validate_component("container id", container_id)
        self.path = os.path.join(state_dir, namespace, container_id)

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def has(self, flag: str) -> bool:
        try:
            os.stat(self._file(flag), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def get(self, flag: str) -> str | None:
        """The flag's value ("" for a flag set without one), or None when it is not set."""
        data = _read_optional(self._file(flag))
        return None if data is None else data.decode("utf-8")

    def set(self, flag: str, value: str = "") -> None:
        path = self._file(flag)
        with _ContainerLock(self.path, create=True):
            _replace_file(path, value.encode("utf-8"))

    def set_if_exists(self, flag: str, value: str = "") -> bool:
        """Set the flag only while the container has state (never re-creates removed state)."""
        path = self._file(flag)
        with _ContainerLock(self.path, create=False) as lock:
            if not lock.held:
                return False
            _replace_file(path, value.encode("utf-8"))
            return True

    def set_if_record(
        self, flag: str, value: str, accept: Callable[[dict[str, Any]], bool]
    ) -> bool:
        """Set the flag only while the container has state whose record `accept`s (checked
        and set under the container's lock)."""
        path = self._file(flag)
        with _ContainerLock(self.path, create=False) as lock:
            if not lock.held:
                return False
            data = _read_optional(os.path.join(self.path, RECORD_FILE))
            if not accept({} if data is None else self._decode_record(data)):
                return False
            _replace_file(path, value.encode("utf-8"))
            return True

    def clear(self, flag: str) -> bool:
        """Unset the flag; True for the one caller that found it set."""
        try:
            os.unlink(self._file(flag))
        except FileNotFoundError:
            return False
        return True

    def take(self, flag: str) -> str | None:
        """Read and unset the flag in one step; None when it was not set."""
        path = self._file(flag)
        with _ContainerLock(self.path, create=False) as lock:
            if not lock.held:
                return None
            data = _read_optional(path)
            if data is None:
                return None
            os.unlink(path)
            return data.decode("utf-8")

    def read_record(self) -> dict[str, Any] | None:
        """The container's record, or None when none was written."""
        data = _read_optional(os.path.join(self.path, RECORD_FILE))
        return None if data is None else self._decode_record(data)

    def write_record(self, record: dict[str, Any]) -> None:
        encoded = _encode_record(record)
        with _ContainerLock(self.path, create=True):
            _replace_file(os.path.join(self.path, RECORD_FILE), encoded)

    def update_record(
        self, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, Any]:
        """Read-modify-write the record under the container's lock; returns the new record.

        `change` receives the current record ({} when none) and returns the new one, or None
        after changing it in place.
        """
        record_path = os.path.join(self.path, RECORD_FILE)
        with _ContainerLock(self.path, create=True):
            data = _read_optional(record_path)
            record = {} if data is None else self._decode_record(data)
            changed = change(record)
            new_record = record if changed is None else changed
            _replace_file(record_path, _encode_record(new_record))
            return new_record

    def remove_all(self) -> bool:
        """Remove every flag, the record and the directory; False when there was no state."""
        with _ContainerLock(self.path, create=False) as lock:
            if not lock.held:
                return False
            _remove_entries_except(self.path, LOCK_FILE)
            # Unlinked while held: waiters notice the lock file changed and start over.
            os.unlink(os.path.join(self.path, LOCK_FILE))
            # A waiter may already have created a new lock file: the directory is then theirs.
            _remove_if_empty(self.path)
        _remove_if_empty(os.path.join(self.state_dir, self.namespace))
        return True

    def _file(self, flag: str) -> str:
        return os.path.join(self.path, validate_flag(flag))

    def _decode_record(self, data: bytes) -> dict[str, Any]:
        from arch.bounded_json import loads

        try:
            record = loads(data)
        except ValueError as error:
            raise StateError(f"{self.path}/{RECORD_FILE}: not JSON: {error}") from error
        if not isinstance(record, dict):
            raise StateError(f"{self.path}/{RECORD_FILE}: not a JSON object")
        return record


class _ContainerLock:
    """flock on the container's lock file, robust against the file being removed meanwhile.

    With create=False nothing is created: when the container has no state, `held` is False.
    """

    __slots__ = ("create", "directory", "fd", "held")

    def __init__(self, directory: str, create: bool) -> None:
        self.directory = directory
        self.create = create
        self.fd = -1
        self.held = False

    def __enter__(self) -> _ContainerLock:
        lock_path = os.path.join(self.directory, LOCK_FILE)
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        while True:
            if self.create:
                _make_private_dirs(self.directory)
            try:
                fd = os.open(lock_path, flags | (os.O_CREAT if self.create else 0), FILE_MODE)
            except FileNotFoundError:
                if self.create:
                    continue  # remove_all took the directory between mkdir and open
                return self
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, lock_path):
                self.fd = fd
                self.held = True
                return self
            os.close(fd)  # removed (and maybe re-created) while we waited
            if not self.create and not os.path.lexists(lock_path):
                return self

    def __exit__(self, *exc_info: object) -> None:
        if self.held:
            self.held = False
            os.close(self.fd)  # closing releases the flock


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _make_private_dirs(directory: str) -> None:
    """Create `directory` and its missing parents with mode 0700."""
    try:
        os.mkdir(directory, DIR_MODE)
    except FileExistsError:
        return
    except FileNotFoundError:
        _make_private_dirs(os.path.dirname(directory))
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            return


def _replace_file(path: str, data: bytes) -> None:
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f"{TEMP_PREFIX}{name}-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        _unlink_if_present(temp)
        raise


def _read_optional(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        chunks: list[bytes] = []
        length = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            length += len(chunk)
            if length > STATE_FILE_MAX_BYTES:
                raise StateError(f"{path} is larger than {STATE_FILE_MAX_BYTES} bytes")
            chunks.append(chunk)
    finally:
        os.close(fd)


def _encode_record(record: dict[str, Any]) -> bytes:
    import json

    if not isinstance(record, dict):
        raise StateError(f"a record must be a dict, got {type(record).__name__}")
    return json.dumps(record, sort_keys=True).encode("utf-8")


def _remove_entries_except(directory: str, keep: str) -> None:
    for entry in os.scandir(directory):
        if entry.name == keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            import shutil  # Not created by this module; removed defensively.

            shutil.rmtree(entry.path)
        else:
            _unlink_if_present(entry.path)


def _remove_if_empty(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise


def _unlink_if_present(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return


def _subdirectory_names(directory: str) -> list[str]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            try:
                names.append(validate_component("entry", entry.name))
            except StateError:
                continue  # not ours
    return names
