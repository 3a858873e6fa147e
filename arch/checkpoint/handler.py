"""Checkpoint and restore of one opted-in container.

Checkpoint: with the container's processes frozen (paused by the caller, or by ARCH), capture
its filesystem changes, let runc/CRIU dump and stop it, and publish the image atomically. Any
failure discards the staging directory and leaves the container running.

Restore: validate the image and what this host would break, apply the filesystem changes to the
new container's rootfs, then `runc restore --detach` with create's own options. Any failure
rolls the filesystem back and removes what runc left, so the caller can create fresh.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from arch.checkpoint import criu_options
from arch.checkpoint.beneath import opened_root
from arch.checkpoint.image_fingerprint import rootfs_fingerprint
from arch.checkpoint.job_identity import JobIdentity
from arch.checkpoint.layer_capture import capture_layer
from arch.checkpoint.layer_common import LayerError
from arch.checkpoint.lease import Lease
from arch.checkpoint.metadata import (
    ContainerEssentials,
    FilesystemInfo,
    ImageMetadata,
    InvalidImage,
    host_cpu_summary,
)
from arch.checkpoint.overlay_mount import find_overlay_layers
from arch.checkpoint.store import ImageStaging, PublishError, cleanup_leftovers_of
from arch.checkpoint.sweep import RESTORE_WORK_PREFIX
from arch.checkpoint.validation import ValidImage, verify_criu_files
from arch.runc import binary_facts
from arch.runc.binary_facts import CPUINFO_IMAGE
from arch.runc.process_group import dies_with_this_process
from arch.runc.runtime import RuncError, RuncTimeout

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from arch.checkpoint.layer_journal import Journal
    from arch.container.bundle import Bundle
    from arch.container.identity import ImageLocation
    from arch.container.interrupted import Operation
    from arch.runc.parser import RuncCommand
    from arch.runc.runtime import GuardedRunc, Runc

logger = logging.getLogger("arch")

LOG_TAIL_LINES = 12
LOG_READ_BYTES = 256 * 1024
CPUINFO_READ_LIMIT = 1 << 20  # CRIU's cpuinfo.img is a few hundred bytes
# What runc create --pidfd-socket sends with the init's pidfd (runc 1.2+, libcontainer setupPidfd).
PIDFD_MESSAGE = b"standard"
PIDFD_SOCKET_TIMEOUT = 30.0
# Less free space than this where a dump failed: the storage filled up.
STORAGE_FULL_BYTES = 1024 * 1024


class CheckpointFailed(Exception):
    """The checkpoint did not produce a published image; the container keeps running.

    `reason` is one of arch.metrics.REASONS (what the failure is counted as).
    """

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


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


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    """A CRIU log's first error lines (the cause) and its last lines, for error messages."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, log_file.tell() - LOG_READ_BYTES))
            text = log_file.read().decode("utf-8", "replace")
    except OSError:
        return f"({path} unreadable)"
    all_lines = text.splitlines()
    errors = [line for line in all_lines if "Error (" in line][:3]
    tail = [line for line in all_lines[-lines:] if line not in errors]
    return "\n".join([*errors, "...", *tail] if errors else tail)


class CheckpointJob:
    """One `runc checkpoint` of an opted-in container, turned into a published image."""

    def __init__(
        self,
        runc: Runc,
        command: RuncCommand,
        location: ImageLocation,
        container_id: str,
        host_criu_options: tuple[str, ...],
        operation: Operation,
        timeout: float | None = None,
        image_key: bytes | None = None,
        binary_facts_dir: str | None = None,
    ) -> None:
        self.runc = runc
        self.command = command
        self.binary_facts_dir = binary_facts_dir  # runc's/CRIU's cached facts (binary_facts)
        # With a key the image is signed (arch.checkpoint.signing).
        self.image_key = image_key
        self.location = location
        self.container_id = container_id
        self.options = criu_options.merge(criu_options.from_command(command), host_criu_options)
        self.operation = operation  # what a later call needs if this arch-runc is killed
        self.timeout = timeout  # checkpoint_timeout: the dump's limit in seconds (None: none)

    def run(self) -> ValidImage:
        """Checkpoint and stop the container; raise CheckpointFailed with it still running.

        CRIU dumps with --leave-running, so that a failure up to and including publication
        leaves the processes as they were. Only once the image is published are they killed,
        still frozen, so they execute nothing after the state the image holds.
        """
        state = self._state()
        paused_here = state["status"] == "running"
        self.operation.begin(paused_here=paused_here)
        try:
            if paused_here:
                self._pause()
            try:
                image = self._dump_and_publish(state)
                self._stop_frozen(image)
            except BaseException:
                if paused_here:
                    self._resume_after_failure()
                else:
                    self._paused_again_for_the_caller()
                raise
        finally:
            self.operation.end()
        return image

    def _state(self) -> dict[str, object]:
        try:
            state = self.runc.state(self.container_id)
        except (RuncError, ValueError) as error:
            raise CheckpointFailed(
                f"cannot read the container's state: {error}", "container_state"
            ) from error
        if state.get("status") not in ("running", "paused"):
            raise CheckpointFailed(
                f"container is {state.get('status')}, not running or paused", "container_state"
            )
        return state

    def _pause(self) -> None:
        try:
            self.runc.pause(self.container_id)
        except RuncError as error:
            raise CheckpointFailed(
                f"cannot freeze the container: {error}", "container_state"
            ) from error

    def _paused_again_for_the_caller(self) -> None:
        """The caller froze the container and will resume it. A CRIU stopped midway (the
        checkpoint_timeout) may have left it thawed: freeze it again, so that the caller's
        resume finds it paused, as it left it."""
        if self._status() == "running":
            try:
                self.runc.pause(self.container_id)
            except RuncError as error:
                logger.error("checkpoint %s: cannot freeze it again: %s", self.container_id,
                             error)  # fmt: skip

    def _resume_after_failure(self) -> None:
        try:
            self.runc.resume(self.container_id)
        except RuncError as error:
            logger.error("checkpoint %s: cannot resume after failure: %s", self.container_id, error)

    def _stop_frozen(self, image: ValidImage) -> None:
        """SIGKILL the frozen processes, then thaw them: they die without running again.

        The image is published by now and stays whatever happens here: it is complete, and once
        the kill went through it is the job's only copy.
        """
        try:
            self.runc.check(["kill", self.container_id, "KILL"])
        except RuncError as error:
            if self._status() == "stopped":  # it died meanwhile: what it was is in the image
                logger.warning("checkpoint %s: stopped before ARCH stopped it", self.container_id)
                return
            raise CheckpointFailed(
                f"the image is published at {image.path}, but the container could not be "
                f"stopped: {error}",
                "container_state",
            ) from error
        try:
            # runc >= 1.1 thaws a paused container it SIGKILLs; older ones leave that to us.
            if self.runc.state(self.container_id).get("status") == "paused":
                self.runc.resume(self.container_id)
        except (RuncError, ValueError) as error:
            logger.warning("checkpoint %s: killed, but not thawed: %s", self.container_id, error)

    def _status(self) -> object:
        try:
            return self.runc.state(self.container_id).get("status")
        except (RuncError, ValueError):
            return None

    def _dump_and_publish(self, state: dict[str, object]) -> ValidImage:
        bundle_path = str(state.get("bundle", ""))
        rootfs = str(state.get("rootfs", ""))
        try:
            with opened_root(self.location.root) as root_fd:
                try:
                    for leftover in cleanup_leftovers_of(root_fd, self.location.relative):
                        logger.info("checkpoint %s: removed the leftover %s", self.container_id,
                                    leftover.name)  # fmt: skip
                except OSError as error:
                    logger.warning("checkpoint %s: leftovers not cleaned up: %s",
                                   self.container_id, error)  # fmt: skip
                staging = ImageStaging.begin(root_fd, self.location.relative)
        except (OSError, PublishError) as error:
            raise CheckpointFailed(
                f"cannot create the image directory: {error}", "storage"
            ) from error
        with staging:
            # A real path (staging.path names this process's descriptor, gone with it).
            staging_dir = os.path.join(
                self.location.root, os.path.dirname(self.location.relative), staging.name
            )
            self.operation.note(staging=staging_dir)
            # CRIU dumps the processes while the filesystem is captured: both only read the
            # frozen container (measured: ~0.3 s of 1.1 s saved for 256+256 MiB). runc starts
            # from this (main) thread, which its parent-death signal follows; a worker waits
            # for it. Leaving the pool waits for the dump whatever happened, so nothing is
            # resumed or removed under a running CRIU. The job's identity (a walk of the
            # image's layers, mostly stat calls) is read meanwhile too.
            dump = self._start_dump(staging.path)
            with ThreadPoolExecutor(max_workers=2) as background:
                dumped = background.submit(self._wait_dump, dump, staging)
                identity = background.submit(_job_identity, bundle_path, rootfs)
                filesystem = self._capture_filesystem(rootfs, staging)
                self._add_cpuinfo(staging)
                versions = [binary_facts.version(binary, self.binary_facts_dir)
                            for binary in (self.runc.binary, self.runc.criu)]  # fmt: skip
            dumped.result()  # the dump's CheckpointFailed, if any
            metadata = ImageMetadata.new(
                namespace=self.location.namespace,
                container_id=self.container_id,
                checkpoint_id=self.location.checkpoint_id,
                runc_version=versions[0],
                criu_version=versions[1],
                filesystem=filesystem,
                criu_files=staging.describe_criu_files(digests=self.image_key is not None),
                container=_container_essentials(bundle_path),
                cpu=host_cpu_summary(),
                criu_options=tuple(self.options),
                identity=identity.result(),
            )
            try:
                staging.publish(metadata, self.image_key)
            except (OSError, PublishError, InvalidImage) as error:
                raise CheckpointFailed(f"cannot publish the image: {error}", "storage") from error
            return ValidImage(self.location.image_dir, metadata)

    def _capture_filesystem(self, rootfs: str, staging: ImageStaging) -> FilesystemInfo:
        try:
            overlay = find_overlay_layers(rootfs) if rootfs else None
        except (OSError, LayerError) as error:
            raise CheckpointFailed(
                f"cannot find the rootfs's overlay layers: {error}", "filesystem"
            ) from error
        if overlay is None:
            logger.warning(
                "checkpoint %s: rootfs %s is not an overlay mount: processes only, its filesystem "
                "changes are not in the image",
                self.container_id,
                rootfs,
            )
            return FilesystemInfo.none()
        if overlay.upperdir is None:
            logger.warning("checkpoint %s: %s has no upper layer", self.container_id, rootfs)
            return FilesystemInfo.none()
        try:
            tar_path = staging.create_tar()
            digest = capture_layer(overlay.upperdir, tar_path, overlay.opaque_xattr_names)
        except (OSError, LayerError) as error:
            raise CheckpointFailed(
                f"cannot capture the filesystem changes: {error}", "filesystem"
            ) from error
        return FilesystemInfo.overlay(digest.sha256, digest.size)

    def _add_cpuinfo(self, staging: ImageStaging) -> None:
        """Record this CPU's features in the image (cpuinfo.img) for the restoring host's
        `criu cpuinfo check`."""
        try:
            image = binary_facts.cpuinfo_image(
                self.runc.criu, self.binary_facts_dir, self.operation.helper_started
            )
            staging.add_file(CPUINFO_IMAGE, image)
        except binary_facts.CpuinfoDumpFailed as error:
            raise CheckpointFailed(str(error), "criu") from error
        except OSError as error:
            raise CheckpointFailed(f"cannot write {CPUINFO_IMAGE}: {error}", "storage") from error

    def _start_dump(self, image_path: str) -> GuardedRunc:
        args = ["checkpoint", "--image-path", image_path, "--leave-running"]
        args += criu_options.as_runc_args(self.options)
        for passthrough_flag in ("auto-dedup",):
            if self.command.has(passthrough_flag):
                args.append(f"--{passthrough_flag}")
        return self.runc.start_guarded([*args, self.container_id], self.operation.runc_started)

    def _wait_dump(self, dump: GuardedRunc, staging: ImageStaging) -> None:
        image_path = staging.path
        try:
            result = dump.wait(self.timeout)
        except RuncTimeout as error:
            raise CheckpointFailed(
                f"the dump did not finish within checkpoint_timeout ({self.timeout:g} s): "
                "runc and CRIU were stopped",
                "criu",
            ) from error
        self.operation.runc_ended()
        if result.status != 0:
            tail = log_tail(os.path.join(image_path, "dump.log"))
            raise CheckpointFailed(
                f"runc checkpoint exited {result.status}{storage_full_note(image_path)}: "
                f"{result.output.strip()}\n"
                f"dump.log (last lines):\n{tail}",
                "criu",
            )
        try:
            staging.seal_dump()  # on disk while the filesystem capture may still be running
        except OSError as error:
            raise CheckpointFailed(f"cannot sync the dump: {error}", "storage") from error


def storage_full_note(path: str) -> str:
    """A note for a failed dump's message when the filesystem holding `path` is full: CRIU's own
    error (ENOSPC) then cannot reach its dump.log, which is on that filesystem too."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return ""
    free = stats.f_bavail * stats.f_frsize
    if free >= STORAGE_FULL_BYTES:
        return ""
    return f" (the checkpoint storage is full: No space left on device, {free // 1024} KiB free)"


def _container_essentials(bundle_path: str) -> ContainerEssentials:
    from arch.container.bundle import Bundle, BundleError

    try:
        return ContainerEssentials.from_oci_config(Bundle.load(bundle_path).spec)
    except (BundleError, ValueError) as error:
        logger.warning("checkpoint: container configuration not recorded: %s", error)
        return ContainerEssentials()


def _job_identity(bundle_path: str, rootfs: str) -> JobIdentity:
    """What identifies the job, for the image (CheckpointFailed when it cannot be read)."""
    from arch.container.bundle import Bundle, BundleError

    try:
        return JobIdentity.of(Bundle.load(bundle_path).spec, rootfs_fingerprint(rootfs))
    except (BundleError, OSError, LayerError) as error:
        raise CheckpointFailed(f"cannot record the job's identity: {error}") from error


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
    ) -> None:
        self.runc = runc
        self.create = create
        self.binary_facts_dir = binary_facts_dir  # remembered CPU checks (binary_facts)
        self.bundle = bundle
        self.image = image
        self.container_id = container_id
        self.scratch_dir = scratch_dir
        self.operation = operation  # what a later call needs if this arch-runc is killed
        self.restored = False  # runc restore succeeded: the container exists in runc

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
        problems = missing_bind_sources(self.bundle) + missing_mounts(self.image, self.bundle)
        if problems:
            raise RestoreRefused("; ".join(problems), "host_mismatch")
        # Files with a recorded sha256 are checked before they are read: cpuinfo.img now, the
        # other CRIU files while the filesystem changes apply.
        self._verify_criu_files((CPUINFO_IMAGE,))
        # Runs while the files apply.
        cpu_check = CpuCheck.start(self.image, self.runc.criu, self.operation.helper_started,
                                   self.binary_facts_dir)
        os.makedirs(self.scratch_dir, mode=0o700, exist_ok=True)
        work_dir = tempfile.mkdtemp(prefix=RESTORE_WORK_PREFIX, dir=self.scratch_dir)
        self.operation.begin(bundle=self.bundle.path, work_dir=work_dir)
        lease = Lease(work_dir).start()  # the sweep removes work dirs of dead restores only
        others = [f.name for f in self.image.metadata.criu_files if f.name != CPUINFO_IMAGE]
        try:
            with ThreadPoolExecutor(max_workers=1) as background:
                digests = background.submit(self._verify_criu_files, others)
                journal = self._apply_filesystem()
                try:
                    digests.result()
                    problems = cpu_check.problems()
                    if problems:
                        raise RestoreRefused("; ".join(problems), "host_mismatch")
                    self._restore_processes(work_dir)
                except BaseException as failure:
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
            shutil.rmtree(work_dir, ignore_errors=True)

    def _verify_criu_files(self, names: Collection[str]) -> None:
        try:
            verify_criu_files(self.image, names)
        except (InvalidImage, OSError) as error:
            raise RestoreRefused(
                f"image file check failed: {error}", "invalid_image"
            ) from error

    def _apply_filesystem(self) -> Journal | None:
        # Imported here: a checkpoint (and its caller, waiting) needs none of it.
        from arch.checkpoint.archive_policy import ArchivePolicy
        from arch.checkpoint.filesystem import apply_layer

        filesystem = self.image.metadata.filesystem
        tar_path = self.image.tar_path
        if filesystem.mode != "overlay" or tar_path is None:
            return None
        assert filesystem.sha256 is not None and filesystem.size is not None
        try:
            return apply_layer(
                tar_path,
                self.bundle.rootfs,
                filesystem.sha256,
                filesystem.size,
                policy=ArchivePolicy.from_spec(self.bundle.spec),
            )
        except (OSError, LayerError) as error:
            raise RestoreRefused(
                f"filesystem changes not applied: {error}", "filesystem"
            ) from error

    def _restore_processes(self, work_dir: str) -> None:
        restore = (
            self.create.with_subcommand("restore", drop_unsupported=True)
            .with_option("detach")
            .with_option("image-path", self.image.path)
            .with_option("work-path", work_dir)
        )
        for option in self.image.metadata.criu_options:
            name, _, value = option.lstrip("-").partition("=")
            restore = restore.with_option(name, value or None)
        args = self.runc.subcommand_args(restore)
        status = self.runc.run_guarded(args, self.operation.runc_started, capture=False).status
        self.restored = status == 0
        if status != 0:
            tail = log_tail(os.path.join(work_dir, "restore.log"))
            leftover = self.runc.delete_force(self.container_id)
            if leftover.status == 0:
                logger.info("restore %s: removed runc's partial container", self.container_id)
            raise RestoreRefused(
                f"runc restore exited {status}\nrestore.log (last lines):\n{tail}", "criu"
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


class CpuCheck:
    """CRIU's verdict on whether this CPU has the features the image's processes may use.

    `criu cpuinfo check` against the image's cpuinfo.img runs in the background from start().
    """

    def __init__(
        self,
        image: ValidImage,
        process: subprocess.Popen[str] | None,
        approval: binary_facts.CpuinfoApproval | None = None,
    ) -> None:
        self.image = image
        self.process = process
        self.approval = approval  # remembered if CRIU approves
        self.verdict: list[str] | None = None

    @classmethod
    def start(
        cls,
        image: ValidImage,
        criu: str,
        on_start: Callable[[int], None] | None = None,
        binary_facts_dir: str | None = None,
    ) -> CpuCheck:
        """`binary_facts_dir`: where an approval of the same cpuinfo.img by this CRIU on this
        boot is remembered; such an image is not checked again."""
        cpuinfo_path = os.path.join(image.path, CPUINFO_IMAGE)
        approval = None
        try:
            with open(cpuinfo_path, "rb") as cpuinfo:
                cpuinfo_sha256 = hashlib.sha256(cpuinfo.read(CPUINFO_READ_LIMIT)).hexdigest()
            approval = binary_facts.CpuinfoApproval(criu, binary_facts_dir, cpuinfo_sha256)
        except FileNotFoundError:
            return cls(image, None)
        except OSError as error:
            logger.debug("cpuinfo check: %s not read: %s", cpuinfo_path, error)
        if approval is not None and approval.given():
            return cls(image, None)
        process = subprocess.Popen(
            [criu, "cpuinfo", "check", "--cpu-cap=cpu", "-D", image.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=dies_with_this_process(),
        )
        if on_start is not None:
            on_start(process.pid)
        return cls(image, process, approval)

    def problems(self) -> list[str]:
        if self.verdict is None:
            self.verdict = self._wait()
        return self.verdict

    def _wait(self) -> list[str]:
        if self.process is None:
            return []
        _, stderr = self.process.communicate(timeout=60)
        if self.process.returncode == 0:
            if self.approval is not None:
                self.approval.remember()
            return []
        recorded, here = self.image.metadata.cpu, host_cpu_summary()
        missing = sorted(set(recorded.flags) - set(here.flags)) if recorded and here else []
        detail = f" (missing here: {' '.join(missing)})" if missing else ""
        return [f"`criu cpuinfo check` refuses this CPU{detail}: {stderr.strip()[-500:]}"]
