"""Checkpoint image metadata: the layout's file names, metadata.json's schema and its parsing.

An image is one flat directory `<root>/<namespace>/<checkpoint id>/` holding
- the CRIU files exactly as `runc checkpoint` writes them (inventory.img, ...), with CRIU's
  dump log under the name CRIU gave it (dump.log unless a CRIU configuration renames it;
  `process.criu_log` names it),
- ROOTFS_TAR, the container's filesystem changes (written by arch/checkpoint/layer/),
- METADATA_FILE, written last (see ImageMetadata), and with a key SIGNATURE_FILE.

metadata.json may come from shared storage that other hosts write: parsing checks every field's
type and refuses names that are not safe path components (InvalidImage says what is wrong).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from arch.checkpoint.image.errors import InvalidImage
from arch.checkpoint.image.job_identity import JobIdentity

if TYPE_CHECKING:
    from collections.abc import Mapping

    from arch.checkpoint.criu_config import CriuConfig

# 2: the job's identity is recorded and must match at restore (arch.checkpoint.image.job_identity).
# Format 1 images lack it and are refused: an ARCH that knew only format 1 would restore a
# format 2 image without comparing the identity, so the version had to change.
FORMAT_VERSION = 2
# 3: pages and tar may be stored zstd-compressed (arch.checkpoint.image.compression). Only
# images that use compression carry it, so that an ARCH knowing only format 2 refuses them with
# a clear reason instead of handing CRIU files it cannot read; all others stay format 2.
COMPRESSED_FORMAT_VERSION = 3
SUPPORTED_FORMAT_VERSIONS = frozenset({FORMAT_VERSION, COMPRESSED_FORMAT_VERSION})
COMPRESSIONS = ("zstd",)
COMPRESSED_SUFFIX = ".zst"
_LINEAGE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PRE_IDENTITY_FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
# The MAC of metadata.json when images are signed (arch.checkpoint.image.signing).
SIGNATURE_FILE = "metadata.sig"
ROOTFS_TAR = "rootfs-diff.tar"
CRIU_INVENTORY = "inventory.img"
CRIU_DUMP_LOG = "dump.log"
FILESYSTEM_MODES = ("overlay", "none")

_FILE_NAME_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:+-"
)
_SAFE_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class CriuFile:
    """One CRIU file as stored: with a `compression`, `name` ends in COMPRESSED_SUFFIX, `size`
    and `sha256` are the stored bytes' and `content_size` the size CRIU reads."""

    name: str
    size: int
    # Recorded when images are signed (arch.checkpoint.image.signing), else None.
    sha256: str | None = None
    compression: str | None = None
    content_size: int | None = None

    @property
    def criu_name(self) -> str:
        """The name CRIU reads the file under."""
        if self.compression is None:
            return self.name
        return self.name[: -len(COMPRESSED_SUFFIX)]

    @property
    def content_bytes(self) -> int:
        return self.size if self.content_size is None else self.content_size

    def to_dict(self) -> dict[str, Any]:
        listed: dict[str, Any] = {"name": self.name, "size": self.size}
        if self.sha256 is not None:
            listed["sha256"] = self.sha256
        if self.compression is not None:
            listed["compression"] = self.compression
            listed["content_size"] = self.content_size
        return listed


@dataclass(frozen=True)
class FilesystemInfo:
    """How the container's filesystem was captured: an overlay diff tar, or not at all.

    `sha256` and `size` are the stored file's; a compressed tar (`compression`, stored as
    ROOTFS_TAR + COMPRESSED_SUFFIX) also records the tar's own (`content_sha256`,
    `content_size`), which the apply path checks as it checks an uncompressed one.
    """

    mode: str
    tar: str | None = None
    sha256: str | None = None
    size: int | None = None
    compression: str | None = None
    content_sha256: str | None = None
    content_size: int | None = None

    @classmethod
    def overlay(cls, sha256: str, size: int) -> FilesystemInfo:
        return cls("overlay", ROOTFS_TAR, sha256, size)

    @classmethod
    def compressed_overlay(cls, compression: str, stored_sha256: str, stored_size: int,
                           content_sha256: str, content_size: int) -> FilesystemInfo:
        return cls("overlay", ROOTFS_TAR + COMPRESSED_SUFFIX, stored_sha256, stored_size,
                   compression, content_sha256, content_size)  # fmt: skip

    @property
    def tar_sha256(self) -> str | None:
        """The digest of the tar itself (what the apply path verifies)."""
        return self.sha256 if self.compression is None else self.content_sha256

    @property
    def tar_size(self) -> int | None:
        return self.size if self.compression is None else self.content_size

    def to_dict(self) -> dict[str, Any]:
        section: dict[str, Any] = {
            "mode": self.mode, "tar": self.tar, "sha256": self.sha256, "size": self.size,
        }
        if self.compression is not None:
            section.update(compression=self.compression, content_sha256=self.content_sha256,
                           content_size=self.content_size)  # fmt: skip
        return section

    @classmethod
    def none(cls) -> FilesystemInfo:
        return cls("none")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class MountInfo:
    destination: str
    source: str | None
    type: str | None


@dataclass(frozen=True)
class ContainerEssentials:
    """What the bundle's config.json said about the process and its mounts."""

    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    cwd: str = "/"
    mounts: tuple[MountInfo, ...] = ()

    @classmethod
    def from_oci_config(cls, config: Mapping[str, Any]) -> ContainerEssentials:
        """Extract the essentials from a parsed OCI config.json (ValueError when malformed)."""
        process = config.get("process") or {}
        if not isinstance(process, dict):
            raise ValueError("config.json: process must be an object")
        mounts = config.get("mounts") or []
        if not isinstance(mounts, list) or not all(isinstance(m, dict) for m in mounts):
            raise ValueError("config.json: mounts must be a list of objects")
        return cls(
            args=_strings(process.get("args") or [], "config.json: process.args", ValueError),
            env=_strings(process.get("env") or [], "config.json: process.env", ValueError),
            cwd=_string(process.get("cwd", "/"), "config.json: process.cwd", ValueError),
            mounts=tuple(
                MountInfo(
                    _string(m.get("destination", ""), "config.json: mount destination", ValueError),
                    _optional_string(m.get("source"), "config.json: mount source", ValueError),
                    _optional_string(m.get("type"), "config.json: mount type", ValueError),
                )
                for m in mounts
            ),
        )


@dataclass(frozen=True)
class ImageMetadata:
    """The contents of metadata.json."""

    namespace: str
    container_id: str
    checkpoint_id: str
    created: str
    host: str
    kernel: str
    runc_version: str
    criu_version: str
    filesystem: FilesystemInfo
    criu_files: tuple[CriuFile, ...]
    container: ContainerEssentials = field(default_factory=ContainerEssentials)
    cpu: CpuInfo | None = None
    format_version: int = FORMAT_VERSION
    # CRIU options the dump used that the restore must repeat (arch.checkpoint.criu_options).
    criu_options: tuple[str, ...] = ()
    # What identifies the job (arch.checkpoint.image.job_identity); always present in format 2.
    identity: JobIdentity | None = None
    # The name of CRIU's dump log among criu_files.
    criu_log: str = CRIU_DUMP_LOG
    # The CRIU configuration file runc handed CRIU (arch.checkpoint.criu_config); None in
    # images made before it was recorded.
    criu_config: CriuConfig | None = None
    # The zstd level the compressed files were written with (None: nothing compressed).
    compression_level: int | None = None
    # The job's lineage (a random id opened by a fresh start) and this image's place in it: one
    # more than the image the container was restored from (README: Data safety). Images made
    # before generations were recorded read as generation 0 of no lineage.
    lineage: str = ""
    generation: int = 0

    @classmethod
    def new(
        cls,
        *,
        namespace: str,
        container_id: str,
        checkpoint_id: str,
        runc_version: str,
        criu_version: str,
        filesystem: FilesystemInfo,
        criu_files: tuple[CriuFile, ...],
        container: ContainerEssentials,
        cpu: CpuInfo | None = None,
        criu_options: tuple[str, ...] = (),
        identity: JobIdentity | None = None,
        criu_log: str = CRIU_DUMP_LOG,
        criu_config: CriuConfig | None = None,
        compression_level: int | None = None,
        lineage: str = "",
        generation: int = 0,
    ) -> ImageMetadata:
        """Metadata for an image made now on this host (created, host and kernel filled in)."""
        uname = os.uname()
        compressed = filesystem.compression is not None or any(
            criu_file.compression is not None for criu_file in criu_files
        )
        return cls(
            namespace=namespace,
            container_id=container_id,
            checkpoint_id=checkpoint_id,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            host=uname.nodename,
            kernel=uname.release,
            runc_version=runc_version,
            criu_version=criu_version,
            filesystem=filesystem,
            criu_files=criu_files,
            container=container,
            cpu=cpu,
            criu_options=criu_options,
            identity=identity,
            criu_log=criu_log,
            criu_config=criu_config,
            lineage=lineage,
            generation=generation,
            format_version=COMPRESSED_FORMAT_VERSION if compressed else FORMAT_VERSION,
            compression_level=compression_level if compressed else None,
        )

    @property
    def compressed(self) -> bool:
        """Whether any file is stored compressed (such an image is format 3)."""
        return self.filesystem.compression is not None or any(
            criu_file.compression is not None for criu_file in self.criu_files
        )

    @property
    def process_bytes(self) -> int:
        """Bytes of the CRIU files (process state)."""
        return sum(criu_file.size for criu_file in self.criu_files)

    @property
    def image_bytes(self) -> int:
        """Bytes of the image's data: the CRIU files plus the filesystem tar (not metadata)."""
        return self.process_bytes + (self.filesystem.size or 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "namespace": self.namespace,
            "container_id": self.container_id,
            "checkpoint_id": self.checkpoint_id,
            "created": self.created,
            "host": self.host,
            "kernel": self.kernel,
            "runc_version": self.runc_version,
            "criu_version": self.criu_version,
            "cpu": None
            if self.cpu is None
            else {"model": self.cpu.model, "flags": list(self.cpu.flags)},
            "filesystem": self.filesystem.to_dict(),
            "process": {
                "criu_files": [f.to_dict() for f in self.criu_files],
                "criu_options": list(self.criu_options),
                "criu_log": self.criu_log,
                "criu_config": None if self.criu_config is None else self.criu_config.to_dict(),
            },
            "container": {
                "args": list(self.container.args),
                "env": list(self.container.env),
                "cwd": self.container.cwd,
                "mounts": [
                    {"destination": m.destination, "source": m.source, "type": m.type}
                    for m in self.container.mounts
                ],
            },
            "identity": None if self.identity is None else self.identity.to_dict(),
            **({} if self.compression_level is None
               else {"compression": {"algorithm": "zstd", "level": self.compression_level}}),
            "lineage": self.lineage,
            "generation": self.generation,
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> ImageMetadata:
        """Parse and validate metadata.json; InvalidImage names what is wrong."""
        from arch.bounded_json import loads

        try:
            document = loads(data)
        except ValueError as error:  # bounded_json: nesting, numbers, UTF-8, syntax
            raise InvalidImage(f"{METADATA_FILE} is not valid JSON: {error}") from error
        return cls.from_dict(document)

    @classmethod
    def from_dict(cls, document: object) -> ImageMetadata:
        """Validate a parsed metadata document. Keys this version does not know are ignored."""
        top = _object(document, "metadata")
        version = _integer(_required(top, "format_version", "metadata"), "format_version")
        if version == PRE_IDENTITY_FORMAT_VERSION:
            raise InvalidImage(
                f"{METADATA_FILE}: format_version {version} records no job identity (made before "
                "identity binding): not restored"
            )
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise InvalidImage(
                f"{METADATA_FILE}: format_version {version} is not supported (this ARCH reads "
                f"{', '.join(str(v) for v in sorted(SUPPORTED_FORMAT_VERSIONS))})"
            )
        text = {
            key: _string(_required(top, key, "metadata"), key)
            for key in (
                "namespace", "container_id", "checkpoint_id", "created", "host", "kernel",
                "runc_version", "criu_version",
            )
        }
        _check_safe_id(text["namespace"], "namespace")
        _check_safe_id(text["checkpoint_id"], "checkpoint_id")
        if not text["container_id"]:
            raise InvalidImage(f"{METADATA_FILE}: container_id is empty")
        _check_rfc3339(text["created"])
        parse_criu_version(text["criu_version"], source="criu_version")
        filesystem = _filesystem_from(_required(top, "filesystem", "metadata"))
        criu_log = _criu_log_from(_required(top, "process", "metadata"))
        criu_files = _criu_files_from(top["process"], filesystem, criu_log)
        criu_options = _criu_options_from(top["process"])
        criu_config = _criu_config_from(top["process"])

        identity = JobIdentity.from_dict(_required(top, "identity", "metadata"))
        compression_level = _compression_level_from(top.get("compression"))
        compressed = filesystem.compression is not None or any(
            criu_file.compression is not None for criu_file in criu_files
        )
        if compressed != (version == COMPRESSED_FORMAT_VERSION) or compressed != (
            compression_level is not None
        ):
            raise InvalidImage(
                f"{METADATA_FILE}: compressed files, the compression section and format_version "
                f"{COMPRESSED_FORMAT_VERSION} go together"
            )
        return cls(
            namespace=text["namespace"],
            container_id=text["container_id"],
            checkpoint_id=text["checkpoint_id"],
            created=text["created"],
            host=text["host"],
            kernel=text["kernel"],
            runc_version=text["runc_version"],
            criu_version=text["criu_version"],
            filesystem=filesystem,
            criu_files=criu_files,
            container=_container_from(_required(top, "container", "metadata")),
            cpu=_cpu_from(top.get("cpu")),
            format_version=version,
            criu_options=criu_options,
            identity=identity,
            criu_log=criu_log,
            criu_config=criu_config,
            compression_level=compression_level,
            lineage=_lineage_from(top.get("lineage", "")),
            generation=_generation_from(top.get("generation", 0)),
        )


def _lineage_from(value: object) -> str:
    if not isinstance(value, str) or (value and not _LINEAGE.match(value)):
        raise InvalidImage(f"{METADATA_FILE}: lineage must be up to 64 letters, digits, - or _")
    return value


def _generation_from(value: object) -> int:
    generation = _integer(value, "generation")
    if not 0 <= generation < 2**53:
        raise InvalidImage(f"{METADATA_FILE}: generation {generation} is out of range")
    return generation


def new_lineage() -> str:
    """A fresh lineage id, for a job that starts from nothing."""
    return os.urandom(8).hex()


def parse_criu_version(text: str, source: str = "CRIU version") -> tuple[int, ...]:
    """(major, minor[, sublevel]) from "4.2.1" or `criu --version` output ("Version: 4.2")."""
    found = _VERSION.search(text)
    if found is None:
        raise InvalidImage(f"{source} {text!r}: no version number")
    return tuple(int(part) for part in found.groups() if part is not None)


def host_cpu_summary(cpuinfo_path: str = "/proc/cpuinfo") -> CpuInfo | None:
    """The first CPU's model name and flags, or None when /proc/cpuinfo does not say."""
    model = None
    flags: tuple[str, ...] | None = None
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and flags is None:
                    flags = tuple(value.split())
                if not line.strip() and (model is not None or flags is not None):
                    break  # end of the first processor's block
    except OSError:
        return None
    if model is None and flags is None:
        return None
    return CpuInfo(model or "", flags or ())


def _required(document: Mapping[str, Any], key: str, where: str) -> object:
    if key not in document:
        raise InvalidImage(f"{METADATA_FILE}: {where}.{key} is missing")
    return document[key]


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidImage(f"{METADATA_FILE}: {where} must be an object")
    return value


def _string(value: object, where: str, error: type[Exception] = InvalidImage) -> str:
    if not isinstance(value, str):
        raise error(f"{where} must be a string, got {type(value).__name__}")
    return value


def _optional_string(
    value: object, where: str, error: type[Exception] = InvalidImage
) -> str | None:
    return None if value is None else _string(value, where, error)


def _strings(value: object, where: str, error: type[Exception] = InvalidImage) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise error(f"{where} must be a list of strings")
    return tuple(value)


def _integer(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidImage(f"{METADATA_FILE}: {where} must be an integer")
    return value


def _size(value: object, where: str) -> int:
    size = _integer(value, where)
    if size < 0:
        raise InvalidImage(f"{METADATA_FILE}: {where} must not be negative")
    return size


def _check_safe_id(value: str, where: str) -> None:
    if not 1 <= len(value) <= 128 or value in (".", "..") or not _SAFE_ID_CHARS.issuperset(value):
        raise InvalidImage(f"{METADATA_FILE}: {where} {value!r} is not a safe path component")


def _check_file_name(value: str, where: str) -> None:
    if (
        not 1 <= len(value) <= 255
        or value.startswith(".")
        or not _FILE_NAME_CHARS.issuperset(value)
    ):
        raise InvalidImage(f"{METADATA_FILE}: {where} {value!r} is not an acceptable file name")


def _check_rfc3339(value: str) -> None:
    from datetime import datetime

    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in value.upper():
        raise InvalidImage(f"{METADATA_FILE}: created {value!r} is not an RFC 3339 time")


def _filesystem_from(value: object) -> FilesystemInfo:
    section = _object(value, "filesystem")
    mode = _string(_required(section, "mode", "filesystem"), "filesystem.mode")
    if mode not in FILESYSTEM_MODES:
        raise InvalidImage(
            f"{METADATA_FILE}: filesystem.mode {mode!r} is not one of {', '.join(FILESYSTEM_MODES)}"
        )
    if mode == "none":
        if any(section.get(key) is not None for key in ("tar", "sha256", "size")):
            raise InvalidImage(f"{METADATA_FILE}: filesystem mode 'none' names a tar")
        return FilesystemInfo.none()
    compression = _compression_from(section.get("compression"), "filesystem.compression")
    tar = _string(_required(section, "tar", "filesystem"), "filesystem.tar")
    expected_tar = ROOTFS_TAR if compression is None else ROOTFS_TAR + COMPRESSED_SUFFIX
    if tar != expected_tar:
        raise InvalidImage(
            f"{METADATA_FILE}: filesystem.tar must be {expected_tar!r}, got {tar!r}"
        )
    sha256 = _sha256(_required(section, "sha256", "filesystem"), "filesystem.sha256")
    size = _size(_required(section, "size", "filesystem"), "filesystem.size")
    if compression is None:
        if any(section.get(key) is not None for key in ("content_sha256", "content_size")):
            raise InvalidImage(f"{METADATA_FILE}: an uncompressed tar has a content digest")
        return FilesystemInfo(mode, tar, sha256, size)
    return FilesystemInfo(
        mode, tar, sha256, size, compression,
        _sha256(_required(section, "content_sha256", "filesystem"), "filesystem.content_sha256"),
        _size(_required(section, "content_size", "filesystem"), "filesystem.content_size"),
    )  # fmt: skip


def _sha256(value: object, where: str) -> str:
    digest = _string(value, where)
    if not _SHA256_HEX.match(digest):
        raise InvalidImage(f"{METADATA_FILE}: {where} is not 64 lowercase hex digits")
    return digest


def _compression_from(value: object, where: str) -> str | None:
    if value is None:
        return None
    if value not in COMPRESSIONS:
        raise InvalidImage(f"{METADATA_FILE}: {where} {value!r} is not one of "
                           f"{', '.join(COMPRESSIONS)}")  # fmt: skip
    return str(value)


def _compression_level_from(value: object) -> int | None:
    if value is None:
        return None
    section = _object(value, "compression")
    _compression_from(_required(section, "algorithm", "compression"), "compression.algorithm")
    level = _integer(_required(section, "level", "compression"), "compression.level")
    if not -131072 <= level <= 22:  # zstd's range (negative: its fast levels)
        raise InvalidImage(f"{METADATA_FILE}: compression.level {level} is not a zstd level")
    return level


def _criu_files_from(
    value: object, filesystem: FilesystemInfo, criu_log: str
) -> tuple[CriuFile, ...]:
    section = _object(value, "process")
    listed = _required(section, "criu_files", "process")
    if not isinstance(listed, list):
        raise InvalidImage(f"{METADATA_FILE}: process.criu_files must be a list")
    files = []
    for item in listed:
        entry = _object(item, "process.criu_files[]")
        name = _string(_required(entry, "name", "process.criu_files[]"), "criu file name")
        _check_file_name(name, "criu file")
        size = _size(_required(entry, "size", name), f"{name}.size")
        sha256 = _optional_string(entry.get("sha256"), f"{name}.sha256")
        if sha256 is not None and not _SHA256_HEX.match(sha256):
            raise InvalidImage(f"{METADATA_FILE}: {name}.sha256 is not 64 lowercase hex digits")
        compression = _compression_from(entry.get("compression"), f"{name}.compression")
        content_size = None
        if compression is not None:
            if not name.endswith(COMPRESSED_SUFFIX) or name == COMPRESSED_SUFFIX:
                raise InvalidImage(f"{METADATA_FILE}: compressed {name} lacks the "
                                   f"{COMPRESSED_SUFFIX} suffix")  # fmt: skip
            content_size = _size(_required(entry, "content_size", name), f"{name}.content_size")
        elif entry.get("content_size") is not None:
            raise InvalidImage(f"{METADATA_FILE}: uncompressed {name} has a content_size")
        files.append(CriuFile(name, size, sha256, compression, content_size))
    names = [f.name for f in files]
    criu_names = [f.criu_name for f in files]
    # A stored name and the name a compressed file decompresses to: no two alike.
    claimed = names + [f.criu_name for f in files if f.compression is not None]
    if len(set(claimed)) != len(claimed):
        raise InvalidImage(f"{METADATA_FILE}: process.criu_files lists a file twice")
    for reserved in (METADATA_FILE, SIGNATURE_FILE, filesystem.tar, ROOTFS_TAR):
        if reserved in names or reserved in criu_names:
            raise InvalidImage(f"{METADATA_FILE}: process.criu_files lists {reserved}")
    for required in (CRIU_INVENTORY, criu_log):
        if required not in names:  # stored as they are, never compressed
            raise InvalidImage(f"{METADATA_FILE}: process.criu_files lacks {required}")
    return tuple(files)


def _criu_log_from(process: object) -> str:
    """process.criu_log: the dump log's name (dump.log in images that do not say)."""
    value = _object(process, "process").get("criu_log", CRIU_DUMP_LOG)
    name = _string(value, "process.criu_log")
    _check_file_name(name, "process.criu_log")
    return name


def _criu_config_from(process: object) -> CriuConfig | None:
    """process.criu_config: {file, sha256, log_file, work_dir}, each a string or null."""
    from arch.checkpoint.criu_config import CriuConfig

    value = _object(process, "process").get("criu_config")
    if value is None:
        return None
    section = _object(value, "process.criu_config")
    fields = {
        key: _optional_string(section.get(key), f"process.criu_config.{key}")
        for key in ("file", "sha256", "log_file", "work_dir")
    }
    if fields["sha256"] is not None and not _SHA256_HEX.match(fields["sha256"]):
        raise InvalidImage(f"{METADATA_FILE}: process.criu_config.sha256 is not 64 lowercase hex")
    return CriuConfig(fields["file"], fields["sha256"], fields["log_file"], fields["work_dir"])


def _criu_options_from(process: object) -> tuple[str, ...]:
    from arch.checkpoint.criu_options import CriuOptionError, parse_options

    listed = _strings(_object(process, "process").get("criu_options", []), "process.criu_options")
    try:
        return tuple(parse_options(listed, f"{METADATA_FILE}: process.criu_options"))
    except CriuOptionError as error:
        raise InvalidImage(str(error)) from error


def _container_from(value: object) -> ContainerEssentials:
    section = _object(value, "container")
    mounts = _required(section, "mounts", "container")
    if not isinstance(mounts, list):
        raise InvalidImage(f"{METADATA_FILE}: container.mounts must be a list")
    return ContainerEssentials(
        args=_strings(_required(section, "args", "container"), "container.args"),
        env=_strings(_required(section, "env", "container"), "container.env"),
        cwd=_string(_required(section, "cwd", "container"), "container.cwd"),
        mounts=tuple(_mount_from(mount) for mount in mounts),
    )


def _mount_from(value: object) -> MountInfo:
    mount = _object(value, "container.mounts[]")
    return MountInfo(
        _string(_required(mount, "destination", "mount"), "mount.destination"),
        _optional_string(mount.get("source"), "mount.source"),
        _optional_string(mount.get("type"), "mount.type"),
    )


def _cpu_from(value: object) -> CpuInfo | None:
    if value is None:
        return None
    section = _object(value, "cpu")
    return CpuInfo(
        _string(_required(section, "model", "cpu"), "cpu.model"),
        _strings(_required(section, "flags", "cpu"), "cpu.flags"),
    )
