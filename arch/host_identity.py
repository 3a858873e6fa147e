"""Which host this is, for leases, pool claims and reader markers on shared storage.

Never the hostname alone: EC2 hostnames are derived from private IPs, which later instances
reuse, and two hosts of one fleet may well share a name. The identity is
- the EC2 instance id where there is one. On Nitro instances the DMI board asset tag holds it
  ("Identify EC2 Linux instances", EC2 User Guide: /sys/devices/virtual/dmi/id/board_asset_tag
  reads i-...): no network call. Elsewhere on EC2 (Xen: /sys/hypervisor/uuid starts with
  "ec2", or the DMI vendor says Amazon EC2) it is asked from instance metadata, IMDSv2
  (GET /latest/meta-data/instance-id, "Instance metadata categories", EC2 User Guide);
- else `h-` + a digest of /etc/machine-id and the boot id: another boot of the same machine is
  another holder too (its processes are gone).
The boot id stays a separate field of leases (arch.checkpoint lease), so an instance id that
survives a reboot does not keep the previous boot's leases alive.

It is cached per boot in the state dir (`.host-identity`, JSON {"identity", "boot"}), so the
metadata service is asked once per boot. A test stands two "hosts" on one kernel by giving each
node's state dir its own cache file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re

CACHE_FILE = ".host-identity"
ASSET_TAG = "/sys/devices/virtual/dmi/id/board_asset_tag"
DMI_VENDOR = "/sys/devices/virtual/dmi/id/sys_vendor"
HYPERVISOR_UUID = "/sys/hypervisor/uuid"
MACHINE_ID = "/etc/machine-id"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
IMDS_TIMEOUT = 2.0
IDENTITY_MAX = 64
_INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_SAFE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

logger = logging.getLogger("arch")

_state_dir: str | None = None
_cached: str | None = None


def use_state_dir(state_dir: str) -> None:
    """Cache the identity in this state dir (arch.toml's state_dir); set once per process."""
    global _state_dir, _cached
    if state_dir != _state_dir:
        _state_dir, _cached = state_dir, None


def boot_id() -> str:
    return _read_text(BOOT_ID) or ""


def current() -> str:
    """This host's identity (safe in file names: [A-Za-z0-9_.:-], at most 64 characters)."""
    global _cached
    if _cached is None:
        _cached = _from_cache() or _store(_discover())
    return _cached


def _discover() -> str:
    return instance_id() or _machine_and_boot()


def instance_id() -> str | None:
    """The EC2 instance id, or None when this is not (known to be) an EC2 instance."""
    tag = _read_text(ASSET_TAG)
    if tag and _INSTANCE_ID.match(tag):
        return tag
    if not _looks_like_ec2():
        return None
    from arch.spot.imds import DEFAULT_ENDPOINT, ENDPOINT_ENV, ImdsClient, ImdsError

    endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    try:
        return ImdsClient(endpoint, timeout=IMDS_TIMEOUT).instance_id()
    except (ImdsError, ValueError) as error:
        logger.warning("EC2 instance id not read from instance metadata: %s", error)
        return None


def _looks_like_ec2() -> bool:
    uuid = (_read_text(HYPERVISOR_UUID) or "").lower()
    vendor = _read_text(DMI_VENDOR) or ""
    return uuid.startswith("ec2") or vendor == "Amazon EC2"


def _machine_and_boot() -> str:
    seed = f"{_read_text(MACHINE_ID) or ''}\n{boot_id()}".encode()
    return "h-" + hashlib.sha256(seed).hexdigest()[:24]


def _from_cache() -> str | None:
    if _state_dir is None:
        return None
    text = _read_text(os.path.join(_state_dir, CACHE_FILE))
    try:
        document = json.loads(text or "")
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("boot") != boot_id():
        return None  # another boot's answer: the instance may have been replaced meanwhile
    identity = document.get("identity")
    return identity if isinstance(identity, str) and _SAFE.match(identity) else None


def _store(identity: str) -> str:
    if _state_dir is None or not os.path.isdir(_state_dir):
        return identity
    path = os.path.join(_state_dir, CACHE_FILE)
    temp = f"{path}.{os.getpid()}"
    try:
        with open(temp, "w", encoding="ascii") as cache:
            json.dump({"identity": identity, "boot": boot_id()}, cache)
        os.replace(temp, path)
    except OSError as error:
        logger.warning("host identity not cached in %s: %s", path, error)
    return identity


def write_cache(state_dir: str, identity: str, boot: str | None = None) -> None:
    """Pin a host identity for `state_dir` (tests standing several hosts on one kernel)."""
    if not _SAFE.match(identity):
        raise ValueError(f"host identity {identity!r}: [A-Za-z0-9_.:-], 1 to 64 characters")
    with open(os.path.join(state_dir, CACHE_FILE), "w", encoding="ascii") as cache:
        json.dump({"identity": identity, "boot": boot if boot is not None else boot_id()}, cache)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as source:
            return source.read(4096).strip()
    except OSError:
        return None
