#!/usr/bin/env python3
"""`delete` of an opted-in container on a host without an exit watcher, against plain runc.

A delete of an ARCH container waits for the exit status the watcher records (containerd
publishes the exit event around the time it deletes) — but only while a watcher runs for the
state dir: without one no status can arrive. In one run, on a private runc root and a private
arch.toml (scratch state dir and checkpoint root; the real runc), each round creates a busybox
container (never started, ARCH_ENABLE=1 in its env) and times its delete, interleaved:
- `runc delete` of a plain-runc container,
- `arch-runc delete` with no watcher (nothing announced in the state dir),
- `arch-runc delete` while a watcher is announced (this benchmark announces itself, as
  `archctl watch-exits` does, and records nothing): the wait for a status that never comes.
Prints median wall times and their ratio to plain runc. Needs root, runc and a static busybox.

    sudo /opt/arch/venv/bin/python benchmarks/opted_in_delete.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arch.container.exit_watch import WatcherPresence  # noqa: E402

CONTAINER_ID = "arch-bench-delete"


def build_bundle(runc: str, bundle: str, busybox: str, env: list[str]) -> None:
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy2(busybox, os.path.join(rootfs, "bin", "busybox"))
    os.symlink("busybox", os.path.join(rootfs, "bin", "sh"))
    subprocess.run([runc, "spec", "--bundle", bundle], check=True)
    with open(os.path.join(bundle, "config.json")) as spec_file:
        spec = json.load(spec_file)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["sh", "-c", "sleep 1000"]
    spec["process"]["env"] = [*spec["process"].get("env", []), *env]
    with open(os.path.join(bundle, "config.json"), "w") as spec_file:
        json.dump(spec, spec_file)


def write_config(workdir: str, runc: str) -> str:
    path = os.path.join(workdir, "arch.toml")
    with open(path, "w") as config:
        for key, value in (
            ("runc", runc),
            ("state_dir", os.path.join(workdir, "state")),
            ("checkpoint_root", os.path.join(workdir, "checkpoint")),
            ("log_file", os.path.join(workdir, "arch.log")),
            ("metrics_file", os.path.join(workdir, "arch.prom")),
        ):
            config.write(f"{key} = {json.dumps(value)}\n")
    return path


def delete_time(binary: str, root: str, bundle: str, env: dict[str, str]) -> float:
    """Create (untimed), then time the delete."""
    subprocess.run([binary, "--root", root, "create", "--bundle", bundle, CONTAINER_ID],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    start = time.perf_counter()
    subprocess.run([binary, "--root", root, "delete", CONTAINER_ID], check=True,
                   stdout=subprocess.DEVNULL, env=env)  # fmt: skip
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runc", default=shutil.which("runc") or "/usr/sbin/runc")
    parser.add_argument("--arch-runc", default="/usr/local/bin/arch-runc")
    parser.add_argument("--busybox", default=shutil.which("busybox") or "/bin/busybox")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="arch-bench-delete-")
    root = os.path.join(workdir, "runc-root")
    plain_bundle = os.path.join(workdir, "plain")
    arch_bundle = os.path.join(workdir, "opted-in")
    environment = {**os.environ, "ARCH_CONFIG": write_config(workdir, args.runc)}
    state_dir = os.path.join(workdir, "state")
    samples: dict[str, list[float]] = {"runc": [], "no watcher": [], "watcher, no status": []}
    try:
        build_bundle(args.runc, plain_bundle, args.busybox, [])
        build_bundle(args.runc, arch_bundle, args.busybox, ["ARCH_ENABLE=1"])
        presence = WatcherPresence(state_dir, "/nonexistent/containerd.sock")
        for _ in range(args.rounds):
            samples["runc"].append(delete_time(args.runc, root, plain_bundle, environment))
            samples["no watcher"].append(
                delete_time(args.arch_runc, root, arch_bundle, environment)
            )
            presence.announce()
            try:
                samples["watcher, no status"].append(
                    delete_time(args.arch_runc, root, arch_bundle, environment)
                )
            finally:
                presence.withdraw()
    finally:
        subprocess.run([args.runc, "--root", root, "delete", "--force", CONTAINER_ID],
                       check=False, stderr=subprocess.DEVNULL)  # fmt: skip
        shutil.rmtree(workdir, ignore_errors=True)

    baseline = statistics.median(samples["runc"])
    print(f"`delete` of a created container, {args.rounds} interleaved rounds, median wall time")
    for name, values in samples.items():
        label = "runc" if name == "runc" else f"arch-runc, opted in, {name}"
        median = statistics.median(values)
        print(f"  {label:<38} {median * 1000:8.1f} ms   {median / baseline:6.2f}x runc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
