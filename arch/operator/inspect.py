"""`archctl inspect`: what a checkpoint image holds and whether it would restore on this host.

The verdict runs the checks a restore runs before it touches anything: validation of the
untrusted image, the CRIU version, the filesystem tar's sha256, `criu cpuinfo check` against
this CPU, and with image_key_file the signature and the CRIU files' sha256. The checks that need
the new container (its mounts) cannot be answered here. A pool directory (ARCH_CHECKPOINT_POOL)
is listed entry by entry instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

from arch.checkpoint.image.criu_images import CriuImageError, Process, read_process_tree
from arch.checkpoint.image.errors import ImageMissing, InvalidImage
from arch.checkpoint.image.metadata import METADATA_FILE, SIGNATURE_FILE, ImageMetadata
from arch.checkpoint.image.validation import read_metadata, validate, verify_tar_checksum
from arch.checkpoint.storage import pool
from arch.container.identity import ImagePathError, validate_checkpoint_id, validate_namespace
from arch.operator.inventory import recorded_location, spec_env, spec_location

if TYPE_CHECKING:
    from arch.config import HostConfig
    from arch.operator.containerd import Containerd

OK, FAIL, SKIPPED = "ok", "fail", "skipped"
PAGES_PREFIX = "pages-"


class InspectError(Exception):
    """The target names no image or pool (nothing to inspect)."""


class Check(NamedTuple):
    name: str
    status: str  # OK, FAIL or SKIPPED
    detail: str


class ImageReport(NamedTuple):
    path: str
    metadata: ImageMetadata | None
    checks: list[Check]
    sizes: dict[str, int]
    host_versions: dict[str, str]
    processes: list[Process]
    process_tree_error: str | None

    @property
    def restorable(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [f"{check.name}: {check.detail}" for check in self.checks if check.status == FAIL]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "restorable": self.restorable,
            "reasons": self.reasons,
            "checks": [check._asdict() for check in self.checks],
            "metadata": None if self.metadata is None else self.metadata.to_dict(),
            "sizes": self.sizes,
            "versions": {"image": image_versions(self.metadata), "host": self.host_versions},
            "processes": [process._asdict() for process in self.processes],
            "process_tree_error": self.process_tree_error,
        }


class PoolEntry(NamedTuple):
    name: str
    status: str  # unclaimed, claimed (with the claiming host), invalid, other
    created: str | None
    size: int | None
    problem: str | None


class PoolReport(NamedTuple):
    path: str
    entries: list[PoolEntry]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "pool": [entry._asdict() for entry in self.entries]}


def resolve_target(
    target: str, config: HostConfig, containerd: Containerd | None = None
) -> str:
    """The image (or pool) directory `target` names: a path (absolute, or starting with ./ or
    ../), or NAMESPACE/ID. NAMESPACE/ID is looked up as a container of this host (ARCH state,
    then containerd's spec) and else taken as a checkpoint id under checkpoint_root.
    ValueError when it is neither."""
    if target.startswith(("/", "./", "../")) or target in (".", ".."):
        return os.path.abspath(target)
    namespace, separator, identifier = target.partition("/")
    if not separator or "/" in identifier:
        raise ValueError(f"{target!r} is neither a path (/..., ./...) nor NAMESPACE/ID")
    try:
        validate_namespace(namespace)
        validate_checkpoint_id(identifier, "ID")
    except ImagePathError as error:
        raise ValueError(str(error)) from error
    location = recorded_location(config, namespace, identifier)
    if location is None and containerd is not None:
        location = _containerd_location(containerd, config, namespace, identifier)
    if location is not None:
        return location.image_dir or location.pool_dir or ""
    return os.path.join(config.checkpoint_root, namespace, identifier)


def _containerd_location(
    containerd: Containerd, config: HostConfig, namespace: str, container_id: str
) -> Any:
    from arch.operator.containerd import ContainerdError

    try:
        env = spec_env(containerd.container_spec(namespace, container_id))
    except ContainerdError:
        return None  # no such container (or no containerd): a checkpoint id, then
    return spec_location(config, namespace, container_id, env)[0]


def inspect(path: str, config: HostConfig, *, checksum: bool = True) -> ImageReport | PoolReport:
    """Inspect the image (or pool) at `path`; InspectError when there is neither."""
    if not os.path.lexists(path):
        raise InspectError(f"no image at {path}")
    if os.path.isdir(path) and not os.path.islink(path) and pool.is_pool_dir(path):
        return inspect_pool(path)
    return inspect_image(path, config, checksum=checksum)


def inspect_image(path: str, config: HostConfig, *, checksum: bool = True) -> ImageReport:
    host_criu = _host_version(config.criu or "criu")
    checks: list[Check] = []
    metadata: ImageMetadata | None = None
    try:
        metadata = read_metadata(path)
        image = validate(path)
        listed = f"complete: files, sizes and {image.metadata.criu_log} as listed"
        checks.append(Check("image", OK, listed))
    except ImageMissing as error:
        raise InspectError(error.reason) from error
    except InvalidImage as error:
        checks.append(Check("image", FAIL, error.reason))
        image = None
    if image is not None:
        checks.append(_criu_check(path, host_criu))
        checks.append(_checksum_check(image) if checksum else
                      Check("checksum", SKIPPED, "--no-checksum"))  # fmt: skip
        checks.append(_cpu_check(image, config))
    if image is not None:
        checks.append(_signature_check(path, config))
    processes, tree_error = _process_tree(path)
    return ImageReport(
        path=path,
        metadata=metadata,
        checks=checks,
        sizes=image_sizes(path, metadata),
        host_versions={
            "criu": host_criu,
            "runc": _host_version(config.runc or "runc"),
            "kernel": os.uname().release,
            "host": os.uname().nodename,
        },
        processes=processes,
        process_tree_error=tree_error,
    )


def inspect_pool(path: str) -> PoolReport:
    entries = []
    for name in sorted(os.listdir(path)):
        claimed = pool.parse_claimed(name)
        if pool.is_entry(name):
            status = "unclaimed"
        elif claimed is not None:
            status = f"claimed by {claimed.host}"
        elif name.startswith(pool.INVALID_PREFIX):
            status = "invalid"
        else:
            status = "other"
        try:
            metadata = read_metadata(os.path.join(path, name))
        except (InvalidImage, OSError) as error:
            entries.append(PoolEntry(name, status, None, None, str(error)))
            continue
        entries.append(PoolEntry(name, status, metadata.created, metadata.image_bytes, None))
    return PoolReport(path, entries)


def image_sizes(path: str, metadata: ImageMetadata | None) -> dict[str, int]:
    """Bytes on disk: total, CRIU process state (of which memory pages), filesystem tar."""
    sizes = {"total": 0, "processes": 0, "memory_pages": 0, "filesystem": 0, "metadata": 0}
    tar = metadata.filesystem.tar if metadata is not None else None
    try:
        entries = list(os.scandir(path))
    except OSError:
        return sizes
    for entry in entries:
        try:
            size = entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        sizes["total"] += size
        if entry.name in (METADATA_FILE, SIGNATURE_FILE):
            sizes["metadata"] += size
        elif entry.name == tar:
            sizes["filesystem"] += size
        else:
            sizes["processes"] += size
            if entry.name.startswith(PAGES_PREFIX):
                sizes["memory_pages"] += size
    return sizes


def image_versions(metadata: ImageMetadata | None) -> dict[str, object]:
    if metadata is None:
        return {}
    return {
        "format": metadata.format_version,
        "criu": metadata.criu_version,
        "runc": metadata.runc_version,
        "kernel": metadata.kernel,
        "host": metadata.host,
    }


def _criu_check(path: str, host_criu: str) -> Check:
    try:
        validate(path, host_criu)
    except InvalidImage as error:
        return Check("criu", FAIL, error.reason)
    return Check("criu", OK, f"this host's CRIU {host_criu} restores it")


def _checksum_check(image: Any) -> Check:
    if image.metadata.filesystem.tar is None:
        return Check("checksum", SKIPPED, "no filesystem tar (processes only)")
    try:
        verify_tar_checksum(image)
    except InvalidImage as error:
        return Check("checksum", FAIL, error.reason)
    return Check("checksum", OK, f"{image.metadata.filesystem.tar} sha256 matches")


def _cpu_check(image: Any, config: HostConfig) -> Check:
    from arch.checkpoint.cpu_check import CpuCheck
    from arch.runc.binary_facts import CPUINFO_IMAGE

    if not os.path.exists(os.path.join(image.path, CPUINFO_IMAGE)):
        return Check("cpu", SKIPPED, f"no {CPUINFO_IMAGE} in the image")
    try:
        problems = CpuCheck.start(image, config.criu or "criu").problems()
    except OSError as error:
        return Check("cpu", FAIL, f"criu cpuinfo check could not run: {error}")
    if problems:
        return Check("cpu", FAIL, "; ".join(problems))
    return Check("cpu", OK, "criu cpuinfo check accepts this CPU")


def _signature_check(path: str, config: HostConfig) -> Check:
    """What a restore here verifies: metadata.sig, by one of this host's keys, over the place
    the image says it belongs to and metadata.json, and every CRIU file against the sha256 the
    signed metadata records (the tar: see checksum)."""
    from arch.checkpoint.image.signing import ImageKeyError, Trust, load_key
    from arch.checkpoint.image.validation import read_metadata, verify_criu_files

    if not config.verify_key_files:
        return Check("signature", SKIPPED, 'signing is off (image_key_file = ""): images are '
                     "not verified")  # fmt: skip
    try:
        keys = tuple(load_key(key_file) for key_file in config.verify_key_files)
        claimed = read_metadata(path)
        trust = Trust(keys, False, claimed.namespace, claimed.checkpoint_id)
        verify_criu_files(validate(path, trust=trust))
    except ImageKeyError as error:
        return Check("signature", FAIL, str(error))
    except InvalidImage as error:
        return Check("signature", FAIL, error.reason)
    except OSError as error:
        return Check("signature", FAIL, f"cannot read the image: {error}")
    return Check(
        "signature",
        OK,
        f"signed with a key this host accepts, for {claimed.namespace}/{claimed.checkpoint_id}; "
        "the CRIU files match their sha256",
    )


def _process_tree(path: str) -> tuple[list[Process], str | None]:
    try:
        return read_process_tree(path), None
    except FileNotFoundError:
        return [], "no pstree.img"
    except (OSError, CriuImageError) as error:
        return [], str(error)


def _host_version(binary: str) -> str:
    from arch.runc import binary_facts

    return binary_facts.version(binary, cache_dir=None)
