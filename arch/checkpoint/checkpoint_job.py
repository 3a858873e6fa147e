"""Checkpoint of one opted-in container.

With the container's processes frozen (paused by the caller, or by ARCH), capture its
filesystem changes, let runc/CRIU dump and stop it, and publish the image atomically. Any
failure discards the staging directory and leaves the container running.
"""

from __future__ import annotations

import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

from arch import failpoints
from arch.checkpoint import criu_config, criu_options
from arch.checkpoint.criu_config import DUMP_LOG, CriuConfig, CriuConfigError
from arch.checkpoint.criu_log import log_tail
from arch.checkpoint.image import compression
from arch.checkpoint.image.errors import InvalidImage
from arch.checkpoint.image.fingerprint import rootfs_fingerprint
from arch.checkpoint.image.job_identity import JobIdentity
from arch.checkpoint.image.metadata import (
    ContainerEssentials,
    FilesystemInfo,
    ImageMetadata,
    host_cpu_summary,
    new_lineage,
)
from arch.checkpoint.image.validation import ValidImage
from arch.checkpoint.layer.capture import capture_layer
from arch.checkpoint.layer.common import LayerError
from arch.checkpoint.layer.overlay_mount import find_overlay_layers
from arch.checkpoint.storage.beneath import opened_root
from arch.checkpoint.storage.store import ImageStaging, PublishError, cleanup_leftovers_of
from arch.checkpoint.work_path import copy_log, image_log_name
from arch.runc import binary_facts
from arch.runc.binary_facts import CPUINFO_IMAGE
from arch.runc.runtime import RuncError, RuncTimeout

if TYPE_CHECKING:
    from collections.abc import Callable

    from arch.container.identity import ImageLocation
    from arch.container.interrupted import Operation
    from arch.runc.parser import RuncCommand
    from arch.runc.runtime import GuardedRunc, Runc

logger = logging.getLogger("arch")

# Less free space than this where a dump failed: the storage filled up.
STORAGE_FULL_BYTES = 1024 * 1024


class Lineage(NamedTuple):
    """The lineage an image belongs to and its generation in it."""

    lineage: str
    generation: int


class CheckpointFailed(Exception):
    """The checkpoint did not produce a published image; the container keeps running.

    `reason` is one of arch.metrics.REASONS (what the failure is counted as).
    """

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


class PublishedNotStopped(CheckpointFailed):
    """The image is published, but the container could neither be stopped nor the image
    withdrawn: the container stays frozen and must not be resumed."""


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
        hold: bool = False,
        compress: bool = True,
        lineage: Lineage | None = None,
        on_published: Callable[[], None] | None = None,
        after_stop: Callable[[], None] | None = None,
    ) -> None:
        self.runc = runc
        # Keep the processes frozen once the image is published instead of killing them (a
        # Batch job during a Spot notice: arch.spot.platform).
        self.hold = hold
        # zstd for pages and tar where it pays (arch.toml's compression), if the binding is here.
        self.compress = compress and compression.available()
        self.command = command
        # The lineage and generation this image takes (README: Data safety).
        self.lineage = lineage or Lineage(new_lineage(), 1)
        # Called once the image is published, before the stop (the caller marks the container
        # checkpointed), and after the stop (a pool member's hand-over), both inside the
        # operation record, which a later call completes if this process dies.
        self.on_published = on_published
        self.after_stop = after_stop
        self.binary_facts_dir = binary_facts_dir  # runc's/CRIU's cached facts (binary_facts)
        # With a key the image is signed (arch.checkpoint.image.signing).
        self.image_key = image_key
        self.location = location
        self.container_id = container_id
        self.options = criu_options.merge(criu_options.from_command(command), host_criu_options)
        self.operation = operation  # what a later call needs if this arch-runc is killed
        self.timeout = timeout  # checkpoint_timeout: the dump's limit in seconds (None: none)
        # The CRIU configuration runc hands CRIU (read in run()), and the name the image keeps
        # CRIU's dump log under.
        self.criu_config = CriuConfig()
        self.image_log = DUMP_LOG
        # The sealed dump's sha256 per file, taken while the filesystem capture runs (signed).
        self.dump_digests: dict[str, str] = {}

    def run(self) -> ValidImage:
        """Checkpoint and stop the container; raise CheckpointFailed with it still running.

        CRIU dumps with --leave-running, so that a failure up to and including publication
        leaves the processes as they were. Only once the image is published are they killed,
        still frozen, so they execute nothing after the state the image holds. From the
        publishing rename on the container never runs again: it is stopped, or, if that fails,
        the image is withdrawn before it is thawed.
        """
        state = self._state()
        self.criu_config = self._read_criu_config(str(state.get("bundle", "")))
        paused_here = state["status"] == "running"
        self.operation.begin(paused_here=paused_here, hold=self.hold)
        try:
            image = self._publish(state, paused_here)
        except BaseException:
            self.operation.end()
            raise
        if not self.hold:
            self._stop_or_withdraw(image, paused_here)
        elif self.on_published is not None:  # held frozen: it never runs on either
            self.on_published()
        if self._after_stop():
            self.operation.end()
        return image

    def _publish(self, state: dict[str, object], paused_here: bool) -> ValidImage:
        """Freeze (unless the caller did), dump and publish; on failure thaw what ARCH froze."""
        try:
            if paused_here:
                self._pause()
            try:
                failpoints.hit("checkpoint.paused")
                return self._dump_and_publish(state)
            except OSError as error:
                raise CheckpointFailed(str(error), "storage") from error
        except BaseException:
            if paused_here:
                self._resume_after_failure()
            else:
                self._paused_again_for_the_caller()
            raise

    def _stop_or_withdraw(self, image: ValidImage, paused_here: bool) -> None:
        """Stop the published container; if that fails, withdraw the image and thaw it (or
        leave it frozen when even the withdrawal fails)."""
        if self.on_published is not None:
            self.on_published()
        try:
            failpoints.hit("checkpoint.before-stop")
            self._stop_frozen(image)
            return
        except (CheckpointFailed, OSError) as error:
            failure = error
        from arch.container.interrupted import withdraw

        publishing = self.operation.record.get("publishing")
        withdrawn = isinstance(publishing, dict) and withdraw(publishing)
        self.operation.end()
        if not withdrawn:
            raise PublishedNotStopped(
                f"the image is published at {image.path}, but the container could not be "
                f"stopped ({failure}) nor the image withdrawn: the container stays frozen",
                "container_state",
            )
        if paused_here:
            self._resume_after_failure()
        else:
            self._paused_again_for_the_caller()
        raise CheckpointFailed(
            f"the container could not be stopped ({failure}): the image was withdrawn",
            "container_state",
        )

    def _after_stop(self) -> bool:
        """What follows the stop (a pool hand-over); False when it failed, leaving the
        operation record for the next call to complete."""
        try:
            failpoints.hit("checkpoint.stopped")
            if self.after_stop is not None:
                self.after_stop()
        except OSError as error:
            logger.error("checkpoint %s: published and stopped, but %s: the next call for the "
                         "container completes it", self.container_id, error)  # fmt: skip
            return False
        return True

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

    def _read_criu_config(self, bundle_path: str) -> CriuConfig:
        """The CRIU configuration runc will hand CRIU for this container; CheckpointFailed when
        it cannot be read or would send the images elsewhere."""
        from arch.container.bundle import Bundle, BundleError

        try:
            spec = Bundle.load(bundle_path).spec
        except BundleError as error:
            logger.warning("checkpoint %s: CRIU configuration taken as runc's default, the "
                           "bundle is unreadable: %s", self.container_id, error)  # fmt: skip
            spec = {}
        path = criu_config.config_file_for(spec)
        try:
            config = criu_config.read_config(path)
            config.check_images_stay()
        except OSError as error:
            raise CheckpointFailed(f"cannot read the CRIU configuration {path}: {error}") from error
        except CriuConfigError as error:
            raise CheckpointFailed(str(error)) from error
        return config

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
                except Exception as error:  # planted leftovers never stop a checkpoint
                    logger.warning("checkpoint %s: leftovers not cleaned up: %s: %s",
                                   self.container_id, type(error).__name__, error)  # fmt: skip
                staging = self._begin_staging(root_fd)
        except (OSError, PublishError) as error:
            raise CheckpointFailed(
                f"cannot create the image directory: {error}", "storage"
            ) from error
        with staging:
            failpoints.hit("checkpoint.staging-created")
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
                criu_files=staging.describe_criu_files(
                    digests=self.image_key is not None, known=self.dump_digests
                ),
                container=_container_essentials(bundle_path),
                cpu=host_cpu_summary(),
                criu_options=tuple(self.options),
                identity=identity.result(),
                criu_log=self.image_log,
                criu_config=self.criu_config,
                compression_level=compression.LEVEL,
                lineage=self.lineage.lineage,
                generation=self.lineage.generation,
            )
            try:
                sealed = staging.seal(metadata, self.image_key)
                failpoints.hit("checkpoint.sealed")
            except (OSError, PublishError, InvalidImage) as error:
                raise CheckpointFailed(f"cannot publish the image: {error}", "storage") from error
            self._commit(staging, sealed)
            return ValidImage(self.location.image_dir, metadata)

    def _begin_staging(self, root_fd: int) -> ImageStaging:
        """The staging directory, named in the operation record before it exists: an arch-runc
        killed at any point after the mkdir leaves a directory the next call removes
        (arch.container.interrupted), never one nothing names and no lease protects yet."""
        relative = self.location.relative
        name = ImageStaging.new_name(relative)
        self.operation.note(
            # A real path (staging.path names this process's descriptor, gone with it).
            staging=os.path.join(self.location.root, os.path.dirname(relative), name),
            staging_root=self.location.root,
            staging_relative=posixpath.join(posixpath.dirname(relative), name),
        )
        return ImageStaging.begin(root_fd, relative, name)

    def _commit(self, staging: ImageStaging, sealed: str) -> None:
        """The publishing rename. The record names the image first, so that a later call
        knows whether it was published if this process dies. A failure after the rename
        (removing the image it replaced: ESTALE, ENOTEMPTY on NFS) is not a failed
        checkpoint: the image is published and the container must not run on."""
        publishing = {"root": self.location.root, "relative": self.location.relative,
                      "identity": sealed}  # fmt: skip
        self.operation.note(publishing=publishing)  # type: ignore[arg-type]
        try:
            failpoints.hit("checkpoint.before-publish-rename")
            staging.commit()
            failpoints.hit("checkpoint.published")
        except (OSError, PublishError) as error:
            from arch.container.interrupted import published_image

            if published_image(publishing) != sealed:
                raise CheckpointFailed(f"cannot publish the image: {error}", "storage") from error
            logger.warning("checkpoint %s: image published at %s, but a later step failed: %s",
                           self.container_id, self.location.image_dir, error)  # fmt: skip

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
        # zstd leaves incompressible data as it is at little cost (~400 MB/s a core at LEVEL),
        # so the tar is compressed whenever the binding is here, without a sample first.
        compressed = self.compress
        try:
            tar_path = staging.create_tar(compressed)
            digest = capture_layer(overlay.upperdir, tar_path, overlay.opaque_xattr_names,
                                   compressed)  # fmt: skip
            failpoints.hit("checkpoint.tar-written")
        except (OSError, LayerError) as error:
            raise CheckpointFailed(
                f"cannot capture the filesystem changes: {error}", "filesystem"
            ) from error
        if digest.stored_sha256 is None or digest.stored_size is None:
            return FilesystemInfo.overlay(digest.sha256, digest.size)
        return FilesystemInfo.compressed_overlay(compression.ZSTD, digest.stored_sha256,
                                                 digest.stored_size, digest.sha256, digest.size)

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
            self._log_to_caller(staging)
            raise CheckpointFailed(
                f"the dump did not finish within checkpoint_timeout ({self.timeout:g} s): "
                "runc and CRIU were stopped",
                "timeout",
            ) from error
        self.operation.runc_ended()
        self._log_to_caller(staging)
        if result.status != 0:
            log_path = self._log_path(staging)
            raise CheckpointFailed(
                f"runc checkpoint exited {result.status}{storage_full_note(image_path)}: "
                f"{result.output.strip()}\n"
                f"{os.path.basename(log_path)} (last lines):\n{log_tail(log_path)}",
                "criu",
            )
        self.image_log = self._keep_log_in_image(staging)
        try:
            if self.compress:
                staging.compress_pages()
            staging.seal_dump()  # on disk while the filesystem capture may still be running
            failpoints.hit("checkpoint.dump-done")
            if self.image_key is not None:  # hashed meanwhile too (sha256 is off the GIL)
                self.dump_digests = staging.criu_file_digests()
        except OSError as error:
            raise CheckpointFailed(f"cannot sync the dump: {error}", "storage") from error

    def _log_path(self, staging: ImageStaging) -> str:
        """Where CRIU wrote its dump log: runc's work directory is the image's (ARCH's runc call
        names no --work-path), unless the CRIU configuration says otherwise."""
        return self.criu_config.log_path(staging.path, DUMP_LOG)

    def _log_to_caller(self, staging: ImageStaging) -> None:
        """A copy of CRIU's log in the caller's --work-path, where runc would have had CRIU
        write it (containerd reads <work>/dump.log after a failed checkpoint)."""
        work_path = self.command.get("work-path")
        if not work_path:
            return
        try:
            copy_log(self._log_path(staging), work_path)
        except OSError as error:
            logger.warning("checkpoint %s: CRIU's log not copied to the work path %s: %s",
                           self.container_id, work_path, error)  # fmt: skip

    def _keep_log_in_image(self, staging: ImageStaging) -> str:
        """Put CRIU's dump log into the image (if CRIU wrote it elsewhere or under a name an
        image cannot hold); the name the image holds it under."""
        log_path = os.path.normpath(self._log_path(staging))
        name = image_log_name(self.criu_config.log_file or DUMP_LOG)
        in_image = os.path.join(os.path.normpath(staging.path), name)
        try:
            if log_path == in_image:
                return name
            if os.path.dirname(log_path) == os.path.dirname(in_image):
                os.rename(log_path, in_image)
            else:
                copy_log(log_path, staging.path, name)
        except OSError as error:
            raise CheckpointFailed(
                f"cannot keep CRIU's log {log_path} in the image: {error}", "storage"
            ) from error
        return name


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
