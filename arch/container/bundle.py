"""The OCI bundle of a container being created: its config.json and rootfs.

config.json is the engine's file: ARCH changes it only in shared-filesystem mode (a bind mount
and the working directory), atomically, and leaves it untouched when the change is refused.
ARCH reads it as runc does (arch.container.oci_spec): `spec` is that reading; `document` is the
file as Python's json module reads it, kept only to write the shared-filesystem change back.
"""

from __future__ import annotations

import json
import os
from typing import Any

from arch.container import oci_spec

CONFIG_FILE = "config.json"
SHAREDFS_MOUNT_OPTIONS = ["rbind", "rw"]


class BundleError(Exception):
    """The bundle cannot be read, or ARCH's change to it is refused."""


class Bundle:
    def __init__(
        self, path: str, spec: dict[str, Any], document: dict[str, Any] | None = None
    ) -> None:
        self.path = path
        self.spec = spec
        # The file for rewriting; None when it must not be rewritten through Python's json
        # (case-variant or repeated keys, or JSON that only Go's decoder takes).
        self.document = document

    @classmethod
    def load(cls, path: str) -> Bundle:
        config_path = os.path.join(path, CONFIG_FILE)
        try:
            with open(config_path, "rb") as config_file:
                data = config_file.read()
        except OSError as error:
            raise BundleError(f"{config_path}: {error}") from error
        return cls.from_bytes(path, data)

    @classmethod
    def from_bytes(cls, path: str, data: bytes) -> Bundle:
        try:
            decoded = oci_spec.decode(data)
        except oci_spec.SpecError as error:
            raise BundleError(f"{os.path.join(path, CONFIG_FILE)}: {error}") from error
        document = None
        if decoded.plain:
            try:
                loaded = json.loads(data)
            except ValueError:
                loaded = None
            document = loaded if isinstance(loaded, dict) else None
        return cls(path, decoded.spec, document)

    @property
    def config_path(self) -> str:
        return os.path.join(self.path, CONFIG_FILE)

    @property
    def process(self) -> dict[str, Any]:
        """runc's process section (its zero value when config.json has none)."""
        process = self.spec.get("process")
        return process if process is not None else oci_spec.zero_process()

    @property
    def env(self) -> list[str]:
        return list(self.process["env"] or [])

    @property
    def rootfs(self) -> str:
        root = self.spec.get("root")
        path = root["path"] if root is not None else "rootfs"
        return os.path.normpath(os.path.join(self.path, path))

    @property
    def mounts(self) -> list[dict[str, Any]]:
        return list(self.spec.get("mounts") or [])

    def process_owner(self) -> tuple[int, int]:
        user = self.process["user"]
        return int(user["uid"]), int(user["gid"])

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
        if existing == [wanted] and self.process["cwd"] == container_dir:
            return None
        if existing:
            conflicting = ", ".join(
                f"{m.get('destination')} (source {m.get('source')})" for m in existing
            )
            raise BundleError(
                f"ARCH_WORKDIR_CONTAINER_PATH={container_dir} conflicts with the container's "
                f"mount(s) {conflicting}"
            )
        if self.document is None:
            raise BundleError(
                f"{self.config_path}: ARCH_WORKDIR_CONTAINER_PATH needs config.json rewritten, "
                "and this one spells keys in another case or repeats them: refused rather than "
                "written in a form runc would read differently"
            )
        document = json.loads(json.dumps(self.document))
        if not isinstance(document.get("mounts"), list):
            document["mounts"] = []
        if not isinstance(document.get("process"), dict):
            document["process"] = {}
        document["mounts"].append(wanted)
        document["process"]["cwd"] = container_dir
        return Bundle.from_bytes(self.path, json.dumps(document).encode("utf-8"))

    def save(self) -> None:
        """Write config.json atomically, keeping its mode."""
        temporary = f"{self.config_path}.arch-{os.getpid()}"
        mode = os.stat(self.config_path).st_mode & 0o7777
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as config_file:
                json.dump(self.document, config_file)
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
