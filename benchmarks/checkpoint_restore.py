#!/usr/bin/env python3
"""Checkpoint/restore cost: ARCH (arch-runc) against plain runc + GNU tar of the upperdir.

One run, rounds interleaved (the arm that goes first alternates), so that machine noise hits
both alike. Each round and arm gets a fresh container: a real overlay rootfs (lower = static
busybox + a static C program; a new empty upper) mounted here, `--fs-mib` of new and changed
files written through the merged view (they land in the upper layer), and the C program holding
`--mem-mib` of touched memory. Then:

  ARCH, driven as containerd drives it (arch-runc with --root, --log, ARCH_CONFIG naming a private
  arch.toml, the container opted in with ARCH_ENABLE=1):
    checkpoint = `pause` + `checkpoint --image-path X --work-path Y --leave-running` + `resume`
                 (ARCH captures the upperdir, dumps through runc/CRIU, publishes the image, stops
                 the container; the resume is a no-op)
    (untimed: `delete`, unmount, mount a fresh overlay: same lower, new empty upper)
    restore    = `create` (ARCH validates the image, applies the tar through the merged view,
                 `runc restore --detach`); the following `start` (a no-op) is shown apart.
  baseline, the same container without ARCH_ENABLE, plain runc:
    checkpoint = `tar -C <upper> -cf X .` + `runc checkpoint --image-path I --work-path W`
    (untimed: unmount (runc checkpoint removed the container), mount a fresh overlay)
    restore    = `tar -xf X -C <merged view>` (through the overlay, as ARCH applies it)
                 + `runc restore --detach --image-path I --work-path W2 --bundle B`

The changes are new files (3/4 of the size in 4 large files, 1/4 in 64 KiB files) and one
modified lower-layer file (with `--rewrite-lower-mib N` also one N MiB file of the image,
rewritten whole: "a job that rewrote a large file of its image"); no deletions (GNU tar would
carry overlay's whiteout devices, not OCI whiteouts). The page cache is written back (sync)
before each timed phase. Not equal work: ARCH also hashes the tar (sha256, at capture and again
before applying) and fsyncs its image before it stops the container; the baseline does neither
(--baseline-fsync adds the fsync to it).

Both restores are checked: the container must be running again (a fresh create would be only
"created"), hold the memory again and see the files. Printed: median wall times per phase and of
the per-round sums, and the ratios ARCH / baseline. Absolute times depend on the machine; the
ratios are the figure. Needs root, runc, CRIU (>= 4 on this kernel, found on PATH with
/usr/local/sbin first), gcc with static libc, GNU tar and a static busybox.

    sudo python3 benchmarks/checkpoint_restore.py [--rounds 5] [--fs-mib 256] [--mem-mib 256]
        [--rewrite-lower-mib 0]

Comparing two versions of ARCH (e.g. the cost of a change): `--compare-arch-runc OTHER` adds a
third arm, the same ARCH round driven through OTHER (an arch-runc built from another tree), and
prints ARCH / OTHER per phase. `--signed` adds the arm "signed": the same arch-runc with
image_key_file set (images signed at checkpoint; the signature and every file's sha256 checked
at restore), printed as signed / ARCH (and signed / OTHER). `--lower-copy DIR` adds a copy of
DIR to the image's lower layer (e.g. a distribution's /usr/lib, for an image of realistic size).
The ARCH arm runs with signing off (image_key_file = "", unsigned_images = "allow"); OTHER gets
an arch.toml of the keys every version reads (its own defaults apply).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD_SOURCE = os.path.join(HERE, "workloads", "memhog.c")
NAMESPACE = "bench"  # the last component of --root: ARCH's namespace for the image path
# Per run: runc names the container's cgroups after its id, and two runs on one host (another
# user's benchmark) must not share them.
ARCH_ID = f"arch-bench-cr-arch-{os.getpid()}"
BASELINE_ID = f"arch-bench-cr-plain-{os.getpid()}"
MIB = 1 << 20
LARGE_FILES = 4  # three quarters of the changes in a few large files ...
SMALL_FILE_SIZE = 64 * 1024  # ... one quarter in many small ones, 64 per directory
SMALL_FILES_PER_DIR = 64
LOWER_CONFIG = "etc/app.conf"  # a lower-layer file the container "modifies" (copy-up)
LOWER_BIG = "opt/image-big.bin"  # --rewrite-lower-mib: a large image file rewritten whole
LAYER_APPLIED = "layer applied in "  # ARCH's log line: seconds spent verifying+applying the tar
READY_TIMEOUT = 120.0
MEMORY_READY_SHARE = 0.95  # VmRSS at or above this share of --mem-mib: the memory is touched
BUSYBOX_APPLETS = ("sh", "sleep", "cat", "ls")
OTHER = "other"  # the --compare-arch-runc arm
SIGNED = "signed"  # the --signed arm
UNCOMPRESSED = "uncompressed"  # the --uncompressed arm
CONFIGS = {"ARCH": "arch.toml", SIGNED: "arch-signed.toml", OTHER: "arch-other.toml",
           UNCOMPRESSED: "arch-uncompressed.toml"}  # fmt: skip


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


@dataclass
class Tools:
    runc: str
    arch_runc: str
    tar: str
    env: dict[str, str]  # PATH with /usr/local/sbin first (CRIU); ARCH_CONFIG for arch-runc


@dataclass
class Workspace:
    """Everything the benchmark creates, so that it can all be removed pass or fail."""

    root: str
    run_dir: str  # a tmpfs, as /run is on a real host: runc's root and ARCH's state_dir
    runc_root: str
    state_dir: str
    lower: str
    arch_host: str
    checkpoint_root: str
    arch_log: str
    mounts: list[str] = field(default_factory=list)

    @classmethod
    def create(cls) -> Workspace:
        root = tempfile.mkdtemp(prefix="arch-bench-cr-")
        arch_host = os.path.join(root, "arch-host")
        run_dir = os.path.join(root, "run")
        return cls(
            root=root,
            run_dir=run_dir,
            runc_root=os.path.join(run_dir, "runc", NAMESPACE),
            state_dir=os.path.join(run_dir, "arch"),
            lower=os.path.join(root, "lower"),
            arch_host=arch_host,
            checkpoint_root=os.path.join(arch_host, "checkpoint"),
            arch_log=os.path.join(arch_host, "arch.log"),
        )

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)


# -- setup -------------------------------------------------------------------------------------


def build_workload(workspace: Workspace) -> str:
    binary = workspace.path("memhog")
    subprocess.run(["gcc", "-O2", "-static", "-o", binary, WORKLOAD_SOURCE], check=True)
    return binary


def build_lower(
    workspace: Workspace,
    busybox: str,
    workload: str,
    big_mib: int,
    block: bytes,
    extra: str | None = None,
) -> None:
    """busybox + the workload, and the mount points runc needs (the lower layer is read-only
    under overlay, so runc must not have to create them in the upper); `extra` copied to
    /opt/extra."""
    lower = workspace.lower
    for directory in ("bin", "etc", "proc", "sys", "dev", "tmp", "data", "opt"):
        os.makedirs(os.path.join(lower, directory))
    if extra is not None:
        shutil.copytree(extra, os.path.join(lower, "opt", "extra"), symlinks=True)
    shutil.copy2(busybox, os.path.join(lower, "bin", "busybox"))
    for applet in BUSYBOX_APPLETS:
        os.symlink("busybox", os.path.join(lower, "bin", applet))
    shutil.copy2(workload, os.path.join(lower, "bin", "memhog"))
    with open(os.path.join(lower, LOWER_CONFIG), "w") as config:
        config.write("setting = lower\n" * 256)
    if big_mib:
        write_file(os.path.join(lower, LOWER_BIG), big_mib * MIB, block, offset=1)


def write_arch_host(workspace: Workspace, runc: str, kind: str = "ARCH") -> str:
    """A private arch.toml (its checkpoint_root, state_dir and log in the workspace) for an arm:
    ARCH: images unsigned (image_key_file = "", unsigned_images = "allow"); SIGNED:
    arch-signed.toml, image_key_file naming a fresh key (root, 0600); OTHER: arch-other.toml,
    only the keys every version reads (an older ARCH refuses keys it does not know)."""
    os.makedirs(workspace.checkpoint_root, mode=0o700, exist_ok=True)
    lines = [
        f"runc = {json.dumps(runc)}",
        f"checkpoint_root = {json.dumps(workspace.checkpoint_root)}",
        f"state_dir = {json.dumps(workspace.state_dir)}",
        f"log_file = {json.dumps(workspace.arch_log)}",
        'log_level = "info"',
    ]
    if kind in (SIGNED, UNCOMPRESSED):
        key_file = os.path.join(workspace.arch_host, f"{kind}.key")
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as key:
            key.write(os.urandom(32).hex() + "\n")
        lines.append(f"image_key_file = {json.dumps(key_file)}")
        if kind == UNCOMPRESSED:
            lines.append('compression = "off"')
    elif kind == "ARCH":
        lines += ['image_key_file = ""', 'unsigned_images = "allow"']
    config_file = os.path.join(workspace.arch_host, CONFIGS[kind])
    with open(config_file, "w") as config:
        config.write("\n".join([*lines, ""]))
    return config_file


def write_bundle(tools: Tools, bundle: str, mem_mib: int, opted_in: bool) -> None:
    os.makedirs(os.path.join(bundle, "rootfs"))
    subprocess.run([tools.runc, "spec", "--bundle", bundle], check=True)
    config_path = os.path.join(bundle, "config.json")
    with open(config_path) as config_file:
        spec = json.load(config_file)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/memhog", str(mem_mib)]
    if opted_in:
        spec["process"]["env"].append("ARCH_ENABLE=1")
    spec["root"]["readonly"] = False
    with open(config_path, "w") as config_file:
        json.dump(spec, config_file, indent=2)


# -- overlay -----------------------------------------------------------------------------------


def mount_overlay(workspace: Workspace, layer_dir: str, merged: str) -> str:
    """Mount a fresh overlay (new empty upper) of the shared lower at `merged`; its upperdir."""
    upper = os.path.join(layer_dir, "upper")
    work = os.path.join(layer_dir, "work")
    os.makedirs(upper)
    os.makedirs(work)
    options = f"lowerdir={workspace.lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, merged], check=True)
    workspace.mounts.append(merged)
    return upper


def mount_run_tmpfs(workspace: Workspace) -> None:
    """runc's root and ARCH's state_dir on a tmpfs, as under /run on a real host (on disk, a
    small rename there waits for the journal while the image's hundreds of MiB are written)."""
    os.makedirs(workspace.run_dir)
    subprocess.run(
        # Room to unpack a compressed image's pages and tar at restore (a tmpfs takes only
        # what is written).
        ["mount", "-t", "tmpfs", "-o", "size=2g,mode=0700", "tmpfs", workspace.run_dir],
        check=True,
    )
    workspace.mounts.append(workspace.run_dir)


def unmount(workspace: Workspace, merged: str) -> None:
    subprocess.run(["umount", merged], check=True)
    workspace.mounts.remove(merged)


def write_changes(merged: str, fs_mib: int, big_mib: int, block: bytes) -> int:
    """About `fs_mib` of new files plus one changed lower file, written through the merged view.
    Returns the bytes written under /data (what the restore checks)."""
    total = fs_mib * MIB
    large_size = total * 3 // 4 // LARGE_FILES
    written = 0
    data = os.path.join(merged, "data")
    for index in range(LARGE_FILES):
        written += write_file(os.path.join(data, f"large-{index}.bin"), large_size, block)
    small_total = total - written
    small_count = max(1, small_total // SMALL_FILE_SIZE)
    for index in range(small_count):
        directory = os.path.join(data, "small", f"d{index // SMALL_FILES_PER_DIR:03d}")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"f{index % SMALL_FILES_PER_DIR:03d}.bin")
        written += write_file(path, SMALL_FILE_SIZE, block, offset=index)
    with open(os.path.join(merged, LOWER_CONFIG), "a") as config:  # copy-up of a lower file
        config.write("setting = changed in the container\n")
    if big_mib:  # the image's large file, rewritten whole with other content
        write_file(os.path.join(merged, LOWER_BIG), big_mib * MIB, block, offset=2)
    return written


def write_file(path: str, size: int, block: bytes, offset: int = 0) -> int:
    with open(path, "wb") as target:
        remaining = size
        position = (offset * 4096) % len(block)
        while remaining > 0:
            piece = block[position : position + remaining]
            target.write(piece)
            remaining -= len(piece)
            position = 0
    return size


def data_bytes(merged: str) -> int:
    total = 0
    for directory, _dirs, files in os.walk(os.path.join(merged, "data")):
        total += sum(os.lstat(os.path.join(directory, name)).st_size for name in files)
    return total


# -- commands ----------------------------------------------------------------------------------


def timed(argv: list[str], tools: Tools, what: str, log: str | None = None) -> float:
    """Run one command (stdio /dev/null: a container may inherit it; CRIU cannot dump a host
    file as stdio); its wall time. BenchError with the relevant log's tail on failure."""
    start = time.perf_counter()
    completed = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if log is None else subprocess.DEVNULL,
        env=tools.env,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        detail = completed.stderr.decode(errors="replace") if completed.stderr else ""
        if log is not None:
            detail += tail(log)
        raise BenchError(f"{what} exited {completed.returncode}: {' '.join(argv)}\n{detail}")
    return elapsed


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as log_file:
            return f"{path} (last lines):\n" + "".join(log_file.readlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def runc_global(workspace: Workspace, bundle: str) -> list[str]:
    """The global options containerd's shim passes."""
    return [
        "--root",
        workspace.runc_root,
        "--log",
        os.path.join(bundle, "log.json"),
        "--log-format",
        "json",
    ]


def container_state(tools: Tools, workspace: Workspace, container_id: str) -> dict[str, object]:
    completed = subprocess.run(
        [tools.runc, "--root", workspace.runc_root, "state", container_id],
        capture_output=True,
        env=tools.env,
        check=False,
    )
    if completed.returncode != 0:
        raise BenchError(f"runc state {container_id}: {completed.stderr.decode().strip()}")
    state: dict[str, object] = json.loads(completed.stdout)
    return state


def resident_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_until_resident(
    tools: Tools, workspace: Workspace, container_id: str, mem_mib: int
) -> None:
    """Until the container's init holds its memory (the workload touched every page)."""
    wanted = int(mem_mib * 1024 * MEMORY_READY_SHARE)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        state = container_state(tools, workspace, container_id)
        if state.get("status") != "running":
            raise BenchError(f"{container_id} is {state.get('status')}, not running")
        if resident_kib(int(str(state["pid"]))) >= wanted:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{container_id} did not reach {mem_mib} MiB resident")
        time.sleep(0.05)


def check_restored(
    tools: Tools,
    workspace: Workspace,
    container_id: str,
    mem_mib: int,
    merged: str,
    expected_bytes: int,
    what: str,
    block: bytes,
) -> None:
    """A restore (not a fresh create: that would be "created"), with memory and files back."""
    state = container_state(tools, workspace, container_id)
    if state.get("status") != "running":
        hint = tail(workspace.arch_log) if what == "ARCH" else ""
        raise BenchError(
            f"{what}: after restore {container_id} is {state.get('status')}, not "
            f"running (a fresh create, or a failed restore)\n{hint}"
        )
    resident = resident_kib(int(str(state["pid"])))
    if resident < mem_mib * 1024 * MEMORY_READY_SHARE:
        raise BenchError(f"{what}: restored process holds {resident} KiB, not {mem_mib} MiB")
    found = data_bytes(merged)
    if found != expected_bytes:
        raise BenchError(
            f"{what}: restored rootfs has {found} bytes under /data, expected {expected_bytes}"
        )
    big = os.path.join(merged, LOWER_BIG)
    if os.path.exists(big) and not rewritten(big, block):
        raise BenchError(f"{what}: the restored {LOWER_BIG} is the image's, not the rewritten one")


def last_layer_apply(arch_log: str) -> float | None:
    """Seconds of ARCH's latest "layer applied in X s" log line (None without one)."""
    with open(arch_log) as log:
        lines = [line for line in log if LAYER_APPLIED in line]
    if not lines:
        return None
    return float(lines[-1].split(LAYER_APPLIED, 1)[1].split()[0])


def rewritten(path: str, block: bytes) -> bool:
    """The file starts as write_changes rewrote it (offset 2), not as the image had it."""
    with open(path, "rb") as big:
        head = big.read(4096)
    return head == block[2 * 4096 : 3 * 4096]


def force_delete(tools: Tools, workspace: Workspace, container_id: str) -> None:
    subprocess.run(
        [tools.runc, "--root", workspace.runc_root, "delete", "--force", container_id],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=tools.env,
        check=False,
    )


def directory_bytes(path: str) -> int:
    total = 0
    for directory, _dirs, files in os.walk(path):
        total += sum(os.lstat(os.path.join(directory, name)).st_size for name in files)
    return total


# -- one round of each arm ---------------------------------------------------------------------


@dataclass
class Sample:
    """One arm's round: wall time of each timed step, by phase."""

    checkpoint_steps: dict[str, float] = field(default_factory=dict)
    restore_steps: dict[str, float] = field(default_factory=dict)
    start: float = 0.0  # ARCH only: the no-op start after the restoring create
    image_bytes: int = 0
    layer_apply: float | None = None  # ARCH only: from its log, part of the restoring create

    @property
    def checkpoint(self) -> float:
        return sum(self.checkpoint_steps.values())

    @property
    def restore(self) -> float:
        return sum(self.restore_steps.values())

    @property
    def total(self) -> float:
        return self.checkpoint + self.restore


@dataclass
class Round:
    """Shared inputs of one round."""

    tools: Tools
    workspace: Workspace
    args: argparse.Namespace
    block: bytes


def start_container(
    run: Round,
    arm_dir: str,
    container_id: str,
    opted_in: bool,
    runc: str,
    tools: Tools | None = None,
) -> tuple[str, str, int]:
    """A fresh overlay, the changes written, the container created, started and resident
    (`tools`: the arm's arch.toml, default ARCH's). Returns (bundle, merged rootfs, bytes
    written under /data)."""
    tools = tools or run.tools
    bundle = os.path.join(arm_dir, "bundle")
    write_bundle(run.tools, bundle, run.args.mem_mib, opted_in)
    merged = os.path.join(bundle, "rootfs")
    mount_overlay(run.workspace, os.path.join(arm_dir, "layer-1"), merged)
    written = write_changes(merged, run.args.fs_mib, run.args.rewrite_lower_mib, run.block)
    prefix = [runc, *runc_global(run.workspace, bundle)]
    pid_file = os.path.join(bundle, "init.pid")
    log = os.path.join(bundle, "log.json")
    timed(
        [*prefix, "create", "--bundle", bundle, "--pid-file", pid_file, container_id],
        tools,
        "create",
        log,
    )
    timed([*prefix, "start", container_id], tools, "start", log)
    wait_until_resident(tools, run.workspace, container_id, run.args.mem_mib)
    os.sync()  # the changes' writeback must not fall into either arm's timed window
    return bundle, merged, written


def remount_fresh(run: Round, arm_dir: str, merged: str) -> None:
    """The new container's rootfs: the same lower, a new empty upper."""
    unmount(run.workspace, merged)
    mount_overlay(run.workspace, os.path.join(arm_dir, "layer-2"), merged)
    os.sync()


def arch_round(
    run: Round, index: int, arch_runc: str | None = None, tools: Tools | None = None
) -> Sample:
    """One round of an ARCH arm: `arch_runc` and `tools` (its arch.toml) default to ARCH's."""
    tools, workspace = tools or run.tools, run.workspace
    arch_runc = arch_runc or tools.arch_runc
    arm_dir = workspace.path(f"round-{index}", "arch")
    bundle, merged, written = start_container(run, arm_dir, ARCH_ID, True, arch_runc, tools)
    prefix = [arch_runc, *runc_global(workspace, bundle)]
    log = os.path.join(bundle, "log.json")
    image_path = os.path.join(arm_dir, "containerd-image")  # ARCH ignores it (own location)
    work_path = os.path.join(bundle, "work", "criu-work")
    sample = Sample()
    steps = sample.checkpoint_steps
    steps["pause"] = timed([*prefix, "pause", ARCH_ID], tools, "arch-runc pause", log)
    steps["checkpoint"] = timed(
        [
            *prefix,
            "checkpoint",
            "--image-path",
            image_path,
            "--work-path",
            work_path,
            "--leave-running",
            ARCH_ID,
        ],
        tools,
        "arch-runc checkpoint",
    )
    steps["resume"] = timed([*prefix, "resume", ARCH_ID], tools, "arch-runc resume")
    image_dir = os.path.join(workspace.checkpoint_root, NAMESPACE, ARCH_ID)
    sample.image_bytes = directory_bytes(image_dir)
    timed([*prefix, "delete", ARCH_ID], tools, "arch-runc delete")
    remount_fresh(run, arm_dir, merged)
    pid_file = os.path.join(bundle, "init.pid")
    sample.restore_steps["create"] = timed(
        [*prefix, "create", "--bundle", bundle, "--pid-file", pid_file, ARCH_ID],
        tools,
        "arch-runc create (restore)",
        workspace.arch_log,
    )
    sample.start = timed([*prefix, "start", ARCH_ID], tools, "arch-runc start")
    check_restored(
        tools, workspace, ARCH_ID, run.args.mem_mib, merged, written, "ARCH", run.block
    )
    sample.layer_apply = last_layer_apply(workspace.arch_log)
    finish_arm(run, ARCH_ID, merged, arm_dir)
    shutil.rmtree(image_dir)
    return sample


def baseline_round(run: Round, index: int) -> Sample:
    tools, workspace = run.tools, run.workspace
    arm_dir = workspace.path(f"round-{index}", "baseline")
    bundle, merged, written = start_container(run, arm_dir, BASELINE_ID, False, tools.runc)
    prefix = [tools.runc, *runc_global(workspace, bundle)]
    log = os.path.join(bundle, "log.json")
    upper = os.path.join(arm_dir, "layer-1", "upper")
    archive = os.path.join(arm_dir, "upper.tar")
    image_path = os.path.join(arm_dir, "image")
    sample = Sample()
    steps = sample.checkpoint_steps
    steps["tar -c"] = timed([tools.tar, "-C", upper, "-cf", archive, "."], tools, "tar -c")
    steps["runc checkpoint"] = timed(
        [
            *prefix,
            "checkpoint",
            "--image-path",
            image_path,
            "--work-path",
            os.path.join(arm_dir, "dump-work"),
            BASELINE_ID,
        ],
        tools,
        "runc checkpoint",
        log,
    )
    if run.args.baseline_fsync:  # the durability ARCH gives its image before the kill
        image_files = [os.path.join(image_path, name) for name in sorted(os.listdir(image_path))]
        steps["sync"] = timed(["sync", archive, *image_files], tools, "sync")
    sample.image_bytes = directory_bytes(image_path) + os.path.getsize(archive)
    force_delete(tools, workspace, BASELINE_ID)  # runc checkpoint already removed it
    remount_fresh(run, arm_dir, merged)
    restore_work = os.path.join(arm_dir, "restore-work")
    steps = sample.restore_steps
    steps["tar -x"] = timed([tools.tar, "-xf", archive, "-C", merged], tools, "tar -x")
    steps["runc restore"] = timed(
        [
            *prefix,
            "restore",
            "--detach",
            "--image-path",
            image_path,
            "--work-path",
            restore_work,
            "--bundle",
            bundle,
            "--pid-file",
            os.path.join(bundle, "init.pid"),
            BASELINE_ID,
        ],
        tools,
        "runc restore",
        os.path.join(restore_work, "restore.log"),
    )
    check_restored(
        tools, workspace, BASELINE_ID, run.args.mem_mib, merged, written, "baseline", run.block
    )
    finish_arm(run, BASELINE_ID, merged, arm_dir)
    return sample


def finish_arm(run: Round, container_id: str, merged: str, arm_dir: str) -> None:
    force_delete(run.tools, run.workspace, container_id)
    unmount(run.workspace, merged)
    shutil.rmtree(arm_dir)


# -- main --------------------------------------------------------------------------------------


def cleanup(tools: Tools, workspace: Workspace) -> None:
    for container_id in (ARCH_ID, BASELINE_ID):
        force_delete(tools, workspace, container_id)
    for merged in reversed(workspace.mounts):
        if subprocess.run(["umount", merged], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", merged], check=False)
    workspace.mounts.clear()
    shutil.rmtree(workspace.root, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--fs-mib", type=int, default=256, help="filesystem changes (MiB)")
    parser.add_argument("--mem-mib", type=int, default=256, help="resident memory (MiB)")
    parser.add_argument(
        "--rewrite-lower-mib",
        type=int,
        default=0,
        help="also a file of this size in the image, rewritten whole by the container",
    )
    parser.add_argument(
        "--arch-runc",
        default="/usr/local/bin/arch-runc",
        help="arch-runc (the native front), as containerd calls it",
    )
    parser.add_argument(
        "--compare-arch-runc",
        metavar="OTHER",
        help="a second arch-runc (another version of ARCH) run as a third arm; prints ARCH/OTHER",
    )
    parser.add_argument(
        "--signed",
        action="store_true",
        help="also an arm with image_key_file set (signed images); prints signed/ARCH",
    )
    parser.add_argument(
        "--uncompressed",
        action="store_true",
        help="also an arm signed with compression off; prints signed/uncompressed",
    )
    parser.add_argument(
        "--lower-copy", metavar="DIR", help="copy DIR into the lower layer (a realistic image)"
    )
    parser.add_argument("--runc", default=shutil.which("runc") or "/usr/sbin/runc")
    parser.add_argument(
        "--baseline-fsync",
        action="store_true",
        help="also fsync the baseline's tar and image (`sync FILE...`), as ARCH does",
    )
    parser.add_argument("--busybox", default=shutil.which("busybox") or "/bin/busybox")
    parser.add_argument("--tar", default=shutil.which("tar") or "/bin/tar")
    args = parser.parse_args()
    if args.rounds < 1 or args.fs_mib < 1 or args.mem_mib < 1 or args.rewrite_lower_mib < 0:
        parser.error("--rounds, --fs-mib and --mem-mib must be positive")
    return args


def make_tools(args: argparse.Namespace, config_file: str) -> Tools:
    env = dict(os.environ)
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:" + env.get("PATH", "/usr/sbin:/usr/bin")
    env["ARCH_CONFIG"] = config_file
    return Tools(runc=args.runc, arch_runc=args.arch_runc, tar=args.tar, env=env)


def run_rounds(run: Round, count: int, first_index: int) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {"baseline": [], "ARCH": []}
    arms: list[tuple[str, Callable[[Round, int], Sample]]] = [
        ("baseline", baseline_round), ("ARCH", arch_round)
    ]  # fmt: skip
    other = run.args.compare_arch_runc
    if other:
        config_file = os.path.join(run.workspace.arch_host, CONFIGS[OTHER])
        older = dataclasses.replace(run.tools, env={**run.tools.env, "ARCH_CONFIG": config_file})
        samples[OTHER] = []
        arms.append((OTHER, lambda run, index: arch_round(run, index, other, older)))
    if run.args.signed:
        config_file = os.path.join(run.workspace.arch_host, CONFIGS[SIGNED])
        signed = dataclasses.replace(run.tools, env={**run.tools.env, "ARCH_CONFIG": config_file})
        samples[SIGNED] = []
        arms.append((SIGNED, lambda run, index: arch_round(run, index, None, signed)))
    if run.args.uncompressed:
        config_file = os.path.join(run.workspace.arch_host, CONFIGS[UNCOMPRESSED])
        plain = dataclasses.replace(run.tools, env={**run.tools.env, "ARCH_CONFIG": config_file})
        samples[UNCOMPRESSED] = []
        arms.append((UNCOMPRESSED, lambda run, index: arch_round(run, index, None, plain)))
    for index in range(first_index, first_index + count):
        shift = index % len(arms)  # each arm goes first in turn
        for name, arm in arms[shift:] + arms[:shift]:
            samples[name].append(arm(run, index))
    return samples


def report(args: argparse.Namespace, samples: dict[str, list[Sample]]) -> None:
    def median(name: str, phase: str) -> float:
        return float(statistics.median(getattr(sample, phase) for sample in samples[name]))

    def step_medians(name: str, phase: str) -> str:
        steps = [getattr(sample, phase) for sample in samples[name]]
        return ", ".join(
            f"{step} {statistics.median(s[step] for s in steps):.2f}s" for step in steps[0]
        )

    print(
        f"Checkpoint + restore of a container with {args.fs_mib} MiB of filesystem changes and "
        f"{args.mem_mib} MiB resident,"
        + (
            f" plus a {args.rewrite_lower_mib} MiB file of its image rewritten,"
            if args.rewrite_lower_mib
            else ""
        )
    )
    print(f"{args.rounds} interleaved rounds, median wall time (sum: median of per-round sums)")
    print(f"  {'':<26} {'checkpoint':>10} {'restore':>10} {'sum':>10} {'image':>10}")
    baseline_label = "runc + tar + fsync" if args.baseline_fsync else "runc + GNU tar"
    labels = {"baseline": f"baseline ({baseline_label})", "ARCH": "ARCH (arch-runc)"}
    for name in ("baseline", "ARCH"):
        image_mib = median(name, "image_bytes") / MIB
        print(
            f"  {labels[name]:<26} {median(name, 'checkpoint'):9.2f}s "
            f"{median(name, 'restore'):9.2f}s {median(name, 'total'):9.2f}s "
            f"{image_mib:6.0f} MiB"
        )
    ratios = [
        median("ARCH", phase) / median("baseline", phase)
        for phase in ("checkpoint", "restore", "total")
    ]
    print(f"  {'ARCH / baseline':<26} {ratios[0]:9.2f}x {ratios[1]:9.2f}x {ratios[2]:9.2f}x")
    verdict = "within" if ratios[2] <= 1.2 else "OVER"
    print(f"  target: ARCH sum within 1.20x of the baseline sum -> {verdict} ({ratios[2]:.2f}x)")
    print("  steps (medians):")
    for name in ("baseline", "ARCH"):
        print(f"    {name:<9} checkpoint: {step_medians(name, 'checkpoint_steps')}")
        print(f"    {'':<9} restore:    {step_medians(name, 'restore_steps')}")
    print(
        f"    ARCH's following `start` (a no-op, not in the sums): "
        f"{median('ARCH', 'start') * 1000:.0f} ms"
    )
    applied = [sample.layer_apply for sample in samples["ARCH"] if sample.layer_apply is not None]
    if applied:
        print(
            f"    ARCH restore, of which verifying + applying the filesystem tar: "
            f"{statistics.median(applied):.2f}s"
        )
    if OTHER in samples:
        phases = ("checkpoint", "restore", "total")
        print(f"  {'':<26} {'checkpoint':>10} {'restore':>10} {'sum':>10}")
        for name, label in (("ARCH", "ARCH (arch-runc)"), (OTHER, f"{OTHER} arch-runc")):
            times = " ".join(f"{median(name, phase):9.2f}s" for phase in phases)
            print(f"  {label:<26} {times}")
        against = " ".join(f"{median('ARCH', p) / median(OTHER, p):9.3f}x" for p in phases)
        print(f"  {'ARCH / ' + OTHER:<26} {against}   ({args.compare_arch_runc})")
        print(f"    {OTHER:<9} checkpoint: {step_medians(OTHER, 'checkpoint_steps')}")
        print(f"    {'':<9} restore:    {step_medians(OTHER, 'restore_steps')}")
    if SIGNED in samples:
        phases = ("checkpoint", "restore", "total")
        times = " ".join(f"{median(SIGNED, phase):9.2f}s" for phase in phases)
        print(f"  {'ARCH signed (image_key_file)':<26} {times}")
        for against in ("ARCH", OTHER):
            if against in samples:
                ratios = " ".join(
                    f"{median(SIGNED, p) / median(against, p):9.3f}x" for p in phases
                )
                print(f"  {'signed / ' + against:<26} {ratios}")
        print(f"    {SIGNED:<9} checkpoint: {step_medians(SIGNED, 'checkpoint_steps')}")
        print(f"    {'':<9} restore:    {step_medians(SIGNED, 'restore_steps')}")
    if UNCOMPRESSED in samples:
        report_uncompressed(samples, median, step_medians)
    load = os.getloadavg()
    print(f"  load average at the end (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def report_uncompressed(
    samples: dict[str, list[Sample]],
    median: Callable[[str, str], float],
    step_medians: Callable[[str, str], str],
) -> None:
    """The arm signed with compression off against the baseline and the (compressed) arms."""
    phases = ("checkpoint", "restore", "total")
    times = " ".join(f"{median(UNCOMPRESSED, phase):9.2f}s" for phase in phases)
    image_mib = median(UNCOMPRESSED, "image_bytes") / MIB
    print(f"  {'ARCH signed, uncompressed':<26} {times} {image_mib:6.0f} MiB")
    for against in ("baseline", SIGNED, "ARCH"):
        if against in samples:
            ratios = " ".join(f"{median(against, p) / median(UNCOMPRESSED, p):9.3f}x"
                              for p in phases)  # fmt: skip
            print(f"  {against + ' / uncompressed':<26} {ratios}")
    if SIGNED in samples:
        print(f"  image bytes: signed (compressed) {median(SIGNED, 'image_bytes') / MIB:.0f} MiB, "
              f"uncompressed {image_mib:.0f} MiB")
        ratios = " ".join(f"{median(SIGNED, p) / median('baseline', p):9.3f}x" for p in phases)
        print(f"  {'signed / baseline':<26} {ratios}")
    print(f"    {UNCOMPRESSED:<9} checkpoint: {step_medians(UNCOMPRESSED, 'checkpoint_steps')}")
    print(f"    {'':<9} restore:    {step_medians(UNCOMPRESSED, 'restore_steps')}")


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("checkpoint_restore.py: needs root (overlay mounts, runc, CRIU)", file=sys.stderr)
        return 2
    workspace = Workspace.create()
    tools = make_tools(args, os.path.join(workspace.arch_host, "arch.toml"))
    try:
        os.makedirs(workspace.arch_host)
        mount_run_tmpfs(workspace)
        write_arch_host(workspace, args.runc)
        if args.signed:
            write_arch_host(workspace, args.runc, SIGNED)
        if args.compare_arch_runc:
            write_arch_host(workspace, args.runc, OTHER)
        if args.uncompressed:
            write_arch_host(workspace, args.runc, UNCOMPRESSED)
        block = os.urandom(4 * MIB)
        workload = build_workload(workspace)
        build_lower(
            workspace, args.busybox, workload, args.rewrite_lower_mib, block, args.lower_copy
        )
        run = Round(tools, workspace, args, block)
        run_rounds(run, args.warmup, 0)
        samples = run_rounds(run, args.rounds, args.warmup)
    except (BenchError, OSError, subprocess.CalledProcessError) as error:
        print(f"checkpoint_restore.py: {error}", file=sys.stderr)
        return 1
    finally:
        cleanup(tools, workspace)
    report(args, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
