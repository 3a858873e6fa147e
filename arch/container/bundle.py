"""The OCI bundle of a container being created: its config.json and rootfs.

config.json is the engine's file: ARCH changes it only in shared-filesystem mode (a bind mount
and the working directory), atomically, and leaves it untouched when the change is refused.
"""

from __future__ import annotations

import json
import os
from typing import Any

CONFIG_FILE = "config.json"
SHAREDFS_MOUNT_OPTIONS = ["rbind", "rw"]


class BundleError(Exception):
    """The bundle cannot be read, or ARCH's change to it is refused."""


class Bundle:
    def __init__(self, path: str, spec: dict[str, Any]) -> None:
        self.path = path
        self.spec = spec

    @classmethod
    def load(cls, path: str) -> Bundle:
        config_path = os.path.join(path, CONFIG_FILE)
        try:
            with open(config_path, "rb") as config_file:
                spec = json.loads(config_file.read())
        except (OSError, ValueError) as error:
            raise BundleError(f"{config_path}: {error}") from error
        if not isinstance(spec, dict):
            raise BundleError(f"{config_path}: not a JSON object")
        return cls(path, spec)

    @property
    def config_path(self) -> str:
        return os.path.join(self.path, CONFIG_FILE)

    @property
    def env(self) -> list[str]:
        process = self.spec.get("process") or {}
        env = process.get("env") if isinstance(process, dict) else None
        return [item for item in env if isinstance(item, str)] if isinstance(env, list) else []

    @property
    def rootfs(self) -> str:
        root = self.spec.get("root") or {}
        path = root.get("path", "rootfs") if isinstance(root, dict) else "rootfs"
        return os.path.normpath(os.path.join(self.path, str(path)))

    @property
    def mounts(self) -> list[dict[str, Any]]:
        mounts = self.spec.get("mounts")
        return [m for m in mounts if isinstance(m, dict)] if isinstance(mounts, list) else []

    def process_owner(self) -> tuple[int, int]:
        process = self.spec.get("process") or {}
        user = process.get("user") or {} if isinstance(process, dict) else {}
        return int(user.get("uid", 0)), int(user.get("gid", 0))

    def with_sharedfs_workdir(self, host_dir: str, container_dir: str) -> Bundle | None:
        """The spec with `host_dir` bind-mounted at `container_dir` as the working directory.

        None when the spec already has exactly that mount and cwd. A different mount at the
        same destination, or one nested below it, is a conflict (BundleError).
        """
        existing = [m for m in self.mounts if _same_or_below(m.get("destination"), container_dir)]
        wanted = {
            "destination": container_dir,
            "type": "bind",
            "source": host_dir,
            "options": SHAREDFS_MOUNT_OPTIONS,
        }
        process = self.spec.get("process") or {}
        if existing == [wanted] and process.get("cwd") == container_dir:
            return None
        if existing:
            conflicting = ", ".join(
                f"{m.get('destination')} (source {m.get('source')})" for m in existing
            )
            raise BundleError(
                f"ARCH_WORKDIR_CONTAINER_PATH={container_dir} conflicts with the container's "
                f"mount(s) {conflicting}"
            )
        spec = json.loads(json.dumps(self.spec))
        spec.setdefault("mounts", []).append(wanted)
        spec.setdefault("process", {})["cwd"] = container_dir
        return Bundle(self.path, spec)

    def save(self) -> None:
        """Write config.json atomically, keeping its mode."""
        temporary = f"{self.config_path}.arch-{os.getpid()}"
        mode = os.stat(self.config_path).st_mode & 0o7777
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as config_file:
                json.dump(self.spec, config_file)
                config_file.flush()
                os.fsync(config_file.fileno())
            os.replace(temporary, self.config_path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise


def _same_or_below(destination: object, directory: str) -> bool:
    if not isinstance(destination, str):
        return False
    normalised = os.path.normpath(destination)
    return normalised == directory or normalised.startswith(directory.rstrip("/") + "/")
