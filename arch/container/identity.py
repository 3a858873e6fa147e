"""Where a container's checkpoint image lives, decided from its OCI config.json environment.

The environment is untrusted input (it comes from whoever writes the task definition), so every
path it names is checked against the host's `allowed_roots` after resolving symlinks, and every
path component derived from it is checked to be a single safe name.

Environment lists follow runc: entries are "KEY=VALUE", and when a key repeats the last entry
wins (runc sets them one after another). An empty value counts as unset.

Module-level imports are kept to what the interpreter has loaded anyway: arch-runc evaluates
`opted_in` on every `create`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from arch.config import HostConfig

ENABLE_VAR = "ARCH_ENABLE"
CHECKPOINT_ID_VAR = "ARCH_CHECKPOINT_ID"
CHECKPOINT_POOL_VAR = "ARCH_CHECKPOINT_POOL"
BATCH_JOB_ID_VAR = "AWS_BATCH_JOB_ID"
CHECKPOINT_HOST_PATH_VAR = "ARCH_CHECKPOINT_HOST_PATH"
SHAREDFS_HOST_PATH_VAR = "ARCH_SHAREDFS_HOST_PATH"
WORKDIR_CONTAINER_PATH_VAR = "ARCH_WORKDIR_CONTAINER_PATH"

ENABLE_VALUES = frozenset({"1", "true", "yes"})
# In shared-filesystem mode, the subdirectories of ARCH_SHAREDFS_HOST_PATH.
SHAREDFS_CHECKPOINT_DIR = "checkpoint"
SHAREDFS_WORK_DIR = "work"

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
CHECKPOINT_ID_CHARS = _ALNUM | frozenset("_.:-")
CHECKPOINT_ID_MAX = 128


class ImagePathError(ValueError):
    """The container's ARCH_* variables do not name a usable image location."""


class ImageLocation:
    """Where a container's image is, and (shared-filesystem mode) its work directory.

    Both lie beneath `root`, the allowed root (or the checkpoint root) that holds them, at the
    paths `relative` and `workdir_relative`; ARCH resolves those beneath a descriptor of the root
    each time it uses them (storage/beneath.py). `image_dir` and `sharedfs_workdir` are the
    same places as absolute paths, for logs and for the container's bind mount. A record written
    before roots were recorded counts as lying beneath "/": no symlink anywhere on the path.

    A plain class rather than a NamedTuple: creating a NamedTuple class costs about a
    millisecond at import, on arch-runc's `create` path.
    """

    __slots__ = (
        "checkpoint_id",
        "container_workdir",
        "image_dir",
        "namespace",
        "pool_dir",
        "relative",
        "root",
        "sharedfs_workdir",
        "workdir_relative",
    )

    def __init__(
        self,
        image_dir: str,
        namespace: str,
        checkpoint_id: str,
        sharedfs_workdir: str | None = None,
        container_workdir: str | None = None,
        pool_dir: str | None = None,
        *,
        root: str | None = None,
        relative: str | None = None,
        workdir_relative: str | None = None,
    ) -> None:
        # A pool member's image_dir is the image it claimed, "" while it holds none.
        self.image_dir = image_dir
        self.namespace = namespace
        self.checkpoint_id = checkpoint_id
        # Host directory bind-mounted into the container (shared-filesystem mode), else None.
        self.sharedfs_workdir = sharedfs_workdir
        # Where that directory appears inside the container (its working directory), else None.
        self.container_workdir = container_workdir
        # ARCH_CHECKPOINT_POOL: the pool's directory (checkpoint_id is then the pool), else None.
        self.pool_dir = pool_dir
        if root is None:
            root, relative = "/", image_dir.lstrip("/")
            workdir_relative = sharedfs_workdir.lstrip("/") if sharedfs_workdir else None
        self.root = root
        self.relative = relative if relative is not None else _beneath(root, image_dir)
        self.workdir_relative = workdir_relative

    @property
    def pool(self) -> str | None:
        """The pool's name for a pool member, else None."""
        return None if self.pool_dir is None else self.checkpoint_id

    def with_image_dir(self, image_dir: str) -> ImageLocation:
        """The same location with another image directory (a pool member's claim)."""
        return ImageLocation(
            image_dir,
            self.namespace,
            self.checkpoint_id,
            self.sharedfs_workdir,
            self.container_workdir,
            self.pool_dir,
            root=self.root,
            relative=_beneath(self.root, image_dir),
            workdir_relative=self.workdir_relative,
        )

    def as_dict(self) -> dict[str, str | None]:
        """JSON-ready, e.g. for the container's state record."""
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ImageLocation:
        """The inverse of as_dict (ValueError when a field is missing or not a string)."""

        def text(name: str, optional: bool = False) -> str | None:
            value = data.get(name)
            if isinstance(value, str) or (optional and value is None):
                return value
            raise ValueError(f"not an image location ({name}): {data!r}")

        return cls(
            str(text("image_dir")),
            str(text("namespace")),
            str(text("checkpoint_id")),
            text("sharedfs_workdir", optional=True),
            text("container_workdir", optional=True),
            text("pool_dir", optional=True),
            root=text("root", optional=True),
            relative=text("relative", optional=True),
            workdir_relative=text("workdir_relative", optional=True),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageLocation):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.as_dict().items())
        return f"ImageLocation({fields})"


def env_map(env: Iterable[str]) -> dict[str, str]:
    """The OCI `process.env` list as a dict; the last of repeated keys wins, as in runc."""
    variables: dict[str, str] = {}
    for entry in env:
        key, sep, value = entry.partition("=")
        if sep and key:
            variables[key] = value
    return variables


def enable_value_warning(value: str) -> str | None:
    """The warning for an ARCH_ENABLE value that is set but not understood, else None."""
    if not value or value.lower() in ENABLE_VALUES:
        return None
    return (
        f"{ENABLE_VAR}={value!r} is not one of 1, true, yes (any case): "
        "ARCH is not enabled for this container"
    )


def opted_in(env: Iterable[str]) -> bool:
    """Whether the container asks for ARCH; an unrecognised non-empty value is logged."""
    value = env_map(env).get(ENABLE_VAR, "")
    warning = enable_value_warning(value)
    if warning is not None:
        import logging  # Deferred: only this rare path logs.

        logging.getLogger("arch").warning("%s", warning)
        return False
    return value.lower() in ENABLE_VALUES


def checkpoint_id(env: Iterable[str], container_id: str) -> str:
    """ARCH_CHECKPOINT_ID, else AWS_BATCH_JOB_ID, else the container id; validated."""
    return _checkpoint_id_from(env_map(env), container_id)


def validate_checkpoint_id(value: str, source: str) -> str:
    """`value` when it is a valid checkpoint id; `source` names where it came from."""
    if not 1 <= len(value) <= CHECKPOINT_ID_MAX:
        raise ImagePathError(
            f"{source}={value!r}: a checkpoint id must be 1 to {CHECKPOINT_ID_MAX} characters"
        )
    if value in (".", "..") or not CHECKPOINT_ID_CHARS.issuperset(value):
        raise ImagePathError(
            f"{source}={value!r}: a checkpoint id may only hold letters, digits and _ . : - "
            "and may not be '.' or '..'"
        )
    return value


def validate_namespace(namespace: str) -> str:
    """`namespace` when it is a single safe path component (the state directory's rule)."""
    from arch.container.state import StateError, validate_component

    try:
        return validate_component("namespace", namespace)
    except StateError as error:
        raise ImagePathError(str(error)) from error


def image_location(
    env: Iterable[str], namespace: str, container_id: str, config: HostConfig
) -> ImageLocation:
    """Where the container's image lives (see the contract's "Container environment")."""
    variables = env_map(env)
    namespace = validate_namespace(namespace)
    pool = _pool_from(variables)
    identifier = pool or _checkpoint_id_from(variables, container_id)
    shared = variables.get(SHAREDFS_HOST_PATH_VAR, "")
    container_workdir = variables.get(WORKDIR_CONTAINER_PATH_VAR, "")
    if shared or container_workdir:
        location = _sharedfs_location(shared, container_workdir, namespace, identifier, config)
    else:
        checkpoint_path = variables.get(CHECKPOINT_HOST_PATH_VAR, "")
        if checkpoint_path:
            base = _host_path(CHECKPOINT_HOST_PATH_VAR, checkpoint_path, config)
            root, relative = _beneath_allowed_root(
                CHECKPOINT_HOST_PATH_VAR, os.path.join(base, namespace, identifier), config
            )
        else:
            # The checkpoint root comes from the trusted host configuration: no allowed_roots check.
            root, relative = config.checkpoint_root, f"{namespace}/{identifier}"
        location = ImageLocation(
            _joined(root, relative), namespace, identifier, root=root, relative=relative
        )
    if pool is None:
        return location
    # A pool member holds no image until it claims one (arch.checkpoint.storage.pool).
    pool_location = location.with_image_dir("")
    pool_location.pool_dir = location.image_dir
    return pool_location


def _pool_from(variables: Mapping[str, str]) -> str | None:
    """ARCH_CHECKPOINT_POOL when set (validated), else None; it excludes ARCH_CHECKPOINT_ID."""
    pool = variables.get(CHECKPOINT_POOL_VAR, "")
    if not pool:
        return None
    if variables.get(CHECKPOINT_ID_VAR, ""):
        raise ImagePathError(
            f"{CHECKPOINT_POOL_VAR} and {CHECKPOINT_ID_VAR} are both set: a container either "
            "has its own image or takes one from a pool"
        )
    return validate_checkpoint_id(pool, CHECKPOINT_POOL_VAR)


def _checkpoint_id_from(variables: Mapping[str, str], container_id: str) -> str:
    for name in (CHECKPOINT_ID_VAR, BATCH_JOB_ID_VAR):
        value = variables.get(name, "")
        if value:
            return validate_checkpoint_id(value, name)
    return validate_checkpoint_id(container_id, "container id")


def _sharedfs_location(
    shared: str, container_workdir: str, namespace: str, identifier: str, config: HostConfig
) -> ImageLocation:
    if not shared or not container_workdir:
        missing = SHAREDFS_HOST_PATH_VAR if not shared else WORKDIR_CONTAINER_PATH_VAR
        present = WORKDIR_CONTAINER_PATH_VAR if not shared else SHAREDFS_HOST_PATH_VAR
        raise ImagePathError(
            f"{present} is set but {missing} is not: shared-filesystem mode needs both"
        )
    base = _host_path(SHAREDFS_HOST_PATH_VAR, shared, config)
    root, relative = _beneath_allowed_root(
        SHAREDFS_HOST_PATH_VAR,
        os.path.join(base, SHAREDFS_CHECKPOINT_DIR, namespace, identifier),
        config,
    )
    workdir_root, workdir_relative = _beneath_allowed_root(
        SHAREDFS_HOST_PATH_VAR, os.path.join(base, SHAREDFS_WORK_DIR, namespace, identifier), config
    )
    if workdir_root != root:
        raise ImagePathError(
            f"{SHAREDFS_HOST_PATH_VAR}: {base}/{SHAREDFS_CHECKPOINT_DIR} and "
            f"{base}/{SHAREDFS_WORK_DIR} lie in different allowed roots"
        )
    return ImageLocation(
        _joined(root, relative),
        namespace,
        identifier,
        _joined(root, workdir_relative),
        _container_path(container_workdir),
        root=root,
        relative=relative,
        workdir_relative=workdir_relative,
    )


def _host_path(variable: str, value: str, config: HostConfig) -> str:
    """The resolved host path named by `variable`, which must lie inside an allowed root."""
    root, relative = _beneath_allowed_root(variable, _normalised_absolute(variable, value), config)
    return _joined(root, relative)


def _normalised_absolute(variable: str, value: str) -> str:
    """`value` as a normalised absolute path; no '.' or '..' components are accepted.

    Repeated and trailing slashes are tolerated (they do not change what the path names).
    """
    if "\0" in value:
        raise ImagePathError(f"{variable}={value!r}: contains a NUL byte")
    if not value.startswith("/"):
        raise ImagePathError(f"{variable}={value!r}: must be an absolute path")
    parts = [part for part in value.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise ImagePathError(f"{variable}={value!r}: must not contain '.' or '..' components")
    return "/" + "/".join(parts)  # not os.path.normpath, which keeps a leading "//"


def _beneath_allowed_root(variable: str, path: str, config: HostConfig) -> tuple[str, str]:
    """(allowed root, relative path) of `path` with symlinks resolved, when the result lies
    inside one of the allowed roots (both resolved; the relative path holds no symlink now).

    Resolving covers the part of the path that exists now; a later symlink swap is refused where
    the path is used (storage/beneath.py resolves it beneath the root again, each time).
    """
    resolved = os.path.realpath(path)
    for root in config.allowed_roots:
        resolved_root = os.path.realpath(root)
        if resolved == resolved_root or resolved.startswith(resolved_root.rstrip("/") + "/"):
            return resolved_root, _beneath(resolved_root, resolved)
    raise ImagePathError(
        f"{variable}: {path!r} (resolved: {resolved!r}) is not inside an allowed root "
        f"({', '.join(config.allowed_roots)}; see allowed_roots in {config.path})"
    )


def _joined(root: str, relative: str) -> str:
    return os.path.join(root, relative) if relative else root


def _beneath(root: str, path: str) -> str:
    """`path` relative to `root` ("" for no path: a pool member without a claim yet)."""
    if not path or path == root:
        return ""
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path!r} is not beneath {root!r}")
    return path[len(prefix) :].strip("/")


def _container_path(value: str) -> str:
    path = _normalised_absolute(WORKDIR_CONTAINER_PATH_VAR, value)
    if path == "/":
        raise ImagePathError(
            f"{WORKDIR_CONTAINER_PATH_VAR}={value!r}: must name a directory below '/'"
        )
    return path
