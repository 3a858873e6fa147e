"""What runc and CRIU say about themselves and this CPU, remembered until they or the boot change.

Every checkpoint records `runc --version`, `criu --version` and `criu cpuinfo dump`'s image;
every restore reads `criu --version` and asks `criu cpuinfo check` about the image's
cpuinfo.img (for images taken on one kind of host, the same few bytes every time). Each is a
process, and CRIU probes the kernel on every start unless its kerndat cache lives on a tmpfs
/run: 30-100 ms per operation, on the path that containerd (and a Spot notice's two-minute
budget) waits for. The answers only change with the binary or the machine, so they are kept in
HostConfig.binary_facts_dir, keyed by the binary's inode, size, mtime and ctime and by this
boot's id. A stopped-and-started EC2 instance boots anew, possibly on another CPU, and so asks
again.

The cache is an optimisation only: whatever goes wrong reading or writing it, the answer is
computed as before.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from typing import TYPE_CHECKING

from arch.runc.process_group import dies_with_this_process

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger("arch")

CPUINFO_IMAGE = "cpuinfo.img"
CPUINFO_TIMEOUT = 60.0
VERSION_TIMEOUT = 30.0
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_APPROVED = b"accepted"
# An entry holds a version line or a cpuinfo.img of a few hundred bytes.
ENTRY_MAX_BYTES = 1 << 20


class CpuinfoDumpFailed(Exception):
    """`criu cpuinfo dump` failed or did not finish; the message says how."""


def version(binary: str, cache_dir: str | None) -> str:
    """The first line of `binary --version` ("runc version 1.1.5", "Version: 4.2.1")."""
    entry = _Entry(cache_dir, "version", binary)
    cached = entry.load()
    if cached is not None:
        return cached.decode("utf-8", "replace")
    try:
        completed = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
            check=False,
        )  # fmt: skip
    except OSError as error:
        return f"unknown ({error.strerror})"
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        return lines[0] if lines else "unknown"
    entry.store(lines[0].encode())
    return lines[0]


def cpuinfo_image(criu: str, cache_dir: str | None, on_start: Callable[[int], None]) -> bytes:
    """The bytes of cpuinfo.img as `criu cpuinfo dump` writes it for this CPU.

    `on_start` gets the pid of a CRIU started for it: its group is stopped by whoever finishes
    the operation if this arch-runc dies meanwhile. Raises CpuinfoDumpFailed.
    """
    entry = _Entry(cache_dir, "cpuinfo", criu)
    cached = entry.load()
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="arch-cpuinfo-") as work_dir:
        process = subprocess.Popen(
            [criu, "cpuinfo", "dump", "-D", work_dir],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=dies_with_this_process(),
        )
        on_start(process.pid)
        try:
            _, stderr = process.communicate(timeout=CPUINFO_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise CpuinfoDumpFailed(
                f"criu cpuinfo dump did not finish within {CPUINFO_TIMEOUT:g} s"
            ) from None
        if process.returncode != 0:
            raise CpuinfoDumpFailed(f"criu cpuinfo dump failed: {stderr.strip()[-500:]}")
        with open(os.path.join(work_dir, CPUINFO_IMAGE), "rb") as image:
            data = image.read()
    entry.store(data)
    return data


class CpuinfoApproval:
    """`criu cpuinfo check`'s approval of the cpuinfo.img with `image_sha256` by `criu` on this
    boot. Refusals are never remembered: each restore asks again, and reports CRIU's own words."""

    def __init__(self, criu: str, cache_dir: str | None, image_sha256: str) -> None:
        self._entry = _Entry(cache_dir, "cpuinfo-check-" + image_sha256, criu)

    def given(self) -> bool:
        """Whether CRIU approved this cpuinfo.img already."""
        return self._entry.load() == _APPROVED

    def remember(self) -> None:
        """Record that `criu cpuinfo check` passed."""
        self._entry.store(_APPROVED)


class _Entry:
    """One cached answer about `binary`: its file in the cache dir, and the identity of the
    binary (and boot) it holds for, taken before the answer is computed, so that a binary
    replaced meanwhile does not get the old one's answer."""

    def __init__(self, cache_dir: str | None, kind: str, binary: str) -> None:
        self.kind = kind
        self.binary = binary
        self.cache_dir = cache_dir
        name = hashlib.sha256(f"{kind}\0{binary}".encode()).hexdigest()[:32]
        self.path = None if cache_dir is None else os.path.join(cache_dir, f"{kind}-{name}.json")
        self.identity = None if cache_dir is None else _identity(binary)

    def load(self) -> bytes | None:
        if self.identity is None or self.path is None:
            return None
        try:
            with open(self.path, "rb") as entry_file:
                entry = json.loads(entry_file.read(ENTRY_MAX_BYTES))
            if not isinstance(entry, dict) or entry.get("identity") != self.identity:
                return None
            return base64.b64decode(entry["value"], validate=True)
        except FileNotFoundError:
            return None
        # (arch.runc imports only itself: json itself, on a bounded read; too deep: RecursionError)
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
            logger.debug("binary facts: %s of %s not read from the cache: %s", self.kind,
                         self.binary, error)  # fmt: skip
            return None

    def store(self, value: bytes) -> None:
        if self.identity is None or self.cache_dir is None or self.path is None:
            return
        document = json.dumps({"identity": self.identity,
                               "value": base64.b64encode(value).decode()})  # fmt: skip
        try:
            os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-")
            try:
                with os.fdopen(fd, "w", encoding="ascii") as entry_file:
                    entry_file.write(document)
                os.replace(temporary, self.path)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as error:
            logger.debug("binary facts: %s of %s not cached: %s", self.kind, self.binary, error)


def _identity(binary: str) -> str | None:
    """What changes when `binary` (found on PATH like exec would) or the boot changes."""
    path = binary if os.sep in binary else shutil.which(binary)
    if path is None:
        return None
    try:
        found = os.stat(path)
        with open(_BOOT_ID_PATH, encoding="ascii") as boot:
            boot_id = boot.read().strip()
    except OSError:
        return None
    return ":".join(
        str(part)
        for part in (os.path.realpath(path), found.st_dev, found.st_ino, found.st_size,
                     found.st_mtime_ns, found.st_ctime_ns, boot_id)
    )  # fmt: skip
