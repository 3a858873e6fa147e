"""Checkpoints and restores that arch-runc may not live to finish.

containerd SIGKILLs a runtime call that takes longer than its caller waits; a host may also lose
arch-runc to the OOM killer. So while a checkpoint or restore runs, the container's state holds
the flag OPERATION_FLAG, a JSON record of
- the operation ("checkpoint" or "restore") and the arch-runc process doing it (pid + start
  time, so a reused pid is never taken for it),
- once started, the runc child: it runs in a process group of its own (its CRIU joins it) and
  is SIGKILLed by the kernel when arch-runc dies (PR_SET_PDEATHSIG),
- what the operation writes: the image staging directory, the restore work directory, the
  bundle (whose config.json names the container's cgroup), runc's global options.

`finish_interrupted` is called first by every later intercepted call for the container (create,
start, checkpoint, resume, delete: containerd follows a failed create with `delete --force`, a
failed checkpoint with `resume`) and by the exit watcher's sweep. When the recorded arch-runc is
gone it finishes the job:
- checkpoint: CRIU may still be dumping. It is given CHECKPOINT_GRACE_SECONDS to end on its own
  (CRIU stops a dump whose runc died and leaves the processes as they were; killing it while its
  parasite code runs in them is the last resort), then its group is SIGKILLed; then the staging
  directory is removed. What happens to the container depends on whether the image got
  published (the record names the image path and the identity of the image being published,
  noted before the publishing rename; the CHECKPOINTED flag is set right after it):
  not published: a container ARCH itself froze is thawed and runs on;
  published: the container never runs past it: it is SIGKILLed while frozen, marked
  CHECKPOINTED (its exit is the checkpoint's, containerd's `resume` a no-op), and a pool
  member's hand-over is completed (the claim it was restored from removed, the new image
  released into the pool). Only if the container cannot be stopped is the image withdrawn
  (removed, if it is still that image) and the container left frozen.
- restore: runc's group (runc, CRIU) is SIGKILLed at once, `runc delete --force` removes a
  half-restored container runc registered, and every process left in the container's cgroup is
  SIGKILLed (CRIU restores into that cgroup before runc registers anything): nothing restored
  runs outside containerd. What runc and CRIU mounted (runc's criu-root, CRIU's cgroup yard in
  the work directory) is unmounted, the restore work directory removed; the image is never
  touched. A restore cut off by restore_timeout is undone the same way (undo_restore).

Imported by arch-runc on the create/start/resume/delete paths: module-level imports stay cheap.
"""

from __future__ import annotations

import logging
import os
import posixpath
from typing import TYPE_CHECKING, Any, NamedTuple

from arch.runc.leftover_mounts import (
    MountsLeft,
    remove_tree,
    unmount_cgroup_yards,
    unmount_under,
)
from arch.runc.process_group import ProcessIdentity, kill_until_gone, stop_group

if TYPE_CHECKING:
    from arch.container.state import ContainerState
    from arch.runc.runtime import Runc

OPERATION_FLAG = "operation"
STAGING_PREFIX = ".staging-"  # arch.checkpoint.storage.store's, not imported on this path
CHECKPOINT = "checkpoint"
RESTORE = "restore"
CHECKPOINT_GRACE_SECONDS = 10.0
# How long a SIGKILLed, thawed container may take to be reported stopped.
STOP_WAIT_SECONDS = 10.0

logger = logging.getLogger("arch")


# -- the container's cgroup -------------------------------------------------------------------


def cgroup_dirs(cgroups_path: str) -> list[str]:
    """The container's cgroup directories in every mounted hierarchy (cgroupfs driver paths
    "/a/b" and systemd driver paths "slice:prefix:name")."""
    if not cgroups_path:
        return []
    relative = _systemd_path(cgroups_path) if ":" in cgroups_path else cgroups_path
    relative = relative.strip("/")
    if not relative or ".." in relative.split("/"):
        return []
    found = []
    for mount_point in _cgroup_mounts():
        candidate = os.path.join(mount_point, relative)
        if os.path.isdir(candidate):
            found.append(candidate)
    return found


def _systemd_path(cgroups_path: str) -> str:
    slice_name, prefix, name = [*cgroups_path.split(":"), "", "", ""][:3]
    slices = []
    if slice_name and slice_name != "-.slice":
        parts = slice_name[: -len(".slice")].split("-") if slice_name.endswith(".slice") else []
        slices = ["-".join(parts[: i + 1]) + ".slice" for i in range(len(parts))]
    unit = name if name.endswith(".slice") else f"{prefix}-{name}.scope" if prefix else name
    return "/".join([*slices, unit])


def _cgroup_mounts() -> list[str]:
    mounts = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mountinfo:
            for line in mountinfo:
                before, _, after = line.partition(" - ")
                if after.split()[:1] in (["cgroup"], ["cgroup2"]) and before.split()[3] == "/":
                    mounts.append(before.split()[4].replace("\\040", " "))
    except OSError:
        return []
    return mounts


def kill_cgroup(cgroups_path: str) -> list[int]:
    """SIGKILL every process in the container's cgroup (thawed first: a frozen task cannot
    die), until it is empty. Returns the pids killed."""
    directories = cgroup_dirs(cgroups_path)

    def thaw_all() -> None:
        for directory in directories:
            _thaw(directory)

    killed, _ = kill_until_gone(
        lambda: {pid for directory in directories for pid in _cgroup_pids(directory)}, thaw_all
    )
    return killed


def _cgroup_pids(directory: str) -> list[int]:
    pids = []
    for root, _, files in os.walk(directory):
        if "cgroup.procs" not in files:
            continue
        try:
            with open(os.path.join(root, "cgroup.procs"), encoding="ascii") as procs:
                pids += [int(line) for line in procs if line.strip().isdigit()]
        except OSError:
            continue
    return pids


def _thaw(directory: str) -> None:
    for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            try:
                with open(path, "w", encoding="ascii") as control:
                    control.write(value)
            except OSError as error:
                logger.warning("cannot thaw %s: %s", directory, error)


# -- the record -------------------------------------------------------------------------------


class Operation:
    """The OPERATION_FLAG record of one running checkpoint or restore, kept up to date."""

    def __init__(self, state: ContainerState, kind: str, runc_global_args: list[str]) -> None:
        self.state = state
        self.record: dict[str, Any] = {
            "operation": kind,
            "holder": list(ProcessIdentity.own()),
            "runc_global_args": runc_global_args,
        }

    def begin(self, **facts: str | bool) -> None:
        self.record.update(facts)
        self._save()

    def note(self, **facts: str | bool) -> None:
        self.record.update(facts)
        self._save()

    def runc_started(self, pid: int) -> None:
        identity = ProcessIdentity.of(pid)
        if identity is not None:
            self.record["runc"] = list(identity)
            self._save()

    def helper_started(self, pid: int) -> None:
        """A CRIU helper (cpuinfo dump/check) in a group of its own: CRIU's own short-lived
        children (kerndat probes, stopped by design) would outlive a killed CRIU."""
        identity = ProcessIdentity.of(pid)
        if identity is not None:
            self.record.setdefault("helpers", []).append(list(identity))
            self._save()

    def runc_ended(self) -> None:
        self.record.pop("runc", None)
        self._save()

    def end(self) -> None:
        self.state.clear(OPERATION_FLAG)

    def _save(self) -> None:
        import json

        self.state.set(OPERATION_FLAG, json.dumps(self.record, sort_keys=True))


def _read(state: ContainerState) -> dict[str, Any] | None:
    from arch.bounded_json import loads
    from arch.container.state import StateError

    try:
        text = state.get(OPERATION_FLAG)
    except (StateError, ValueError):
        return {}
    if text is None:
        return None
    try:
        record = loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _identity(value: object) -> ProcessIdentity | None:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    ):
        return ProcessIdentity(value[0], value[1])
    return None


def in_progress(state: ContainerState) -> bool:
    """Whether a live arch-runc is checkpointing or restoring the container right now."""
    record = _read(state)
    holder = _identity(record.get("holder")) if record else None
    return holder is not None and holder.alive()


class Finished(NamedTuple):
    """What finishing an interrupted operation did."""

    kind: str
    killed: list[int]  # pids SIGKILLed: runc, CRIU, helpers, restored processes
    unmounted: list[str]  # mount points runc or CRIU left, detached


class RestoreUndone(NamedTuple):
    """What undo_restore stopped and unmounted."""

    killed: list[int]
    unmounted: list[str]


def finish_interrupted(
    state: ContainerState, runc_binary: str, criu: str | None
) -> Finished | None:
    """Clean up after a checkpoint or restore whose arch-runc died. None when there was none
    (or its arch-runc still runs)."""
    record = _read(state)
    if record is None:
        return None
    holder = _identity(record.get("holder"))
    if holder is not None and holder.alive():
        return None
    where = f"{state.namespace}/{state.container_id}"
    kind = str(record.get("operation"))
    runc_child = _identity(record.get("runc"))
    grace = CHECKPOINT_GRACE_SECONDS if kind == CHECKPOINT else 0.0
    killed = stop_group(runc_child, grace) if runc_child is not None else []
    helpers = record.get("helpers")
    for helper in helpers if isinstance(helpers, list) else []:
        helper_group = _identity(helper)
        if helper_group is not None:
            killed += stop_group(helper_group)
    unmounted: list[str] = []
    if kind == RESTORE:
        bundle_path = record.get("bundle")
        undone = undo_restore(
            _runc(record, runc_binary, criu),
            state.container_id,
            bundle_path if isinstance(bundle_path, str) else None,
            record.get("work_dir"),
        )
        killed += undone.killed
        unmounted += undone.unmounted
    elif kind == CHECKPOINT and _published(state, record):
        _finish_publication(state, record, _runc(record, runc_binary, criu))
    elif kind == CHECKPOINT and record.get("paused_here"):
        _runc(record, runc_binary, criu).capture(["resume", state.container_id])
    staging_root, staging_relative = record.get("staging_root"), record.get("staging_relative")
    legacy = record.get("staging")
    if staging_root is None and isinstance(legacy, str) and os.path.isabs(legacy):
        # A record of an older ARCH names only the path: beneath "/", no symlink anywhere.
        staging_root, staging_relative = "/", os.path.normpath(legacy).lstrip("/")
    _remove_beneath(staging_root, staging_relative)
    unmounted += _remove_tree(record.get("work_dir"))
    state.clear(OPERATION_FLAG)
    logger.warning(
        "%s of %s was interrupted (arch-runc pid %s died): cleaned up%s%s",
        kind,
        where,
        holder.pid if holder else "?",
        f", killed pids {sorted(set(killed))}" if killed else "",
        f", unmounted {' '.join(unmounted)}" if unmounted else "",
    )
    return Finished(kind, sorted(set(killed)), unmounted)


def undo_restore(
    runc: Runc,
    container_id: str,
    bundle_path: str | None,
    work_dir: object,
    criu_work_dir: str | None = None,
) -> RestoreUndone:
    """Stop what is left of a restore whose runc group is already stopped (cut off by
    restore_timeout, or its arch-runc died) and undo what runc and CRIU set up: CRIU's
    processes outside runc's group, the half-restored container runc registered (its state
    directory and criu-root mount), every process in the container's cgroup, and CRIU's
    mounts (its cgroup yard) in the work directory. The work directory itself stays.
    `criu_work_dir`: where a CRIU configuration file moved CRIU's work directory, if it did:
    only CRIU's cgroup yards are unmounted there."""
    killed = _stop_users_of(work_dir)
    killed += _remove_half_restored(runc, container_id, bundle_path)
    unmounted: list[str] = []
    if isinstance(work_dir, str) and os.path.isabs(work_dir):
        try:
            unmounted = unmount_under(work_dir)
        except MountsLeft as error:
            logger.error("restore of %s: %s", container_id, error)
    if criu_work_dir is not None and os.path.isabs(criu_work_dir):
        try:
            unmounted += unmount_cgroup_yards(criu_work_dir)
        except MountsLeft as error:
            logger.error("restore of %s: %s", container_id, error)
    return RestoreUndone(sorted(set(killed)), unmounted)


def _published(state: ContainerState, record: dict[str, Any]) -> bool:
    """Whether the interrupted checkpoint published its image: marked so, or the image it was
    publishing is at its path (the kill came between the rename and the mark)."""
    from arch.container.state import CHECKPOINTED

    if state.has(CHECKPOINTED):
        return True
    publishing = record.get("publishing")
    if not isinstance(publishing, dict):
        return False
    expected = publishing.get("identity")
    return isinstance(expected, str) and published_image(publishing) == expected


def published_image(publishing: dict[str, Any]) -> str | None:
    """The identity of the image now at the path a checkpoint was publishing to (None: none)."""
    from arch.checkpoint.storage.beneath import opened_root
    from arch.checkpoint.storage.store import identity

    root, relative = publishing.get("root"), publishing.get("relative")
    if not isinstance(root, str) or not isinstance(relative, str):
        return None
    try:
        with opened_root(root) as root_fd:
            return identity(root_fd, relative)
    except OSError as error:
        logger.warning("cannot read the image at %s/%s: %s", root, relative, error)
        return None


def _finish_publication(state: ContainerState, record: dict[str, Any], runc: Runc) -> None:
    """The image is published: stop the container (it is still frozen) and mark it
    checkpointed; if it cannot be stopped, withdraw the image and leave it frozen."""
    from arch.container.state import CHECKPOINTED, SKIP_RESUME

    where = f"{state.namespace}/{state.container_id}"
    if record.get("hold"):  # to be held frozen (platform batch, Spot notice): never thawed
        state.set(CHECKPOINTED)
        state.set(SKIP_RESUME)
        _complete_handover(where, record)
        logger.warning("checkpoint of %s had published its image: container held frozen", where)
        return
    if stop_frozen(runc, state.container_id):
        state.set(CHECKPOINTED)
        state.set(SKIP_RESUME)
        _complete_handover(where, record)
        logger.warning("checkpoint of %s had published its image: container stopped", where)
        return
    publishing = record.get("publishing")
    withdrawn = isinstance(publishing, dict) and withdraw(publishing)
    state.clear(CHECKPOINTED)
    logger.error("checkpoint of %s had published its image, but the container could not be "
                 "stopped: image %s, container left frozen", where,
                 "withdrawn" if withdrawn else "NOT withdrawn")  # fmt: skip


def stop_frozen(runc: Runc, container_id: str) -> bool:
    """SIGKILL a frozen container, then thaw it so it dies without running again; True once it
    is stopped (or gone). A SIGKILLed task dies only once thawed, so its end is waited for."""
    import time

    killed = runc.capture(["kill", container_id, "KILL"])
    status = _status(runc, container_id)
    if status == "paused":  # runc >= 1.1 thaws what it SIGKILLs; older ones leave that to us
        runc.capture(["resume", container_id])
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while True:
        status = _status(runc, container_id)
        if status in (None, "stopped"):
            return True
        if time.monotonic() >= deadline:
            logger.error("runc kill %s: exit %s %s; still %s", container_id, killed.status,
                         killed.output.strip()[-300:], status)  # fmt: skip
            return False
        time.sleep(0.05)


def _status(runc: Runc, container_id: str) -> str | None:
    import json

    done = runc.capture(["state", container_id])
    if done.status != 0:
        return None
    try:
        status = json.loads(done.output).get("status")
    except (ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def withdraw(publishing: dict[str, Any]) -> bool:
    """Remove the image the checkpoint published, if it is still that image."""
    from arch.checkpoint.storage.beneath import opened_root
    from arch.checkpoint.storage.store import remove

    root, relative, expected = (publishing.get(key) for key in ("root", "relative", "identity"))
    if not all(isinstance(value, str) for value in (root, relative, expected)):
        return False
    assert isinstance(root, str) and isinstance(relative, str) and isinstance(expected, str)
    try:
        with opened_root(root) as root_fd:
            return remove(root_fd, relative, expected)
    except OSError as error:
        logger.error("cannot withdraw the image %s/%s: %s", root, relative, error)
        return False


def _complete_handover(where: str, record: dict[str, Any]) -> None:
    """A pool member's image is published: drop the claim it was restored from, then release
    the new image (in that order: a crash between leaves the pool without the old state)."""
    handover = record.get("pool_handover")
    if not isinstance(handover, dict):
        return
    from arch.checkpoint.storage import pool

    root, new, old = (handover.get(key) for key in ("root", "new", "old"))
    if not isinstance(root, str) or not isinstance(new, str):
        return
    try:
        if isinstance(old, str) and old:
            pool.drop_claim(old, root)
        pool.release(new, root)
    except OSError as error:
        logger.error("%s: pool hand-over not completed: %s", where, error)


def _runc(record: dict[str, Any], runc_binary: str, criu: str | None) -> Runc:
    from arch.runc.runtime import Runc

    global_args = record.get("runc_global_args")
    if not isinstance(global_args, list) or not all(isinstance(a, str) for a in global_args):
        global_args = []
    return Runc(runc_binary, global_args, criu or "criu")


def _remove_half_restored(runc: Runc, container_id: str, bundle_path: str | None) -> list[int]:
    deleted = runc.delete_force(container_id)
    logger.info("runc delete --force %s: exit %s %s", container_id, deleted.status,
                deleted.output.strip()[-300:])  # fmt: skip
    if bundle_path is None:
        return []
    from arch.container.bundle import Bundle, BundleError

    try:
        linux = Bundle.load(bundle_path).spec.get("linux") or {}
    except BundleError as error:
        logger.warning("cannot read the cgroup of %s: %s", container_id, error)
        return []
    cgroups_path = linux.get("cgroupsPath") if isinstance(linux, dict) else None
    return kill_cgroup(cgroups_path) if isinstance(cgroups_path, str) else []


def _stop_users_of(work_dir: object) -> list[int]:
    """SIGKILL the processes holding files open in the restore's work directory: its CRIU keeps
    restore.log there, and once it takes on the restored tasks' session and group it is no
    longer in runc's process group, so stopping that group misses it."""
    if not isinstance(work_dir, str) or not os.path.isabs(work_dir):
        return []
    killed, survivors = kill_until_gone(lambda: _processes_using(work_dir))
    if survivors:
        logger.error("processes %s still use %s after SIGKILL", survivors, work_dir)
    return killed


def _processes_using(directory: str) -> list[int]:
    """Other processes with a file open at or below `directory`."""
    prefix = directory.rstrip("/") + "/"
    own = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own:
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or a kernel thread
        for name in names:
            try:
                target = os.readlink(os.path.join(fd_dir, name))
            except OSError:
                continue
            if target == directory or target.startswith(prefix):
                found.append(int(entry))
                break
    return found


def _remove_tree(path: object) -> list[str]:
    """Remove a restore's work directory (under ARCH's own state directory); the mount points
    left in it that were detached."""
    if not isinstance(path, str) or not os.path.isabs(path):
        return []
    try:
        return remove_tree(path)
    except MountsLeft as error:
        logger.error("%s not removed: %s", path, error)
        return []


def _remove_beneath(root: object, relative: object) -> None:
    """Remove the checkpoint's staging directory, resolved beneath the root that holds it
    following no symlink (the storage may be writable by others)."""
    from arch.checkpoint.storage.beneath import open_beneath, opened_root, remove_tree_at

    if not (isinstance(root, str) and isinstance(relative, str) and relative):
        return
    parent, name = posixpath.split(relative)
    if not name.startswith(STAGING_PREFIX):
        return  # only ever a staging directory
    try:
        with opened_root(root) as root_fd:
            parent_fd = open_beneath(root_fd, parent)
        try:
            remove_tree_at(parent_fd, name)
        finally:
            os.close(parent_fd)
    except FileNotFoundError:
        return  # never made (recorded before its mkdir), or removed already
    except (OSError, ValueError) as error:
        logger.warning("staging directory %s not removed: %s", posixpath.join(root, relative),
                       error)  # fmt: skip
