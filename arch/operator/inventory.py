"""The ARCH-enabled containers of one containerd, across its namespaces (Docker's `moby` too).

Two sources, joined per namespace with containerd's containers and tasks:
- ARCH's own state (`<state_dir>/<namespace>/<id>/record.json`), written by arch-runc's create of
  every opted-in container: it is cheap to read and names exactly the containers arch-runc will
  checkpoint. This is all `checkpoint --all` needs in the two-minute window.
- the container's spec in containerd (`ctr containers info --spec`), for containers without ARCH
  state (no task, or created before ARCH was installed): one ctr call each, so only when asked
  (`archctl list`, or a container named on the command line).
"""

from __future__ import annotations

import contextlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

from arch.container.identity import ImageLocation, ImagePathError, image_location, opted_in
from arch.container.state import ContainerState, StateError
from arch.operator.containerd import ContainerdError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from arch.config import HostConfig
    from arch.operator.containerd import Containerd, Task

METADATA_FILE = "metadata.json"
SPEC_QUERY_WORKERS = 8
NO_TASK = "NO TASK"
# Where the container's opt-in was learnt.
FROM_STATE, FROM_SPEC = "arch-state", "spec"


class ArchContainer(NamedTuple):
    """One ARCH-enabled container as containerd and ARCH see it."""

    namespace: str
    container_id: str
    status: str  # containerd's task status, or NO_TASK
    location: ImageLocation | None  # None when its ARCH_* variables are refused
    source: str  # FROM_STATE: arch-runc created it opted in; FROM_SPEC: its spec opts in
    problem: str | None = None  # why the location is unusable

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.container_id}"

    @property
    def checkpoint_id(self) -> str | None:
        return self.location.checkpoint_id if self.location else None

    @property
    def pool(self) -> str | None:
        return self.location.pool if self.location else None

    @property
    def image_present(self) -> bool:
        """A published image at its location (a pool member: the image it claimed)."""
        location = self.location
        return location is not None and image_published(location)


def image_published(location: ImageLocation) -> bool:
    """Whether a complete image is published at the location (metadata.json is written last),
    looked at beneath its root following no symlink.

    A pool member without a claimed image has no image_dir ("")."""
    with opened_image(location) as dir_fd:
        if dir_fd is None:
            return False
        try:
            info = os.stat(METADATA_FILE, dir_fd=dir_fd, follow_symlinks=False)
            return stat.S_ISREG(info.st_mode)
        except OSError:
            return False


@contextlib.contextmanager
def opened_image(location: ImageLocation) -> Iterator[int | None]:
    """The location's image directory, opened beneath its root following no symlink (the
    storage is writable by others); None when there is none or it does not resolve there."""
    from arch.checkpoint.storage.beneath import open_beneath, opened_root

    if not location.image_dir or not location.relative:
        yield None
        return
    try:
        with opened_root(location.root) as root_fd:
            dir_fd = open_beneath(root_fd, location.relative)
    except (OSError, ValueError):
        yield None
        return
    try:
        yield dir_fd
    finally:
        os.close(dir_fd)


def recorded_location(
    config: HostConfig, namespace: str, container_id: str
) -> ImageLocation | None:
    """The image location arch-runc recorded at the container's create; None without state."""
    try:
        state = ContainerState(config.state_dir, namespace, container_id)
        record = state.read_record() if state.exists() else None
    except (StateError, OSError):
        return None
    if record is None:
        return None
    try:
        return ImageLocation.from_dict(record.get("location") or {})
    except ValueError:
        return None


def spec_location(
    config: HostConfig, namespace: str, container_id: str, env: list[str]
) -> tuple[ImageLocation | None, str | None]:
    """The location an opted-in spec names, or (None, the reason it is refused)."""
    try:
        return image_location(env, namespace, container_id, config), None
    except ImagePathError as error:
        return None, str(error)


def spec_env(spec: dict[str, object]) -> list[str]:
    process = spec.get("process")
    env = process.get("env") if isinstance(process, dict) else None
    return [entry for entry in env if isinstance(entry, str)] if isinstance(env, list) else []


class Inventory:
    """What one look at containerd found: ARCH containers, and the namespaces it could not read."""

    def __init__(self, containers: list[ArchContainer], problems: list[str]) -> None:
        self.containers = containers
        self.problems = problems


def discover(client: Containerd, config: HostConfig, *, read_specs: bool) -> Inventory:
    """Every ARCH-enabled container of this containerd, sorted by namespace and id.

    Without `read_specs` only containers with ARCH state are found (no per-container ctr call).
    Raises ContainerdError when containerd cannot be reached at all.
    """
    containers: list[ArchContainer] = []
    problems: list[str] = []
    unknown: list[tuple[str, str, str]] = []  # (namespace, id, status) without ARCH state
    for namespace in client.namespaces():
        try:
            tasks = client.tasks(namespace)
            ids = client.container_ids(namespace)
        except ContainerdError as error:
            problems.append(f"namespace {namespace}: {error}")
            continue
        for container_id in ids:
            status = _status(tasks.get(container_id))
            location = recorded_location(config, namespace, container_id)
            if location is not None:
                containers.append(
                    ArchContainer(namespace, container_id, status, location, FROM_STATE)
                )
            elif read_specs:
                unknown.append((namespace, container_id, status))
    if unknown:
        with ThreadPoolExecutor(max_workers=SPEC_QUERY_WORKERS) as pool:
            found = pool.map(lambda entry: _from_spec(client, config, *entry), unknown)
            for container, problem in found:
                if container is not None:
                    containers.append(container)
                if problem is not None:
                    problems.append(problem)
    containers.sort(key=lambda container: (container.namespace, container.container_id))
    return Inventory(containers, problems)


def _status(task: Task | None) -> str:
    return task.status if task is not None else NO_TASK


def _from_spec(
    client: Containerd, config: HostConfig, namespace: str, container_id: str, status: str
) -> tuple[ArchContainer | None, str | None]:
    try:
        env = spec_env(client.container_spec(namespace, container_id))
    except ContainerdError as error:
        return None, f"{namespace}/{container_id}: {error}"
    if not opted_in(env):
        return None, None
    location, problem = spec_location(config, namespace, container_id, env)
    return ArchContainer(namespace, container_id, status, location, FROM_SPEC, problem), None
