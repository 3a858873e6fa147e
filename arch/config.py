"""Host configuration: /etc/arch/arch.toml, or the file named by ARCH_CONFIG.

A missing file means defaults. A malformed file raises ConfigError; callers on the pass-through
path catch it and fall back (see arch.shim.passthrough), intercepting callers report it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

DEFAULT_CONFIG_PATH = "/etc/arch/arch.toml"
CONFIG_ENV = "ARCH_CONFIG"
LOG_LEVELS = ("debug", "info", "warning", "error")
# A dump of hundreds of GiB to slow network storage takes many minutes; a hung CRIU must still
# end one day. 0 in arch.toml: no limit.
DEFAULT_CHECKPOINT_TIMEOUT = 3600.0
# A restore runs inside the container's start: the ECS agent gives up on a container that has
# not started within ECS_CONTAINER_START_TIMEOUT, 3 minutes on Linux by default ("Amazon ECS
# container agent configuration",
# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/ecs-agent-config.html). A pool
# member's create may first wait restore_wait (2 minutes) for an image, leaving a minute: a hung
# runc restore is cut off after 45 s, so that the rollback and the fresh create still fit.
# 0 in arch.toml: no limit.
DEFAULT_RESTORE_TIMEOUT = 45.0
KNOWN_KEYS = frozenset(
    {
        "runc",
        "criu",
        "checkpoint_root",
        "state_dir",
        "log_file",
        "log_level",
        "allowed_roots",
        "criu_options",
        "metrics_file",
        "image_key_file",
        "image_verify_key_files",
        "unsigned_images",
        "checkpoint_timeout",
        "platform",
        "restore_wait",
        "restore_timeout",
        "compression",
        "failpoints",
    }
)
# How images store memory pages and the filesystem tar (arch.checkpoint.image.compression):
# "zstd" where it pays, "off" never. Off by default: a restore unpacks a compressed image into
# state_dir (a tmpfs /run, 20% of RAM under systemd), so a job holding more memory than that
# could not be restored and would start fresh.
COMPRESSIONS = ("zstd", "off")
DEFAULT_COMPRESSION = "off"
# What a Spot notice does to a checkpointed job (CONTRACT.md, arch.spot.platform).
PLATFORMS = ("ecs", "batch", "none")
# Seconds a new pool member's create waits for an image a host under a notice is still writing.
# Below the ECS agent's container start timeout (ECS_CONTAINER_START_TIMEOUT, 3m on Linux:
# "Amazon ECS container agent configuration", docs.aws.amazon.com/AmazonECS/latest/developerguide/
# ecs-agent-config.html), leaving a minute for the restore itself.
DEFAULT_RESTORE_WAIT = 120.0
# The host's signing key; the role generates it when no fleet key is given.
DEFAULT_IMAGE_KEY_FILE = "/etc/arch/image.key"
UNSIGNED_IMAGES = ("refuse", "allow")
DEFAULT_METRICS_FILE = "/var/lib/node_exporter/textfile_collector/arch.prom"


class ConfigError(Exception):
    """The host configuration file exists but cannot be used."""


class HostConfig:
    """The validated contents of arch.toml (defaults for keys the file does not set)."""

    __slots__ = (
        "allowed_roots",
        "checkpoint_root",
        "checkpoint_timeout",
        "compression",
        "criu",
        "criu_options",
        "failpoints",
        "image_key_file",
        "image_verify_key_files",
        "log_file",
        "log_level",
        "metrics_file",
        "path",
        "platform",
        "restore_timeout",
        "restore_wait",
        "runc",
        "state_dir",
        "unsigned_images",
    )

    def __init__(
        self,
        path: str,
        runc: str | None = None,
        checkpoint_root: str = "/checkpoint",
        state_dir: str = "/run/arch",
        log_file: str = "/var/log/arch/arch.log",
        log_level: str = "info",
        allowed_roots: tuple[str, ...] | None = None,
        criu_options: tuple[str, ...] = (),
        criu: str | None = None,
        metrics_file: str = DEFAULT_METRICS_FILE,
        image_key_file: str | None = DEFAULT_IMAGE_KEY_FILE,
        checkpoint_timeout: float | None = DEFAULT_CHECKPOINT_TIMEOUT,
        platform: str = "none",
        restore_wait: float = DEFAULT_RESTORE_WAIT,
        restore_timeout: float | None = DEFAULT_RESTORE_TIMEOUT,
        image_verify_key_files: tuple[str, ...] = (),
        unsigned_images: str = "refuse",
        compression: str = DEFAULT_COMPRESSION,
        failpoints: bool = False,
    ) -> None:
        self.path = path
        # "zstd" or "off": whether checkpoints compress pages and tar where it pays.
        self.compression = compression
        # "ecs", "batch" or "none": what a Spot notice does to a checkpointed job.
        self.platform = platform
        # Seconds a pool member's create waits for an image still being written elsewhere.
        self.restore_wait = restore_wait
        # Whether ARCH_FAILPOINTS in the environment arms fault points (arch.failpoints): tests.
        self.failpoints = failpoints
        # Seconds a dump may take before runc and CRIU are stopped (None: no limit).
        self.checkpoint_timeout = checkpoint_timeout
        # Seconds `runc restore` (and its CRIU) may take before it is cut off, what it set up
        # undone and the container created fresh (None: no limit).
        self.restore_timeout = restore_timeout
        self.runc = runc
        # The CRIU runc uses for ARCH's checkpoints and restores (None: runc's PATH lookup).
        self.criu = criu
        self.checkpoint_root = checkpoint_root
        self.state_dir = state_dir
        self.log_file = log_file
        self.log_level = log_level
        self.allowed_roots = allowed_roots if allowed_roots is not None else (checkpoint_root,)
        # CRIU options added to every checkpoint (and replayed at restore), e.g. --tcp-established.
        self.criu_options = criu_options
        # Prometheus textfile-collector output of arch.metrics; "" turns metrics off.
        self.metrics_file = metrics_file
        # The key that signs every image (checkpoint/image/signing.py); None ("" in arch.toml):
        # images are not signed.
        self.image_key_file = image_key_file
        # Further keys whose signatures a restore accepts (key rotation).
        self.image_verify_key_files = image_verify_key_files
        # "refuse": an image without a valid signature is never restored; "allow": it is.
        self.unsigned_images = unsigned_images

    @property
    def verify_key_files(self) -> tuple[str, ...]:
        """Every key a signature may verify with: the signing key first."""
        signing = (self.image_key_file,) if self.image_key_file else ()
        return signing + tuple(f for f in self.image_verify_key_files if f not in signing)

    @property
    def binary_facts_dir(self) -> str:
        """Where runc's and CRIU's versions and this CPU's cpuinfo image are kept between calls
        (arch.runc.binary_facts). Dot-named: no containerd namespace can take the name."""
        return os.path.join(self.state_dir, ".binary-facts")


def config_path() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str | None = None) -> HostConfig:
    """Read and validate the host configuration; a missing file yields the defaults."""
    path = path or config_path()
    try:
        with open(path, "rb") as config_file:
            raw = config_file.read()
    except FileNotFoundError:
        return HostConfig(path)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from error
    return _validate(path, _parse_toml(path, raw))


def _parse_toml(path: str, raw: bytes) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: malformed TOML: {error}") from error


def _validate(path: str, document: dict[str, Any]) -> HostConfig:
    unknown = sorted(set(document) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s): {', '.join(unknown)}")
    runc = document.get("runc")
    if runc is not None:
        runc = _absolute_path(path, "runc", runc)
    criu = document.get("criu")
    if criu is not None:
        criu = _absolute_path(path, "criu", criu)
    image_key_file = document.get("image_key_file", DEFAULT_IMAGE_KEY_FILE)
    image_key_file = (
        None if image_key_file == "" else _absolute_path(path, "image_key_file", image_key_file)
    )
    verify_key_files = document.get("image_verify_key_files", [])
    if not isinstance(verify_key_files, list):
        raise ConfigError(f"{path}: image_verify_key_files must be a list of absolute paths")
    unsigned_images = document.get("unsigned_images", "refuse")
    if unsigned_images not in UNSIGNED_IMAGES:
        raise ConfigError(
            f"{path}: unsigned_images must be one of {', '.join(UNSIGNED_IMAGES)}, "
            f"got {unsigned_images!r}"
        )
    defaults = HostConfig(path)
    checkpoint_root = _absolute_path(
        path, "checkpoint_root", document.get("checkpoint_root", defaults.checkpoint_root)
    )
    state_dir = _absolute_path(path, "state_dir", document.get("state_dir", defaults.state_dir))
    log_file = _absolute_path(path, "log_file", document.get("log_file", defaults.log_file))
    log_level = document.get("log_level", defaults.log_level)
    if not isinstance(log_level, str) or log_level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"{path}: log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}"
        )
    allowed_roots = document.get("allowed_roots")
    if allowed_roots is not None:
        if not isinstance(allowed_roots, list):
            raise ConfigError(f"{path}: allowed_roots must be a list of absolute paths")
        allowed_roots = tuple(_absolute_path(path, "allowed_roots", root) for root in allowed_roots)
    metrics_file = document.get("metrics_file", defaults.metrics_file)
    if metrics_file != "":
        metrics_file = _absolute_path(path, "metrics_file", metrics_file)
    criu_options = document.get("criu_options", [])
    if not isinstance(criu_options, list) or not all(isinstance(o, str) for o in criu_options):
        raise ConfigError(f"{path}: criu_options must be a list of strings")
    from arch.checkpoint.criu_options import CriuOptionError, parse_options

    try:
        criu_options = parse_options(criu_options, f"{path}: criu_options")
    except CriuOptionError as error:
        raise ConfigError(str(error)) from error
    return HostConfig(
        path,
        checkpoint_timeout=_seconds(path, document, "checkpoint_timeout",
                                    DEFAULT_CHECKPOINT_TIMEOUT),
        restore_timeout=_seconds(path, document, "restore_timeout", DEFAULT_RESTORE_TIMEOUT),
        runc=runc,
        checkpoint_root=checkpoint_root,
        state_dir=state_dir,
        log_file=log_file,
        log_level=log_level.lower(),
        allowed_roots=allowed_roots,
        criu_options=tuple(criu_options),
        criu=criu,
        metrics_file=metrics_file,
        image_key_file=image_key_file,
        platform=_platform(path, document),
        restore_wait=_restore_wait(path, document),
        image_verify_key_files=tuple(
            _absolute_path(path, "image_verify_key_files", f) for f in verify_key_files
        ),
        unsigned_images=unsigned_images,
        compression=_compression(path, document),
        failpoints=_boolean(path, document, "failpoints", False),
    )


def _platform(path: str, document: dict[str, Any]) -> str:
    value = document.get("platform", "none")
    if value not in PLATFORMS:
        raise ConfigError(f"{path}: platform must be one of {', '.join(PLATFORMS)}, got {value!r}")
    return str(value)


def _compression(path: str, document: dict[str, Any]) -> str:
    value = document.get("compression", DEFAULT_COMPRESSION)
    if value not in COMPRESSIONS:
        raise ConfigError(
            f"{path}: compression must be one of {', '.join(COMPRESSIONS)}, got {value!r}"
        )
    return str(value)


def _restore_wait(path: str, document: dict[str, Any]) -> float:
    value = document.get("restore_wait", DEFAULT_RESTORE_WAIT)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < 1e9
    ):
        raise ConfigError(f"{path}: restore_wait must be a number of seconds, got {value!r}")
    return float(value)


def _boolean(path: str, document: dict[str, Any], key: str, default: bool) -> bool:
    value = document.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {key} must be true or false, got {value!r}")
    return value


def _seconds(path: str, document: dict[str, Any], key: str, default: float) -> float | None:
    """A time limit in seconds; 0 means none (None)."""
    value = document.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ConfigError(
            f"{path}: {key} must be a number of seconds (0: no limit), got {value!r}"
        )
    return float(value) if value > 0 else None


def _absolute_path(path: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{path}: {key} must be an absolute path, got {value!r}")
    return os.path.normpath(value)
