"""Image pools (ARCH_CHECKPOINT_POOL): images of replicated containers, one claim per image.

A pool is one directory `<root>/<namespace>/<pool>/` holding one image directory per
checkpointed member:

- `image-<UTC time>-<random>`: published and unclaimed; any new member may take it.
- `.claimed~<host>~<random>~<entry>`: taken by one container (its state record names the path);
  <host> is the claimer's host identity (arch.host_identity), never its hostname.
- `.invalid~<random>~<entry>`: refused by validation when claimed; kept for `archctl inspect`,
  removed by `archctl gc`.

Claiming is one rename of an unclaimed entry to a claimed name that only the claimer knows. A
rename is atomic on the server, also between NFS/EFS clients (flock is not), so of two
containers racing for one entry exactly one rename finds it; the other gets ENOENT and tries the
next entry. An NFS client may resend a rename whose reply was lost and then see ENOENT for its
own success; the claimer therefore looks for its claimed name before giving up on an entry.

A member's checkpoint is published under a claimed name of its own and renamed to an unclaimed
entry only once the container is stopped, so no other container can restore it while the
checkpointed processes might still run.

The pool directory is opened beneath the root that holds it (`root`, see storage/beneath.py),
following no symlink: the members' containers may write the storage.
The default root "/" means no symlink anywhere on the pool's path.
"""

from __future__ import annotations

import errno
import os
import re
import time
from typing import TYPE_CHECKING, NamedTuple

from arch.checkpoint.storage.store import RANDOM_HEX_CHARS, lexists, random_hex

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ENTRY_PREFIX = "image-"
CLAIMED_PREFIX = ".claimed~"
INVALID_PREFIX = ".invalid~"
SEPARATOR = "~"
HOST_MAX = 64

_ENTRY = re.compile(r"image-\d{8}T\d{6}Z-[0-9a-f]{12}\Z")
_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


class PoolError(OSError):
    """The pool directory cannot be read or an entry cannot be renamed."""


class Claim(NamedTuple):
    """An image this host renamed out of the pool: `path` is where it is now."""

    pool_dir: str
    entry: str
    claimed: str

    @property
    def path(self) -> str:
        return os.path.join(self.pool_dir, self.claimed)


class ClaimedName(NamedTuple):
    """The parts of a `.claimed~` name."""

    host: str
    token: str
    entry: str


def host_label(identity: str | None = None) -> str:
    """This host as it appears in claimed names: its identity (arch.host_identity: the EC2
    instance id, else machine id + boot id; never the hostname, which later instances reuse),
    in safe characters, bounded length."""
    if identity is None:
        from arch.host_identity import current

        identity = current()
    return _HOST_UNSAFE.sub("_", identity)[:HOST_MAX] or "host"


def is_entry(name: str) -> bool:
    """Whether `name` is an unclaimed image entry of a pool."""
    return _ENTRY.match(name) is not None


def new_entry_name(now: float | None = None) -> str:
    """A fresh unclaimed entry name; names sort by creation time (oldest is claimed first)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{ENTRY_PREFIX}{stamp}-{random_hex()}"


def claimed_name(entry: str, host: str | None = None) -> str:
    """A claimed name for `entry` that no other claimer can choose."""
    return SEPARATOR.join((CLAIMED_PREFIX[:-1], host or host_label(), random_hex(), entry))


def parse_claimed(name: str) -> ClaimedName | None:
    """The host, token and entry of a claimed name; None for any other name."""
    if not name.startswith(CLAIMED_PREFIX):
        return None
    parts = name[len(CLAIMED_PREFIX) :].split(SEPARATOR)
    if len(parts) != 3 or not is_entry(parts[2]) or len(parts[1]) != RANDOM_HEX_CHARS:
        return None
    return ClaimedName(*parts)


def is_pool_dir(path: str) -> bool:
    """Whether `path` is a pool directory: no image itself, and it holds pool entries."""
    from arch.checkpoint.image.metadata import METADATA_FILE

    if os.path.lexists(os.path.join(path, METADATA_FILE)):
        return False
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(
        is_entry(name) or parse_claimed(name) is not None or name.startswith(INVALID_PREFIX)
        for name in names
    )


def unclaimed_entries(pool_dir: str) -> list[str]:
    """The pool's unclaimed entries, oldest first ([] when the pool does not exist)."""
    try:
        names = os.listdir(pool_dir)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if is_entry(name))


def claim_next(
    pool_dir: str,
    skip: frozenset[str] = frozenset(),
    root: str = "/",
    announce: Callable[[str], None] | None = None,
) -> Claim | None:
    """Claim the oldest unclaimed entry not in `skip`; None when there is none left.
    `announce` is told the claimed path before each rename (so that a claimer killed right
    after it has named its claim: the claimer's next call gives it back)."""
    parent_fd = _open_pool(pool_dir, root)
    if parent_fd is None:
        return None
    try:
        for entry in sorted(name for name in os.listdir(parent_fd) if is_entry(name)):
            if entry not in skip:
                claim = _claim_at(parent_fd, pool_dir, entry, announce)
                if claim is not None:
                    return claim
        return None
    finally:
        os.close(parent_fd)


def claim_entry(pool_dir: str, entry: str, root: str = "/") -> Claim | None:
    """Claim one named entry (e.g. to remove it without racing a claimer); None when taken."""
    parent_fd = _open_pool(pool_dir, root)
    if parent_fd is None:
        return None
    try:
        return _claim_at(parent_fd, pool_dir, entry)
    finally:
        os.close(parent_fd)


def _claim_at(
    parent_fd: int, pool_dir: str, entry: str, announce: Callable[[str], None] | None = None
) -> Claim | None:
    from arch import failpoints

    claimed = claimed_name(entry)
    if announce is not None:
        announce(os.path.join(pool_dir, claimed))
    failpoints.hit("pool.before-claim")
    if not _rename(parent_fd, entry, claimed):
        return None
    try:
        os.fsync(parent_fd)
        failpoints.hit("pool.after-claim")
    except OSError:
        _rename(parent_fd, claimed, entry)  # back into the pool: nobody would use the claim
        raise
    return Claim(pool_dir, entry, claimed)


def claims(
    pool_dir: str,
    attempts: int,
    root: str = "/",
    announce: Callable[[str], None] | None = None,
) -> Iterator[Claim]:
    """Claim entries one at a time, at most `attempts` (the caller releases or keeps each)."""
    tried: set[str] = set()
    for _ in range(attempts):
        claim = claim_next(pool_dir, frozenset(tried), root, announce)
        if claim is None:
            return
        tried.add(claim.entry)
        yield claim


def release(claimed_path: str, root: str = "/") -> str | None:
    """Put a claimed image back into its pool, unclaimed; returns its entry path (None: gone)."""
    pool_dir, name = os.path.split(os.path.normpath(claimed_path))
    parsed = parse_claimed(name)
    if parsed is None:
        raise PoolError(errno.EINVAL, f"not a claimed pool image: {claimed_path}")
    return _move(pool_dir, name, parsed.entry, root)


def quarantine(claimed_path: str, root: str = "/") -> str | None:
    """Move a claimed image that failed validation out of the pool's reach."""
    pool_dir, name = os.path.split(os.path.normpath(claimed_path))
    parsed = parse_claimed(name)
    if parsed is None:
        raise PoolError(errno.EINVAL, f"not a claimed pool image: {claimed_path}")
    invalid = SEPARATOR.join((INVALID_PREFIX[:-1], parsed.token, parsed.entry))
    return _move(pool_dir, name, invalid, root)


def drop_claim(claimed_path: str, root: str = "/") -> bool:
    """Remove an image this host claimed (superseded by the claimer's newer image); False when
    it is already gone."""
    from arch.checkpoint.storage.beneath import opened_root
    from arch.checkpoint.storage.store import remove

    if parse_claimed(os.path.basename(os.path.normpath(claimed_path))) is None:
        raise PoolError(errno.EINVAL, f"not a claimed pool image: {claimed_path}")
    prefix = root.rstrip("/") + "/"
    if not claimed_path.startswith(prefix):
        raise PoolError(errno.EINVAL, f"{claimed_path}: not beneath {root}")
    with opened_root(root) as root_fd:
        return remove(root_fd, claimed_path[len(prefix) :].strip("/"))


def superseded(pool_dir: str, lineage: str, generation: int, root: str = "/") -> bool:
    """Whether the pool holds a newer generation of the lineage (unclaimed or claimed): an
    image of that lineage and an older generation must never be restored."""
    from arch.checkpoint.image.errors import InvalidImage
    from arch.checkpoint.image.validation import read_metadata_at

    if not lineage:
        return False
    parent_fd = _open_pool(pool_dir, root)
    if parent_fd is None:
        return False
    try:
        for name in os.listdir(parent_fd):
            if not is_entry(name) and parse_claimed(name) is None:
                continue
            try:
                dir_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, dir_fd=parent_fd)  # fmt: skip
            except OSError:
                continue
            try:
                metadata = read_metadata_at(dir_fd)
            except (OSError, InvalidImage):
                continue
            finally:
                os.close(dir_fd)
            if metadata.lineage == lineage and metadata.generation > generation:
                return True
        return False
    finally:
        os.close(parent_fd)


def publication_path(pool_dir: str) -> str:
    """Where a member's checkpoint is published: a claimed name, released after the stop."""
    return os.path.join(pool_dir, claimed_name(new_entry_name()))


def _move(pool_dir: str, name: str, target: str, root: str) -> str | None:
    parent_fd = _open_pool(pool_dir, root)
    if parent_fd is None:
        return None
    try:
        if not _rename(parent_fd, name, target):
            return None
        os.fsync(parent_fd)
        return os.path.join(pool_dir, target)
    finally:
        os.close(parent_fd)


def _rename(parent_fd: int, name: str, target: str) -> bool:
    """Rename within the pool; False when `name` is gone (someone else renamed it first)."""
    try:
        os.rename(name, target, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except FileNotFoundError:
        # Over NFS, a retransmitted rename that already succeeded answers ENOENT.
        return lexists(parent_fd, target)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    return True


def _open_pool(pool_dir: str, root: str) -> int | None:
    """The pool directory, resolved beneath `root` following no symlink; None when absent."""
    from arch.checkpoint.storage.beneath import open_beneath, opened_root

    prefix = root.rstrip("/") + "/"
    if not pool_dir.startswith(prefix):
        raise PoolError(errno.EINVAL, f"{pool_dir}: not beneath {root}")
    try:
        with opened_root(root) as root_fd:
            return open_beneath(root_fd, pool_dir[len(prefix) :].strip("/"))
    except FileNotFoundError:
        return None
    except OSError as error:
        message = f"{pool_dir}: cannot open the pool: {error.strerror}"
        raise PoolError(error.errno, message) from error


