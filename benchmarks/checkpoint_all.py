#!/usr/bin/env python3
"""`archctl checkpoint --all` against plain containerd + runc with the same parallelism.

In one run, on a private containerd (own socket, root, state; its own arch.toml with a scratch
checkpoint root and its own signing key, so nothing touches the host's containerd or
/checkpoint), for each count N (default 10, 50, 200) of small running containers (busybox shell
loops), each way on freshly started containers:
- `archctl checkpoint --all` of N ARCH containers (bounded parallel: P at once),
- the same N containers without ARCH (containerd's own runc), checkpointed P at a time with
  `ctr task checkpoint --exit --image-path <scratch> ID` (the containerd operation archctl
  asks for, minus ARCH),
and the ratio; with --one-by-one also `ctr task checkpoint` of ARCH containers one at a time,
whose per-container times give the breakdown: CRIU's dump (the last timestamp of each image's
dump.log), the Python start-up of arch-runc (interpreter + imports of the checkpoint path, timed
separately), and the rest (containerd and its shim, runc's own calls, ARCH's filesystem capture
and publication). Then the Spot path for the largest N: a real IMDSv2 server on 127.0.0.1
(tests/imds_server.py) turns on a notice while `archctl spot-watch` polls it; the time from the
notice to the last image published (metadata.json written) is reported. The load average is
printed with each N.

    sudo /opt/arch/venv/bin/python benchmarks/checkpoint_all.py [--counts 10,50,200] [--one-by-one]

Run it from the repository root with the Python that has `arch` installed. Needs root, ctr,
containerd, runc, a working CRIU (as arch.toml names it) and a static busybox.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arch.appliance.oci_image import oci_layout_tar_bytes, rootfs_tar_bytes  # noqa: E402
from arch.config import load_config  # noqa: E402
from tests.imds_server import ImdsServer  # noqa: E402

IMAGE = "localhost/arch-bench-checkpoint-all:1"
NAMESPACE = "bench"
WORKLOAD = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /count; sleep 1; done"]
START_WORKERS = 4
CONTAINERD_CONFIG = """version = 2
root = {root}
state = {state}
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = {address}
[ttrpc]
  address = {ttrpc}
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"""
_CRIU_TIME = re.compile(r"^\((\d+\.\d+)\)")


class Bench:
    def __init__(self, base: Path, arch_runc: str, busybox: Path) -> None:
        self.base = base
        self.arch_runc = arch_runc
        self.busybox = busybox
        self.address = str(base / "containerd.sock")
        self.runc_root = base / "runc"
        self.checkpoint_root = base / "checkpoint"
        self.state_dir = base / "arch-state"
        self.config_file = base / "arch.toml"
        self.containerd: subprocess.Popen[bytes] | None = None

    # -- set-up ----------------------------------------------------------------------------

    def start(self) -> None:
        host = load_config("/etc/arch/arch.toml")
        lines = [f"runc = {json.dumps(host.runc or shutil.which('runc') or 'runc')}"]
        if host.criu:
            lines.append(f"criu = {json.dumps(host.criu)}")
        lines += [
            f"checkpoint_root = {json.dumps(str(self.checkpoint_root))}",
            f"state_dir = {json.dumps(str(self.state_dir))}",
            f"log_file = {json.dumps(str(self.base / 'arch.log'))}",
            f"metrics_file = {json.dumps(str(self.base / 'arch.prom'))}",
            # Images are signed, as by default on an appliance (its own key here).
            f"image_key_file = {json.dumps(str(self.key_file()))}",
        ]
        self.config_file.write_text("\n".join(lines) + "\n")
        self.checkpoint_root.mkdir(mode=0o700)
        paths = {
            "root": self.base / "root",
            "state": self.base / "state",
            "address": self.address,
            "ttrpc": self.address + ".ttrpc",
            "opt": self.base / "opt",
        }
        config = self.base / "containerd.toml"
        config.write_text(
            CONTAINERD_CONFIG.format(**{k: json.dumps(str(v)) for k, v in paths.items()})
        )
        environment = {**os.environ, "ARCH_CONFIG": str(self.config_file)}
        with open(self.base / "containerd.log", "ab") as log:
            self.containerd = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=environment, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if time.monotonic() > deadline or self.containerd.poll() is not None:
                raise RuntimeError("the private containerd did not start")
            time.sleep(0.2)
        layer = rootfs_tar_bytes(self.busybox, "arch-bench")
        archive = self.base / "image.tar"
        archive.write_bytes(oci_layout_tar_bytes(layer, IMAGE, "benchmarks/checkpoint_all.py"))
        self.ctr("images", "import", str(archive))

    def stop(self) -> None:
        if self.containerd is not None and self.containerd.poll() is None:
            self.remove_all()
            self.containerd.terminate()
            try:
                self.containerd.wait(30)
            except subprocess.TimeoutExpired:
                self.containerd.kill()
                self.containerd.wait()
        for pid in pids_with_argument(self.address):  # our shims, by the socket they name
            os.kill(pid, signal.SIGKILL)
        for mount in reversed(mounts_under(self.base)):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def key_file(self) -> Path:
        path = self.base / "image.key"
        path.write_text(os.urandom(32).hex() + "\n")
        path.chmod(0o600)
        return path

    # -- containers ------------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", self.address, "--namespace", NAMESPACE, *args]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=600)

    def start_containers(self, count: int, prefix: str, plain: bool = False) -> list[str]:
        """`count` running containers; `plain`: containerd's own runc, no ARCH at all."""
        ids = [f"{prefix}-{index:03d}" for index in range(count)]

        def run(container_id: str) -> None:
            if plain:
                self.ctr("run", "--detach", IMAGE, container_id, *WORKLOAD)
                return
            self.ctr("run", "--detach", "--runc-binary", self.arch_runc, "--runc-root",
                     str(self.runc_root), "--env", "ARCH_ENABLE=1", IMAGE, container_id,
                     *WORKLOAD)  # fmt: skip

        with ThreadPoolExecutor(START_WORKERS) as pool:
            list(pool.map(run, ids))
        return ids

    def remove_all(self) -> None:
        tasks = self.ctr("task", "ls", "--quiet", check=False).stdout.split()
        for container_id in tasks:
            self.ctr("task", "kill", "--signal", "SIGKILL", container_id, check=False)
        for container_id in tasks:
            for _ in range(50):
                if self.ctr("task", "delete", container_id, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        for container_id in self.ctr("containers", "ls", "--quiet", check=False).stdout.split():
            self.ctr("containers", "delete", container_id, check=False)
        shutil.rmtree(self.checkpoint_root / NAMESPACE, ignore_errors=True)

    # -- the two ways ----------------------------------------------------------------------

    def one_by_one(self, ids: list[str]) -> tuple[float, list[float]]:
        scratch = self.base / "scratch"
        each = []
        started = time.monotonic()
        for container_id in ids:
            scratch.mkdir(exist_ok=True)
            began = time.monotonic()
            self.ctr("task", "checkpoint", "--exit", "--image-path", str(scratch), container_id)
            each.append(time.monotonic() - began)
            shutil.rmtree(scratch)
        return time.monotonic() - started, each

    def plain_parallel(self, ids: list[str], parallel: int) -> float:
        """Plain containerd + runc, `parallel` at a time: `ctr task checkpoint --exit
        --image-path` (what checkpoint --all asks containerd for, minus ARCH)."""
        scratch = self.base / "plain-images"
        scratch.mkdir(exist_ok=True)

        def checkpoint(container_id: str) -> None:
            self.ctr("task", "checkpoint", "--exit", "--image-path",
                     str(scratch / container_id), container_id)  # fmt: skip

        started = time.monotonic()
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(checkpoint, ids))
        seconds = time.monotonic() - started
        shutil.rmtree(scratch)
        return seconds

    def archctl_all(self) -> tuple[float, dict[str, object]]:
        started = time.monotonic()
        completed = self.archctl("checkpoint", "--all", "--json")
        seconds = time.monotonic() - started
        document: dict[str, object] = json.loads(completed.stdout)
        if completed.returncode != 0:
            raise RuntimeError(f"checkpoint --all failed: {completed.stdout[-2000:]}")
        return seconds, document

    def archctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "ARCH_CONFIG": str(self.config_file)}
        argv = [sys.executable, "-m", "arch.cli.main", "--address", self.address, *args]
        return subprocess.run(argv, capture_output=True, text=True, env=environment,
                              check=check, timeout=900)  # fmt: skip

    def images(self, ids: list[str]) -> list[Path]:
        return [self.checkpoint_root / NAMESPACE / container_id for container_id in ids]

    def notice_to_last_image(self, ids: list[str]) -> tuple[float, float]:
        """Seconds from the notice to the last metadata.json; and checkpoint --all's own."""
        imds = ImdsServer().start()
        environment = {**os.environ, "ARCH_CONFIG": str(self.config_file)}
        argv = [sys.executable, "-m", "arch.cli.main", "--address", self.address,
                "spot-watch", "--endpoint", imds.endpoint]  # fmt: skip
        watcher = subprocess.Popen(
            argv, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            while len(imds.gets) < 2:  # polling
                time.sleep(0.1)
            noticed = time.time()
            imds.mode = "notice"
            marker = self.state_dir / ".spot-notice"
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if marker.exists() and json.loads(marker.read_text()).get("outcome"):
                    break
                time.sleep(0.2)
            outcome = json.loads(marker.read_text())["outcome"]
            if not outcome.get("ok"):
                raise RuntimeError(f"the notice run failed: {outcome}")
            published = [(image / "metadata.json").stat().st_mtime for image in self.images(ids)]
            return max(published) - noticed, float(outcome["seconds"])
        finally:
            watcher.send_signal(signal.SIGTERM)
            watcher.communicate(timeout=60)
            imds.stop()
            marker = self.state_dir / ".spot-notice"
            if marker.exists():
                marker.unlink()


def criu_seconds(image: Path) -> float | None:
    """CRIU's own dump time: the relative timestamp of dump.log's last line."""
    try:
        lines = (image / "dump.log").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        found = _CRIU_TIME.match(line)
        if found:
            return float(found.group(1))
    return None


def python_start_seconds(rounds: int = 10) -> float:
    """The interpreter plus the imports of arch-runc's checkpoint path."""
    code = "import arch.shim.main, arch.shim.lifecycle, arch.checkpoint.checkpoint_job"
    samples = []
    for _ in range(rounds):
        began = time.monotonic()
        subprocess.run([sys.executable, "-c", code], check=True)
        samples.append(time.monotonic() - began)
    return statistics.median(samples)


def pids_with_argument(argument: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if argument.encode() in cmdline.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def mounts_under(directory: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [point for point in points if point.startswith(str(directory) + "/")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="10,50,200")
    parser.add_argument("--arch-runc", default="/usr/local/bin/arch-runc")
    parser.add_argument("--busybox", default=shutil.which("busybox") or "/bin/busybox")
    parser.add_argument("--no-notice", action="store_true", help="skip the Spot notice run")
    parser.add_argument("--one-by-one", action="store_true",
                        help="also checkpoint one by one with ctr (the per-container breakdown)")
    args = parser.parse_args()
    counts = [int(count) for count in args.counts.split(",")]
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} CPUs")
    bench = Bench(Path(tempfile.mkdtemp(prefix="arch-bench-all-", dir="/tmp")), args.arch_runc,
                  Path(args.busybox))  # fmt: skip
    rows = []
    breakdown: list[tuple[float, float | None]] = []
    try:
        bench.start()
        for count in counts:
            serial = None
            if args.one_by_one:
                ids = bench.start_containers(count, f"serial{count}")
                serial, each = bench.one_by_one(ids)
                breakdown += [(seconds, criu_seconds(image)) for seconds, image in
                              zip(each, bench.images(ids))]  # fmt: skip
                bench.remove_all()
            ids = bench.start_containers(count, f"all{count}")
            load = os.getloadavg()[0]
            parallel, document = bench.archctl_all()
            summary = document["summary"]
            bench.remove_all()
            workers = int(document["parallel"])
            ids = bench.start_containers(count, f"plain{count}", plain=True)
            plain = bench.plain_parallel(ids, workers)
            bench.remove_all()
            rows.append((count, serial, parallel, plain, workers, load))
            print(
                f"  N={count:<4} checkpoint --all {parallel:7.2f}s ({summary}, {workers} at once)"
                f"   plain containerd+runc {plain:7.2f}s   ratio {parallel / plain:4.2f}x"
                f"   load {load:.1f}",
                flush=True,
            )
        notice = None
        if not args.no_notice:
            ids = bench.start_containers(counts[-1], "spot")
            notice = bench.notice_to_last_image(ids)
            bench.remove_all()
    finally:
        bench.stop()
    print()
    print("checkpoint of N small running containers (busybox loops), wall time")
    print(f"  {'N':>4}  {'checkpoint --all':>17}  {'plain, same parallel':>21}  {'ratio':>6}"
          f"  {'one by one (ctr)':>17}  load")
    for count, serial, parallel, plain, workers, load in rows:
        one = f"{serial:16.2f}s" if serial is not None else f"{'-':>17}"
        print(f"  {count:>4}  {parallel:16.2f}s  {plain:20.2f}s  {parallel / plain:5.2f}x"
              f"  {one}  {load:.1f}  ({workers} at once)")
    if breakdown:
        python_start = python_start_seconds()
        per_container = statistics.median(seconds for seconds, _ in breakdown)
        criu = statistics.median(criu for _, criu in breakdown if criu is not None)
        print()
        print(f"where one container's checkpoint goes (one by one, median of {len(breakdown)}):")
        print(f"  ctr task checkpoint, end to end  {per_container * 1000:7.0f} ms")
        print(f"  CRIU dump (dump.log)             {criu * 1000:7.0f} ms")
        print(f"  Python start of arch-runc        {python_start * 1000:7.0f} ms")
        rest = per_container - criu - python_start
        print(f"  containerd+shim, runc calls, ARCH capture/publish {rest * 1000:7.0f} ms")
    if notice is not None:
        print()
        print(
            f"Spot notice -> last of {counts[-1]} images published: {notice[0]:.2f}s "
            f"(checkpoint --all itself {notice[1]:.2f}s; spot-watch polls every second)"
        )
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
