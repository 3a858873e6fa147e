"""Restore of one opted-in container.

Validate the image and what this host would break, apply the filesystem changes to the
new container's rootfs, then `runc restore --detach` with create's own options. Any failure
rolls the filesystem back and removes what runc left, so the caller can create fresh. A
`runc restore` that outlives restore_timeout (a hung CRIU) is cut off: runc and CRIU are stopped
and what they set up undone (arch.container.interrupted.undo_restore) before the rollback.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NoReturn

from arch import failpoints
from arch.checkpoint import criu_config
from arch.checkpoint.cpu_check import CpuCheck
from arch.checkpoint.criu_config import RESTORE_LOG, CriuConfig, CriuConfigError
from arch.checkpoint.criu_log import log_tail
from arch.checkpoint.image.errors import InvalidImage
from arch.checkpoint.image.fingerprint import rootfs_fingerprint
from arch.checkpoint.image.validation import ValidImage, image_dir_of, verify_criu_files
from arch.checkpoint.layer.common import LayerError
from arch.checkpoint.storage.lease import Lease
from arch.checkpoint.storage.sweep import RESTORE_WORK_PREFIX
from arch.runc.binary_facts import CPUINFO_IMAGE
from arch.runc.leftover_mounts import MountsLeft, remove_tree
from arch.runc.runtime import RuncError, RuncTimeout

if TYPE_CHECKING:
    from collections.abc import Collection

    from arch.checkpoint.layer.journal import Journal
    from arch.container.bundle import Bundle
    from arch.container.interrupted import Operation
    from arch.runc.parser import RuncCommand
    from arch.runc.runtime import Runc

logger = logging.getLogger("arch")

# What runc create --pidfd-socket sends with the init's pidfd (runc 1.2+, libcontainer setupPidfd).
PIDFD_MESSAGE = b"standard"
PIDFD_SOCKET_TIMEOUT = 30.0


class RestoreRefused(Exception):
    """The image cannot be restored here; the container is to be created fresh.

    `reason` is one of arch.metrics.REASONS (what the refusal is counted as).
    """

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


class RollbackFailed(Exception):
    """A restore failed and its filesystem changes could not be undone: a fresh create on
    that rootfs would start the job on a mix of two filesystems, so the create fails."""


def job_differences(image: ValidImage, bundle: Bundle) -> list[str]:
    """The identity fields in which the container being created differs from the image's job."""
    identity = image.metadata.identity
    if identity is None:  # parsing refuses such images; kept for a clear message regardless
        return ["identity (not recorded)"]
    try:
        fingerprint = rootfs_fingerprint(bundle.rootfs)
    except (OSError, LayerError) as error:
        raise RestoreRefused(
            f"cannot fingerprint the container image: {error}", "filesystem"
        ) from error
    return identity.differences(bundle.spec, fingerprint)


class RestoreJob:
    """Turn one `runc create` into `runc restore --detach` from a validated image."""

    def __init__(
        self,
        runc: Runc,
        create: RuncCommand,
        bundle: Bundle,
        image: ValidImage,
        container_id: str,
        scratch_dir: str,
        operation: Operation,
        binary_facts_dir: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.runc = runc
        self.create = create
        self.timeout = timeout  # restore_timeout: runc restore's limit in seconds (None: none)
        self.binary_facts_dir = binary_facts_dir  # remembered CPU checks (binary_facts)
        self.bundle = bundle
        self.image = image
        self.container_id = container_id
        self.scratch_dir = scratch_dir
        self.operation = operation  # what a later call needs if this arch-runc is killed
        self.restored = False  # runc restore succeeded: the container exists in runc
        self.criu_config = CriuConfig()  # what runc hands CRIU for this restore (run())
        # The image's identity matched this job's: the image is the job's own.
        self.identity_matched = False

    def run(self) -> None:
        """Restore the container, or raise RestoreRefused with everything rolled back
        (RollbackFailed when the filesystem could not be put back)."""
        preserved = self.create.get("preserve-fds")
        if preserved not in (None, "0"):
            # runc restore has no --preserve-fds: the restored process gets the descriptors of
            # its checkpoint, never the ones this create passes.
            raise RestoreRefused(
                f"create passes extra file descriptors (--preserve-fds={preserved}), which a "
                "restored process cannot receive",
                "host_mismatch",
            )
        differing = job_differences(self.image, self.bundle)
        if differing:
            raise RestoreRefused(
                "the image was taken from another job: it differs in " + ", ".join(differing),
                "job_mismatch",
            )
        self.identity_matched = True
        problems = missing_bind_sources(self.bundle) + missing_mounts(self.image, self.bundle)
        if problems:
            raise RestoreRefused("; ".join(problems), "host_mismatch")
        self.criu_config = self._same_criu_config()
        # Files with a recorded sha256 are checked before they are read: cpuinfo.img and the
        # process images the credentials check reads now, the others while the filesystem
        # changes apply.
        checked_first = [CPUINFO_IMAGE, *self._credential_files()]
        self._verify_criu_files(checked_first)
        self._check_credentials()
        # Runs while the files apply.
        cpu_check = CpuCheck.start(self.image, self.runc.criu, self.operation.helper_started,
                                   self.binary_facts_dir)
        os.makedirs(self.scratch_dir, mode=0o700, exist_ok=True)
        work_dir = tempfile.mkdtemp(prefix=RESTORE_WORK_PREFIX, dir=self.scratch_dir)
        self.operation.begin(bundle=self.bundle.path, work_dir=work_dir)
        lease = Lease(work_dir).start()  # the sweep removes work dirs of dead restores only
        others = [f.name for f in self.image.metadata.criu_files if f.name not in checked_first]
        try:
            self._check_unpack_room(work_dir)
            with ThreadPoolExecutor(max_workers=1) as background:
                images = background.submit(self._checked_criu_files, work_dir, others)
                journal = self._apply_filesystem(work_dir)
                try:
                    image_path = images.result() or self.image.path
                    problems = cpu_check.problems()
                    if problems:
                        raise RestoreRefused("; ".join(problems), "host_mismatch")
                    self._restore_processes(work_dir, image_path)
                except BaseException as failure:
                    if self.restored:  # its processes use these files now: nothing undone
                        raise
                    if journal is not None:
                        try:
                            journal.rollback()
                        except (OSError, LayerError) as error:
                            cause = str(failure).splitlines()[0] if str(failure) else "failed"
                            raise RollbackFailed(f"{cause}; {error}") from error
                    raise
                if journal is not None:
                    try:
                        journal.commit()
                    except (OSError, LayerError) as error:
                        logger.warning("restore %s: dropping the rollback record: %s",
                                       self.container_id, error)  # fmt: skip
        finally:
            cpu_check.problems()  # reaped in every case
            lease.stop()
            self._remove_work_dir(work_dir)

    def _remove_work_dir(self, work_dir: str) -> None:
        """Remove the work directory, with whatever CRIU left mounted in it (its cgroup yard,
        when CRIU did not end on its own)."""
        try:
            remove_tree(work_dir)
        except MountsLeft as error:
            logger.error("restore %s: work directory %s kept: %s", self.container_id, work_dir,
                         error)  # fmt: skip

    def _same_criu_config(self) -> CriuConfig:
        """The CRIU configuration runc will hand CRIU for the new container; RestoreRefused
        unless it is the one the image was dumped with (the same content, or none for both).
        Images that recorded none (made before ARCH recorded it) are not compared."""
        path = criu_config.config_file_for(self.bundle.spec)
        try:
            now = criu_config.read_config(path)
            now.check_images_stay()
        except OSError as error:
            raise RestoreRefused(
                f"cannot read the CRIU configuration {path}: {error}", "host_mismatch"
            ) from error
        except CriuConfigError as error:
            raise RestoreRefused(str(error), "host_mismatch") from error
        recorded = self.image.metadata.criu_config
        if recorded is not None and recorded.sha256 != now.sha256:
            raise RestoreRefused(
                "the CRIU configuration differs from the checkpoint's: dumped with "
                f"{_described(recorded)}, runc would now hand CRIU {_described(now)}",
                "host_mismatch",
            )
        return now

    def _credential_files(self) -> list[str]:
        from arch.checkpoint.image.credentials import CREDENTIAL_FILES

        return [f.name for f in self.image.metadata.criu_files if CREDENTIAL_FILES.match(f.name)]

    def _check_credentials(self) -> None:
        """RestoreRefused when a restored thread would hold more than config.json grants
        (arch.checkpoint.image.credentials), or its credentials cannot be read."""
        from arch.checkpoint.image.credentials import CredentialsError, check_image, own_lsm_label
        from arch.checkpoint.image.criu_images import CriuImageError

        names = [f.name for f in self.image.metadata.criu_files]
        try:
            with image_dir_of(self.image) as dir_fd:
                check_image(dir_fd, self.bundle.spec, names, own_lsm_label())
        except CredentialsError as error:
            raise RestoreRefused(str(error), "credentials") from error
        except (CriuImageError, OSError) as error:
            raise RestoreRefused(
                f"the image's process credentials cannot be read: {error}", "invalid_image"
            ) from error

    def _verify_criu_files(self, names: Collection[str]) -> None:
        try:
            verify_criu_files(self.image, names)
        except (InvalidImage, OSError) as error:
            raise RestoreRefused(
                f"image file check failed: {error}", "invalid_image"
            ) from error

    def _check_unpack_room(self, work_dir: str) -> None:
        """A compressed image is unpacked into the work dir (under state_dir, often a tmpfs):
        refuse clearly, before anything is applied, when it cannot hold it."""
        metadata = self.image.metadata
        if not metadata.compressed:
            return
        needed = sum(f.content_bytes for f in metadata.criu_files)
        if metadata.filesystem.compression is not None:
            needed += metadata.filesystem.content_size or 0
        stats = os.statvfs(work_dir)
        free = stats.f_bavail * stats.f_frsize
        if free < needed:
            raise RestoreRefused(
                f"the compressed image needs {needed} bytes to unpack in {self.scratch_dir}, "
                f"which has {free} free",
                "storage",
            )

    def _checked_criu_files(self, work_dir: str, names: Collection[str]) -> str | None:
        """Verify the CRIU files `names`; a compressed image's (format 3) are unpacked into the
        work dir instead, checked as they are read: then the directory runc restore reads."""
        if self.image.metadata.compressed:
            return self._unpack_criu_files(work_dir)
        self._verify_criu_files(names)
        return None

    def _unpack_criu_files(self, work_dir: str) -> str:
        """The CRIU files of a compressed image, decompressed into the work dir: runc restore's
        image path."""
        from arch.checkpoint.image import unpacked

        try:
            return unpacked.criu_files(self.image, work_dir)
        except (InvalidImage, OSError) as error:
            raise RestoreRefused(
                f"image file check failed: {error}", "invalid_image"
            ) from error

    def _unpacked_tar(self, work_dir: str) -> str:
        from arch.checkpoint.image import unpacked

        try:
            return unpacked.tar(self.image, work_dir)
        except (InvalidImage, OSError) as error:
            raise RestoreRefused(
                f"filesystem changes not applied: {error}", "invalid_image"
            ) from error

    def _apply_filesystem(self, work_dir: str) -> Journal | None:
        # Imported here: a checkpoint (and its caller, waiting) needs none of it.
        from arch.checkpoint.layer.filesystem import apply_layer
        from arch.checkpoint.layer.policy import ArchivePolicy

        filesystem = self.image.metadata.filesystem
        tar_path = self.image.tar_path
        if filesystem.mode != "overlay" or tar_path is None:
            return None
        if filesystem.compression is not None:
            tar_path = self._unpacked_tar(work_dir)
        # The tar's own digest and size (a compressed tar's were checked as it was unpacked).
        tar_sha256, tar_size = filesystem.tar_sha256, filesystem.tar_size
        assert tar_sha256 is not None and tar_size is not None
        try:
            return apply_layer(
                tar_path,
                self.bundle.rootfs,
                tar_sha256,
                tar_size,
                policy=ArchivePolicy.from_spec(self.bundle.spec),
            )
        except (OSError, LayerError) as error:
            raise RestoreRefused(
                f"filesystem changes not applied: {error}", "filesystem"
            ) from error

    def _restore_processes(self, work_dir: str, image_path: str) -> None:
        restore = (
            self.create.with_subcommand("restore", drop_unsupported=True)
            .with_option("detach")
            .with_option("image-path", image_path)
            .with_option("work-path", work_dir)
        )
        for option in self.image.metadata.criu_options:
            name, _, value = option.lstrip("-").partition("=")
            restore = restore.with_option(name, value or None)
        args = self.runc.subcommand_args(restore)
        failpoints.hit("restore.before-runc-restore")
        runc_call = self.runc.start_guarded(args, self.operation.runc_started, capture=False)
        try:
            status = runc_call.wait(self.timeout).status
        except RuncTimeout:
            self._cut_off(work_dir)
        self.restored = status == 0
        if self.restored:
            failpoints.hit("restore.after-runc-restore")
        if status != 0:
            log_path = self.criu_config.log_path(work_dir, RESTORE_LOG)
            tail = log_tail(log_path)
            leftover = self.runc.delete_force(self.container_id)
            if leftover.status == 0:
                logger.info("restore %s: removed runc's partial container", self.container_id)
            raise RestoreRefused(
                f"runc restore exited {status}\n{os.path.basename(log_path)} (last lines):\n"
                f"{tail}",
                "criu",
            )
        pidfd_socket = self.create.get("pidfd-socket")
        if pidfd_socket is not None:
            # runc restore has no --pidfd-socket: send the restored init's pidfd as create would.
            try:
                send_pidfd(pidfd_socket, int(self.runc.state(self.container_id)["pid"]))
            except (OSError, RuncError, KeyError, TypeError, ValueError) as error:
                self.runc.delete_force(self.container_id)
                raise RestoreRefused(
                    f"the restored container's pidfd could not be sent to {pidfd_socket}: {error}",
                    "other",
                ) from error

    def _cut_off(self, work_dir: str) -> NoReturn:
        """After runc restore outlived restore_timeout (its process group is stopped by now):
        stop what is left of CRIU's work, undo what runc and CRIU set up, refuse the restore."""
        from arch.container.interrupted import undo_restore

        undone = undo_restore(self.runc, self.container_id, self.bundle.path, work_dir,
                              self.criu_config.work_dir)  # fmt: skip
        self.operation.runc_ended()
        killed = f", killed pids {undone.killed}" if undone.killed else ""
        unmounted = f", unmounted {' '.join(undone.unmounted)}" if undone.unmounted else ""
        log_path = self.criu_config.log_path(work_dir, RESTORE_LOG)
        raise RestoreRefused(
            f"runc restore did not finish within restore_timeout ({self.timeout:g} s): runc and "
            f"CRIU were stopped{killed}{unmounted}\n{os.path.basename(log_path)} (last lines):\n"
            f"{log_tail(log_path)}",
            "timeout",
        )


def _described(config: CriuConfig) -> str:
    if config.sha256 is None:
        return "no configuration file" + (f" ({config.path} absent)" if config.path else "")
    return f"{config.path} (sha256 {config.sha256[:12]}...)"


def send_pidfd(socket_path: str, pid: int) -> None:
    """What runc create --pidfd-socket does: connect to the caller's unix socket and send a
    pidfd of the container's init (SCM_RIGHTS)."""
    pidfd = os.pidfd_open(pid)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(PIDFD_SOCKET_TIMEOUT)
            connection.connect(socket_path)
            socket.send_fds(connection, [PIDFD_MESSAGE], [pidfd])
    finally:
        os.close(pidfd)


def missing_bind_sources(bundle: Bundle) -> list[str]:
    return [
        f"bind mount source {mount.get('source')} (for {mount.get('destination')}) does not exist"
        for mount in bundle.mounts
        if mount.get("type") == "bind" or "bind" in (mount.get("options") or [])
        if not os.path.exists(str(mount.get("source", "")))
    ]


def missing_mounts(image: ValidImage, bundle: Bundle) -> list[str]:
    """Mounts the checkpointed container had that the new one lacks (CRIU cannot restore)."""
    present = {os.path.normpath(str(m.get("destination", ""))) for m in bundle.mounts}
    return [
        f"the image's container had a mount at {mount.destination} that the new one lacks"
        for mount in image.metadata.container.mounts
        if os.path.normpath(mount.destination) not in present
    ]
