"""Helpers for the checkpoint/restore integration tests: the workload image, the containerd
checkpoint/remove/re-create cycle, full rootfs listings, the exit watcher, a tiny tmpfs.

The workload image is the busybox test image plus one layer's worth of extra files: the static
`memhold` program (tests/integration/workloads/memhold.c) and fixture files under /data that the
tests modify, rename and delete (changes to files of the image's layer, seen by overlayfs as
copy-ups and whiteouts).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from workloads.build import build_memhold

from arch.appliance.oci_image import tar_entry

from . import procs
from .arch_host import set_config_value
from .containerd import STACK, ContainerdNode
from .images import BusyboxImage, oci_layout_tar_bytes

WORKLOAD_IMAGE_NAME = "docker.io/arch-test/workload:latest"
MEMHOLD_IN_IMAGE = "/usr/local/bin/memhold"
CRIU = "criu"
NAMESPACE = "default"
EVENT_TIMEOUT = 30.0

# Files of the workload image's own layer (path -> content); directories are implied.
IMAGE_DATA_FILES: dict[str, bytes] = {
    "data/keep.txt": b"kept as it is\n",
    "data/modify.txt": b"original line\n",
    "data/rename-me.txt": b"renamed later\n",
    "data/delete-me.txt": b"deleted later\n",
    "data/chmod-me.txt": b"mode changed later\n",
    "data/dir-delete/a.txt": b"a\n",
    "data/dir-delete/sub/b.txt": b"b\n",
    "data/dir-replace/old.txt": b"replaced by a new directory\n",
    "state/.keep": b"",
}
IMAGE_DATA_SYMLINKS = {"data/keep-link": "keep.txt"}

# Shell commands that change the filesystem in every way a checkpoint must capture. Run by the
# container itself before it starts counting. Busybox `ln`/`mv`/`mkfifo` etc. are applets.
FILESYSTEM_CHANGES = " && ".join(
    [
        "echo appended >> /data/modify.txt",
        "mv /data/rename-me.txt /data/renamed.txt",
        "rm /data/delete-me.txt",
        "chmod 0600 /data/chmod-me.txt",
        "rm -r /data/dir-delete",
        "rm -r /data/dir-replace",
        "mkdir /data/dir-replace",
        "echo new > /data/dir-replace/new.txt",
        "mkdir -p /new/deep/er/est /new/empty-dir",
        "echo hello > /new/deep/er/est/file.txt",
        ": > /new/empty-file",
        "ln -s ../data/keep.txt /new/symlink",
        "ln /new/deep/er/est/file.txt /new/hardlink",
        "dd if=/dev/urandom of=/new/random.bin bs=1024 count=300 2>/dev/null",
        "chmod 0751 /new/deep",
        "rm /bin/vi",
        "echo 'extra:x:1234:' >> /etc/group",
    ]
)

# The busybox counting loop: counter in shell memory, one line per count appended to
# /state/count.log (after a "start" line), the latest value in /state/counter. Exits with the
# code written to /state/exit when that file appears.
COUNT_LOG = "state/count.log"
COUNT_LIVE_FILES = ("state/count.log", "state/counter")

HELD_FILE = "/state/held.log"
TICK_LINE = re.compile(
    r"^tick (?P<counter>\d+) verified (?P<bytes>\d+) seed (?P<seed>\d+) pid (?P<pid>\d+) "
    r"fd (?P<fd>\d+) same_file (?P<same>[01])$"
)


def count_loop(directory: str = "/state") -> str:
    """The shell counting loop, writing its files into `directory`."""
    return (
        f"echo start >> {directory}/count.log; i=0; while true; do "
        f"i=$((i+1)); echo $i > {directory}/counter; echo $i >> {directory}/count.log; "
        f"if [ -f {directory}/exit ]; then exit $(cat {directory}/exit); fi; "
        "sleep 0.05; done"
    )


def shell_workload(prepare: str = FILESYSTEM_CHANGES, directory: str = "/state") -> list[str]:
    """`sh -c` running `prepare` (e.g. the filesystem changes), then the counting loop."""
    loop = count_loop(directory)
    return ["sh", "-c", f"{prepare} && {loop}" if prepare else loop]


def memhold_workload(
    seed: int, mib: int, *, prepare: str = "", path: str = HELD_FILE, interval_ms: int = 100
) -> list[str]:
    """memhold (as the container's init, through `exec` when there is a `prepare` step)."""
    memhold = [MEMHOLD_IN_IMAGE, str(seed), str(mib), path, str(interval_ms)]
    return ["sh", "-c", f"{prepare} && exec {' '.join(memhold)}"] if prepare else memhold


# -- the workload image ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadImage:
    oci_archive: Path
    name: str = WORKLOAD_IMAGE_NAME


def build_workload_image(base: BusyboxImage, memhold: Path, work_dir: Path) -> WorkloadImage:
    """The busybox rootfs plus memhold and the /data fixture files, as an OCI archive."""
    buffer = io.BytesIO(base.rootfs_tar.read_bytes())
    with tarfile.open(fileobj=buffer, mode="a", format=tarfile.PAX_FORMAT) as archive:
        for directory in ("usr/local", "usr/local/bin", *_directories_of(IMAGE_DATA_FILES)):
            archive.addfile(tar_entry(directory, tarfile.DIRTYPE, 0o755))
        _add_file(archive, MEMHOLD_IN_IMAGE.lstrip("/"), memhold.read_bytes(), 0o755)
        for name, content in IMAGE_DATA_FILES.items():
            _add_file(archive, name, content, 0o644)
        for name, target in IMAGE_DATA_SYMLINKS.items():
            link = tar_entry(name, tarfile.SYMTYPE, 0o777)
            link.linkname = target
            archive.addfile(link)
    work_dir.mkdir(parents=True, exist_ok=True)
    oci_archive = work_dir / "workload-oci.tar"
    oci_archive.write_bytes(oci_layout_tar_bytes(buffer.getvalue(), WORKLOAD_IMAGE_NAME))
    return WorkloadImage(oci_archive)


_WORKLOAD_IMAGE_KEY = pytest.StashKey[WorkloadImage]()


def session_workload_image(
    config: pytest.Config, base: BusyboxImage, tmp_path_factory: pytest.TempPathFactory
) -> WorkloadImage:
    """The workload image (memhold compiled once), shared by every test module of the session.

    Raises workloads.build.BuildUnavailable when this machine cannot compile it.
    """
    cached = config.stash.get(_WORKLOAD_IMAGE_KEY, None)
    if cached is None:
        work_dir = tmp_path_factory.mktemp("workload")
        cached = build_workload_image(base, build_memhold(work_dir), work_dir)
        config.stash[_WORKLOAD_IMAGE_KEY] = cached
    return cached


def _directories_of(files: Mapping[str, bytes]) -> list[str]:
    directories: set[str] = set()
    for name in files:
        parent = os.path.dirname(name)
        while parent:
            directories.add(parent)
            parent = os.path.dirname(parent)
    return sorted(directories)


def _add_file(archive: tarfile.TarFile, name: str, content: bytes, mode: int) -> None:
    archive.addfile(tar_entry(name, tarfile.REGTYPE, mode, len(content)), io.BytesIO(content))


# -- host prerequisites ----------------------------------------------------------------------


def criu_check() -> str | None:
    """None when `criu check` passes on this kernel, else why not."""
    try:
        completed = procs.run([CRIU, "check"], check=False, timeout=60)
    except FileNotFoundError:
        return "criu is not installed"
    if completed.returncode != 0:
        return f"`criu check` fails here: {(completed.stdout + completed.stderr).strip()[-300:]}"
    return None


# -- driving containers through containerd ---------------------------------------------------


def runc_state(
    real_runc: Path, node: ContainerdNode, container_id: str, namespace: str = NAMESPACE
) -> dict[str, object]:
    """The container's state from the real runc under the node's runc root (no recorder)."""
    completed = procs.run(
        [str(real_runc), "--root", str(node.runc_root / namespace), "state", container_id]
    )
    state: dict[str, object] = json.loads(completed.stdout)
    return state


def rootfs_of(
    real_runc: Path, node: ContainerdNode, container_id: str, namespace: str = NAMESPACE
) -> Path:
    return Path(str(runc_state(real_runc, node, container_id, namespace)["rootfs"]))


def checkpoint(
    node: ContainerdNode, container_id: str, namespace: str = NAMESPACE, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`ctr task checkpoint` (containerd: pause, checkpoint --leave-running, resume)."""
    return node.ctr("task", "checkpoint", container_id, namespace=namespace, check=check)


def remove_container(node: ContainerdNode, container_id: str, namespace: str = NAMESPACE) -> None:
    """After the task stopped: `ctr task delete`, then `ctr containers delete` (snapshot too)."""
    node.wait_for_status(container_id, "STOPPED", namespace=namespace)
    node.ctr("task", "delete", container_id, namespace=namespace)
    node.ctr("containers", "delete", container_id, namespace=namespace)


def wait_for(predicate: object, what: str, timeout: float = EVENT_TIMEOUT) -> None:
    assert callable(predicate)
    assert procs.wait_until(predicate, timeout, interval=0.05), f"timed out waiting for {what}"


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def count_log(rootfs: Path) -> list[str]:
    """The shell workload's log lines ("start", then 1, 2, ...)."""
    return read_text(rootfs / COUNT_LOG).splitlines()


def counted(lines: list[str]) -> int:
    """The last count in a count log (0 before the first)."""
    numbers = [int(line) for line in lines if line.isdigit()]
    return numbers[-1] if numbers else 0


@dataclass(frozen=True)
class Tick:
    counter: int
    verified: int
    seed: int
    pid: int
    fd: int
    same_file: bool


def ticks(text: str) -> list[Tick]:
    found = []
    for line in text.splitlines():
        match = TICK_LINE.match(line)
        if match:
            found.append(
                Tick(
                    counter=int(match["counter"]),
                    verified=int(match["bytes"]),
                    seed=int(match["seed"]),
                    pid=int(match["pid"]),
                    fd=int(match["fd"]),
                    same_file=match["same"] == "1",
                )
            )
    return found


def held_ticks(rootfs: Path) -> list[Tick]:
    return ticks(read_text(rootfs / HELD_FILE.lstrip("/")))


def held_log_problems(text: str, seed: int, mib: int) -> list[str]:
    """What is wrong with memhold's log for one uninterrupted run: exactly one start line,
    ticks counting 1, 2, 3, ... each with the whole region verified, the same pid and fd,
    and the held descriptor still naming the file."""
    problems = []
    lines = text.splitlines()
    if lines[:1] != [f"start seed {seed} bytes {mib << 20}"] or text.count("start ") != 1:
        problems.append(f"not exactly one start line: {[x for x in lines if 'start' in x]}")
    problems += [f"not a tick: {line!r}" for line in lines[1:] if not TICK_LINE.match(line)]
    found = ticks(text)
    counters = [tick.counter for tick in found]
    if counters != list(range(1, len(found) + 1)):
        problems.append(f"counters not consecutive from 1: {counters}")
    if {(tick.verified, tick.seed) for tick in found} != {(mib << 20, seed)}:
        problems.append("a tick did not verify the whole region of this seed")
    if len({(tick.pid, tick.fd) for tick in found}) != 1:
        problems.append(f"pid/fd changed: {sorted({(tick.pid, tick.fd) for tick in found})}")
    if not all(tick.same_file for tick in found):
        problems.append("the held descriptor no longer names the file")
    return problems


# -- listings --------------------------------------------------------------------------------

Entry = tuple[object, ...]


def tree_listing(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, Entry]:
    """Every entry below `root` (relative path -> kind, mode, owner, size, content digest or
    link target, xattrs, hard-link group), without following symlinks. `exclude` lists
    relative paths whose content changes on its own (still listed, without size/content)."""
    listing: dict[str, Entry] = {}
    inodes: dict[tuple[int, int], str] = {}
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        for name in sorted(subdirectories + files):
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            listing[relative] = _describe(path, relative in exclude, inodes, relative)
    return listing


def _describe(path: str, live: bool, inodes: dict[tuple[int, int], str], relative: str) -> Entry:
    info = os.lstat(path)
    mode = stat.S_IMODE(info.st_mode)
    owner = (info.st_uid, info.st_gid)
    xattrs = tuple(sorted(os.listxattr(path, follow_symlinks=False)))
    if stat.S_ISLNK(info.st_mode):
        return ("symlink", owner, os.readlink(path))
    if stat.S_ISDIR(info.st_mode):
        return ("dir", mode, owner, xattrs)
    if not stat.S_ISREG(info.st_mode):
        return ("special", stat.S_IFMT(info.st_mode), mode, owner)
    if live:
        return ("file", mode, owner, "<live>")
    # Hard links: the first path of an inode names the group of all its links.
    group = inodes.setdefault((info.st_dev, info.st_ino), relative) if info.st_nlink > 1 else ""
    return ("file", mode, owner, info.st_size, _sha256(path), xattrs, int(info.st_mtime), group)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def listing_differences(before: dict[str, Entry], after: dict[str, Entry]) -> list[str]:
    """Readable differences between two listings (empty when they are equal)."""
    problems = [f"missing after: {path} {before[path]}" for path in sorted(before.keys() - after)]
    problems += [f"new after: {path} {after[path]}" for path in sorted(after.keys() - before)]
    problems += [
        f"changed: {path}: {before[path]} -> {after[path]}"
        for path in sorted(before.keys() & after.keys())
        if before[path] != after[path]
    ]
    return problems


def image_permission_problems(image_dir: Path) -> list[str]:
    """Entries of an image (and its namespace directory) that are not root-owned 0700
    directories / 0600 files."""
    problems = []
    for path in [image_dir.parent, image_dir, *sorted(image_dir.rglob("*"))]:
        info = path.lstat()
        expected = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            problems.append(f"{path}: neither a directory nor a regular file")
        elif stat.S_IMODE(info.st_mode) != expected or info.st_uid != 0:
            problems.append(f"{path}: mode {stat.S_IMODE(info.st_mode):o} uid {info.st_uid}")
    return problems


# -- host configuration ----------------------------------------------------------------------


def allow_roots(node: ContainerdNode, *roots: Path) -> None:
    """Set the node's allowed_roots to its checkpoint root plus `roots` (arch.toml is read on
    every arch-runc call, so this takes effect at once)."""
    text = node.arch.config_file.read_text()
    assert "allowed_roots" not in text, "allowed_roots already set"
    listed = [str(node.arch.checkpoint_root), *(str(root) for root in roots)]
    node.arch.config_file.write_text(text + f"allowed_roots = {json.dumps(listed)}\n")


def store_compressed(node: ContainerdNode) -> None:
    """Make the node compress its images (`compression = "zstd"`, off by default)."""
    set_config_value(node.arch.config_file, "compression", '"zstd"')


def store_uncompressed(node: ContainerdNode) -> None:
    """Make the node write images as ARCH did before compression (`compression = "off"`): for
    tests that damage a stored file by its uncompressed name (rootfs-diff.tar, pages-*.img).
    Compressed images have their own tests (test_compressed_images.py)."""
    set_config_value(node.arch.config_file, "compression", '"off"')


def arch_log(node: ContainerdNode) -> str:
    return read_text(node.arch.log_file)


# -- tiny tmpfs ------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs_mounted(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "1m") at `mount_point`, unmounted afterwards, pass or fail."""
    mount_point.mkdir(parents=True, exist_ok=True)
    procs.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)])
    try:
        yield mount_point
    finally:
        leftover = procs.unmount_all_under(mount_point)
        assert not leftover, f"tmpfs still mounted: {leftover}"


# -- the exit watcher (archctl watch-exits) --------------------------------------------------

_CTR_PID = re.compile(r"watching containerd events at \S+ \(ctr pid (\d+)\)")


@dataclass
class ExitWatcher:
    """`archctl watch-exits` for one node (run from this interpreter's arch package)."""

    process: subprocess.Popen[bytes]
    node: ContainerdNode
    output_file: Path

    def describe(self) -> str:
        return (
            f"watcher exit status {self.process.poll()}\n--- watcher output ---\n"
            f"{procs.tail(self.output_file)}"
        )

    def ctr_pids(self) -> list[int]:
        return [int(pid) for pid in _CTR_PID.findall(arch_log(self.node))]

    def wait_until_subscribed(self, timeout: float = EVENT_TIMEOUT) -> None:
        """Label the namespace until the watcher's debug log shows the update event."""
        seen_before = arch_log(self.node).count("event /namespaces/update")
        probe = iter(range(1_000_000))

        def probe_seen() -> bool:
            assert self.process.poll() is None, self.describe()
            self.node.ctr("namespaces", "label", NAMESPACE, f"arch-probe={next(probe)}")
            return procs.wait_until(
                lambda: arch_log(self.node).count("event /namespaces/update") > seen_before,
                0.5,
                0.05,
            )

        assert procs.wait_until(probe_seen, timeout, interval=0), self.describe()

    def stop(self) -> None:
        procs.stop_process(self.process)
        for pid in self.ctr_pids():
            procs.kill_pid(pid)
        assert self.process.returncode == 0, self.describe()


def start_exit_watcher(node: ContainerdNode, output_file: Path) -> ExitWatcher:
    environment = {**os.environ, **node.arch.environment}
    environment.pop("CONTAINERD_ADDRESS", None)
    # The watcher follows the `ctr events` of the stack under test (ctr 2.x with containerd 2.x).
    environment["PATH"] = STACK.daemon_path(environment.get("PATH", os.defpath))
    with output_file.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "arch.cli.main", "--address", node.address, "watch-exits"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    return ExitWatcher(process, node, output_file)


@contextlib.contextmanager
def exit_watcher(node: ContainerdNode, output_file: Path) -> Iterator[ExitWatcher]:
    watcher = start_exit_watcher(node, output_file)
    try:
        watcher.wait_until_subscribed()
        yield watcher
    finally:
        watcher.stop()


@contextlib.contextmanager
def watched(node: ContainerdNode, output_file: Path) -> Iterator[ExitWatcher]:
    """An exit watcher for `node` while the caller runs; at the end, the node's containers are
    removed while it still watches (a delete of an ARCH container waits for the exit status),
    then the watcher stops."""
    with exit_watcher(node, output_file) as watcher:
        try:
            yield watcher
        finally:
            problems = node.remove_all_containers()
        assert not problems, problems
