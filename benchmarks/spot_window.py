#!/usr/bin/env python3
"""A Spot notice for N jobs with realistic memory, on checkpoint storage capped at 125 MB/s.

What the notice leaves is two minutes and one volume's bandwidth: a gp3 volume's baseline is
125 MB/s ("Amazon EBS volume types", docs.aws.amazon.com/ebs/latest/userguide/
general-purpose.html: "a consistent baseline throughput performance of 125 MiB/s"), and 200
jobs x 64 MiB of memory need 107 s at that rate before any filesystem data.

The storage: an ext4 file system on a loop device whose writes the root blkio cgroup (cgroup v1
here) throttles to --cap-mbps MB/s; cgroup v1 charges buffered writeback to the root group, so
the limit holds for everything written to the device (checked: the device's own write counter
over the run is printed). The jobs: N containers of `memmix` (benchmarks/workloads/memmix.c),
each holding --mib MiB of memory filled from one file written here, the MIX:
- a quarter a real CPython heap (this interpreter's own memory after building 200k small dicts
  of str/int/float/list: what a Python worker's heap holds),
- a quarter text (files from /usr/share/doc: logs, configuration, documents),
- a quarter zero pages (written, so present: buffers allocated and cleared),
- a quarter random bytes (encrypted or already compressed data: incompressible).
The notice comes from a real IMDSv2 server on 127.0.0.1 (tests/imds_server.py) that
`archctl spot-watch` polls; the figures: notice -> last image published, bytes written to the
device, and the fraction of the cap used meanwhile; one arm per --arms entry (arch.toml's
compression: zstd, off), ratios between them in the same run.

    sudo /opt/arch/venv/bin/python benchmarks/spot_window.py [--count 200] [--mib 64]

Needs root, ctr, containerd, runc, a working CRIU, a static busybox, gcc (static libc), losetup
and mkfs.ext4.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from checkpoint_all import NAMESPACE, Bench  # noqa: E402

from arch.appliance.oci_image import (  # noqa: E402
    oci_layout_tar_bytes,
    rootfs_tar_bytes,
    tar_entry,
)

IMAGE = "localhost/arch-bench-spot-window:1"
MIX_IN_IMAGE = "/mix.bin"
READY = "/ready"
START_WORKERS = 4
BLKIO = "/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device"
MiB = 1 << 20


def python_heap(size: int) -> bytes:
    """`size` bytes of this interpreter's own heap after building objects a worker would hold."""
    held = [{"id": i, "name": f"user-{i}", "score": i * 1.5, "tags": ["a", str(i)]}
            for i in range(200_000)]  # fmt: skip
    data = bytearray()
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as memory:
        for line in maps:
            fields = line.split()
            if fields[1] != "rw-p" or (len(fields) > 5 and fields[5] != "[heap]"):
                continue
            start, end = (int(value, 16) for value in fields[0].split("-"))
            try:
                memory.seek(start)
                data += memory.read(min(end - start, size - len(data)))
            except OSError:
                continue
            if len(data) >= size:
                break
    del held
    return bytes(data[:size]).ljust(size, b"\0")


def text(size: int) -> bytes:
    data = bytearray()
    for root, _, files in os.walk("/usr/share/doc"):
        for name in sorted(files):
            if name.endswith((".gz", ".xz", ".bz2")):
                continue
            try:
                data += Path(root, name).read_bytes()
            except OSError:
                continue
            if len(data) >= size:
                return bytes(data[:size])
    return bytes(data).ljust(size, b" ")


def mix(total: int) -> bytes:
    quarter = total // 4
    return python_heap(quarter) + text(quarter) + bytes(quarter) + os.urandom(total - 3 * quarter)


def build_image(bench: Bench, busybox: Path, mib: int) -> None:
    memmix = bench.base / "memmix"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(memmix),
                    str(REPO / "benchmarks" / "workloads" / "memmix.c")], check=True)  # fmt: skip
    layer = io.BytesIO(rootfs_tar_bytes(busybox, "arch-bench"))
    with tarfile.open(fileobj=layer, mode="a") as archive:
        for name, data in (("bin/memmix", memmix.read_bytes()), ("mix.bin", mix(mib * MiB))):
            archive.addfile(tar_entry(name, tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
    archive_path = bench.base / "spot-image.tar"
    archive_path.write_bytes(oci_layout_tar_bytes(layer.getvalue(), IMAGE, "spot_window.py"))
    bench.ctr("images", "import", str(archive_path))


class CappedStorage:
    """An ext4 file system on a loop device whose writes are capped at `mbps` MB/s."""

    def __init__(self, base: Path, size: int, mbps: float) -> None:
        self.backing = base / "capped.img"
        self.mount = base / "capped"
        self.mbps = mbps
        with open(self.backing, "wb") as backing:
            backing.truncate(size)
        self.device = subprocess.run(["losetup", "--find", "--show", str(self.backing)],
                                     check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        self.device], check=True)  # fmt: skip
        self.mount.mkdir()
        subprocess.run(["mount", self.device, str(self.mount)], check=True)
        rdev = os.stat(self.device).st_rdev
        self.numbers = f"{os.major(rdev)}:{os.minor(rdev)}"
        Path(BLKIO).write_text(f"{self.numbers} {int(mbps * 1e6)}\n")

    def written_bytes(self) -> int:
        """Bytes the device has written (its stat's sectors written, 512 bytes each)."""
        fields = Path(f"/sys/block/{os.path.basename(self.device)}/stat").read_text().split()
        return int(fields[6]) * 512

    def settle(self) -> None:
        subprocess.run(["sync", "-f", str(self.mount)], check=True)

    def close(self) -> None:
        Path(BLKIO).write_text(f"{self.numbers} 0\n")
        subprocess.run(["umount", str(self.mount)], check=False)
        subprocess.run(["losetup", "-d", self.device], check=False)
        self.backing.unlink(missing_ok=True)


def start_jobs(bench: Bench, count: int, prefix: str) -> list[str]:
    ids = [f"{prefix}-{index:03d}" for index in range(count)]

    def run(container_id: str) -> None:
        bench.ctr("run", "--detach", "--runc-binary", bench.arch_runc, "--runc-root",
                  str(bench.runc_root), "--env", "ARCH_ENABLE=1", IMAGE, container_id,
                  "/bin/memmix", MIX_IN_IMAGE, READY)  # fmt: skip

    with ThreadPoolExecutor(START_WORKERS) as pool:
        list(pool.map(run, ids))
    task_dir = bench.base / "state" / "io.containerd.runtime.v2.task" / NAMESPACE
    deadline = time.monotonic() + 600
    while not all((task_dir / i / "rootfs" / READY.lstrip("/")).exists() for i in ids):
        if time.monotonic() > deadline:
            raise RuntimeError("the jobs did not fill their memory within 600 s")
        time.sleep(0.5)
    return ids


def image_sizes(bench: Bench, ids: list[str]) -> tuple[int, int]:
    """Bytes stored and bytes of memory pages + tar before compression, over all images."""
    stored = content = 0
    for image in bench.images(ids):
        document = json.loads((image / "metadata.json").read_text())
        stored += sum(path.stat().st_size for path in image.iterdir())
        content += sum(entry.get("content_size", entry["size"])
                       for entry in document["process"]["criu_files"])  # fmt: skip
        filesystem = document["filesystem"]
        content += filesystem.get("content_size") or filesystem.get("size") or 0
    return stored, content


def run_arm(bench: Bench, storage: CappedStorage, arm: str, count: int) -> dict[str, float]:
    config = bench.config_file.read_text().replace('compression = "off"\n', "")
    bench.config_file.write_text(config + ('compression = "off"\n' if arm == "off" else ""))
    ids = start_jobs(bench, count, f"{arm}-job")
    storage.settle()
    before = storage.written_bytes()
    load = os.getloadavg()[0]
    notice, own = bench.notice_to_last_image(ids)
    written = storage.written_bytes() - before  # published means synced: on the device
    stored, content = image_sizes(bench, ids)
    bench.remove_all()
    storage.settle()
    return {"notice": notice, "own": own, "written": written, "stored": stored,
            "content": content, "load": load}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--cap-mbps", type=float, default=125.0)
    parser.add_argument("--arms", default="zstd,off")
    parser.add_argument("--arch-runc", default="/usr/local/bin/arch-runc")
    parser.add_argument("--busybox", default=shutil.which("busybox") or "/bin/busybox")
    args = parser.parse_args()
    needed = args.count * args.mib * MiB
    available = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]) * 1024
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} CPUs; "
          f"{args.count} jobs x {args.mib} MiB = {needed / 1e9:.1f} GB of memory, "
          f"{available / 1e9:.1f} GB available")
    if needed * 1.3 > available:
        print("not enough memory for the jobs and the page cache: lower --count or --mib")
        return 1
    base = Path(tempfile.mkdtemp(prefix="arch-bench-spot-", dir="/var/tmp"))
    bench = Bench(base, args.arch_runc, Path(args.busybox))
    storage = CappedStorage(base, int(needed * 1.3) + (2 << 30), args.cap_mbps)
    bench.checkpoint_root = storage.mount / "checkpoint"
    results: dict[str, dict[str, float]] = {}
    try:
        bench.start()
        build_image(bench, Path(args.busybox), args.mib)
        for arm in args.arms.split(","):
            results[arm] = run_arm(bench, storage, arm, args.count)
            print(f"  arm {arm}: {results[arm]}", flush=True)
    except BaseException:
        log = base / "arch.log"
        if log.exists():
            print("arch.log (last lines):", *log.read_text().splitlines()[-15:], sep="\n  ")
        raise
    finally:
        bench.stop()
        storage.close()
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"Spot notice -> last of {args.count} images ({args.mib} MiB mix each) on storage "
          f"capped at {args.cap_mbps:g} MB/s")
    print(f"  {'arm':>5} {'notice->last':>13} {'written':>10} {'stored':>10} {'before':>10} "
          f"{'ratio':>6} {'cap used':>9} {'load':>5}")
    for arm, r in results.items():
        used = r["written"] / (args.cap_mbps * 1e6 * r["notice"])
        print(f"  {arm:>5} {r['notice']:12.1f}s {r['written'] / 1e9:9.2f}G "
              f"{r['stored'] / 1e9:9.2f}G {r['content'] / 1e9:9.2f}G "
              f"{r['stored'] / r['content']:6.2f} {used:8.0%} {r['load']:5.1f}")
    if "zstd" in results and "off" in results:
        zstd, off = results["zstd"], results["off"]
        print(f"  zstd / off: notice->last {zstd['notice'] / off['notice']:.2f}x, "
              f"bytes written {zstd['written'] / off['written']:.2f}x")
    physical = args.count * args.mib * MiB / (args.cap_mbps * 1e6)
    print(f"  the uncompressed memory alone needs {physical:.0f} s at the cap")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
