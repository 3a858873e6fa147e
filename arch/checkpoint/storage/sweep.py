"""The host's periodic clean-up, run by the exit watcher (`archctl watch-exits`) every
SWEEP_INTERVAL_SECONDS, so that nothing a killed or crashed operation left waits for the next
operation on the same container or location:
- checkpoints and restores whose arch-runc died (arch.container.interrupted),
- restore work directories under `<state_dir>/.work` whose lease is not held, with whatever a
  stopped CRIU left mounted in them (its cgroup yard): unmounted first, and reported,
- leftovers beside images (`.staging-`, `.old-`, `.removing-`: store.cleanup_stale, lease-aware;
  reader markers of dead restores: arch.checkpoint.storage.readers)
  in every namespace directory of the checkpoint root and the allowed roots, and in the
  directories of the images this host's containers use (shared-filesystem and pool layouts).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from arch.checkpoint.storage.beneath import open_beneath, opened_root
from arch.checkpoint.storage.lease import is_held, lease_of
from arch.checkpoint.storage.readers import remove_stale_markers_at
from arch.checkpoint.storage.store import cleanup_stale
from arch.runc.leftover_mounts import MountsLeft, remove_tree

if TYPE_CHECKING:
    from arch.config import HostConfig

SWEEP_INTERVAL_SECONDS = 300.0
WORK_DIR = ".work"
RESTORE_WORK_PREFIX = "restore-"

logger = logging.getLogger("arch")


def sweep_host(config: HostConfig, runc_binary: str) -> list[str]:
    """Clean up what is left on this host; returns what was done, one line each."""
    done = _finish_interrupted_operations(config, runc_binary)
    done += remove_dead_work_dirs(os.path.join(config.state_dir, WORK_DIR))
    for root, parent in sorted(location_dirs(config)):
        try:
            done += _clean_up(root, parent)
        except Exception as error:  # whatever the storage holds, the sweep goes on: reported
            logger.warning("clean-up of %s skipped: %s", os.path.join(root, parent),
                           error if isinstance(error, OSError)
                           else f"{type(error).__name__}: {error}")  # fmt: skip
    return done


def _clean_up(root: str, parent: str) -> list[str]:
    """Leftovers and stale reader markers in `parent` beneath `root`, never through a
    symlink."""
    with opened_root(root) as root_fd:
        removed = cleanup_stale(root_fd, parent)
        done = [f"removed {os.path.join(root, parent, action.name)}" for action in removed]
        try:
            parent_fd = open_beneath(root_fd, parent)
        except FileNotFoundError:
            return done
    try:
        markers = remove_stale_markers_at(parent_fd)
    finally:
        os.close(parent_fd)
    return done + [f"removed {os.path.join(root, parent, name)}" for name in markers]


def _finish_interrupted_operations(config: HostConfig, runc_binary: str) -> list[str]:
    from arch.container.interrupted import OPERATION_FLAG, finish_interrupted
    from arch.container.state import ContainerState, list_containers

    done = []
    for namespace, container_id in list_containers(config.state_dir):
        try:
            state = ContainerState(config.state_dir, namespace, container_id)
            if not state.has(OPERATION_FLAG):
                continue
            finished = finish_interrupted(state, runc_binary, config.criu)
        except Exception as error:  # the other containers are still looked after: reported
            logger.warning("interrupted operation of %s/%s not finished: %s: %s", namespace,
                           container_id, type(error).__name__, error)  # fmt: skip
            continue
        if finished is not None:
            done.append(f"finished the interrupted {finished.kind} of {namespace}/{container_id}")
            done += [f"unmounted {mount_point}" for mount_point in finished.unmounted]
    return done


def remove_dead_work_dirs(work_root: str) -> list[str]:
    """Remove restore work directories whose restore is over (no lease, or one not held)."""
    try:
        root_fd = os.open(work_root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    done = []
    try:
        for entry in os.scandir(root_fd):
            if not entry.name.startswith(RESTORE_WORK_PREFIX):
                continue
            lease = lease_of(root_fd, entry.name)
            if lease is not None and is_held(lease):
                continue
            path = os.path.join(work_root, entry.name)
            try:
                unmounted = remove_tree(path)
            except MountsLeft as error:
                logger.error("%s not removed: %s", path, error)
                continue
            done += [f"unmounted {mount_point}" for mount_point in unmounted]
            done.append(f"removed {path}")
    finally:
        os.close(root_fd)
    return done


def location_dirs(config: HostConfig) -> set[tuple[str, str]]:
    """Directories images are published into that this host knows of, as (root, path
    beneath the root)."""
    from arch.container.identity import ImageLocation
    from arch.container.state import ContainerState, StateError, list_containers

    found: set[tuple[str, str]] = set()
    for root in {config.checkpoint_root, *config.allowed_roots}:
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        found.update(
            (root, entry.name)
            for entry in entries
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
        )
    for namespace, container_id in list_containers(config.state_dir):
        try:
            record = ContainerState(config.state_dir, namespace, container_id).read_record()
            location = ImageLocation.from_dict((record or {}).get("location") or {})
        except (StateError, ValueError, OSError):
            continue
        if location.image_dir and location.relative:
            found.add((location.root, os.path.dirname(location.relative)))
        if location.pool_dir and os.path.commonpath([location.pool_dir, location.root]) == (
            location.root
        ):
            found.add((location.root, os.path.relpath(location.pool_dir, location.root)))
    return found
