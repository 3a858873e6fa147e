"""Shared-filesystem mode: the container's work directory on the shared storage, bind-mounted
as its working directory.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:

    from arch.container.bundle import Bundle
    from arch.container.identity import ImageLocation


def with_sharedfs_workdir(
    bundle: Bundle, location: ImageLocation, container_dir: str
) -> Bundle:
    """Bind the shared work directory into the container as its cwd (config.json rewritten).

    The directory is made (0700, owned by the container's user) beneath its root, following no
    symlink: the shared filesystem is writable by other containers.
    """
    from arch.checkpoint.storage.beneath import NotBeneath, make_dirs_beneath, opened_root
    from arch.container.identity import ImagePathError

    host_dir = str(location.sharedfs_workdir)
    parent, _, name = str(location.workdir_relative).rpartition("/")
    try:
        with opened_root(location.root) as root_fd:
            parent_fd = make_dirs_beneath(root_fd, parent, 0o700)
            try:
                _make_owned_dir(parent_fd, name, bundle.process_owner())
            finally:
                os.close(parent_fd)
    except NotBeneath as error:
        raise ImagePathError(f"shared work directory {host_dir}: {error.strerror}") from error
    changed = bundle.with_sharedfs_workdir(host_dir, container_dir)
    if changed is None:
        return bundle
    changed.save()
    return changed


def _make_owned_dir(parent_fd: int, name: str, owner: tuple[int, int]) -> None:
    """Create `name` in the directory for the container's user, unless it exists (a directory
    that is not a symlink: NotBeneath otherwise)."""
    from arch.checkpoint.storage.beneath import open_beneath

    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        os.close(open_beneath(parent_fd, name))
        return
    fd = open_beneath(parent_fd, name)
    try:
        os.fchown(fd, *owner)
    finally:
        os.close(fd)
