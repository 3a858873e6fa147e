#!/usr/bin/env python3
"""Pass-through overhead: `arch-runc state ID` / `kill ID 0` against plain runc, side by side.

Creates one real container (busybox rootfs, `runc create`, never started) under a private runc
root, then times the commands interleaved, so that machine noise hits every variant alike.
`kill` is measured too: the native front stat()s the Spot notice marker for it (no notice here).
Prints median wall times and their ratio to plain runc. Needs root, runc and a static busybox.

    sudo python3 benchmarks/passthrough.py [--rounds 200]
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

CONTAINER_ID = "arch-bench-passthrough"


def build_bundle(runc: str, bundle: str, busybox: str) -> None:
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy2(busybox, os.path.join(rootfs, "bin", "busybox"))
    os.symlink("busybox", os.path.join(rootfs, "bin", "sh"))
    subprocess.run([runc, "spec", "--bundle", bundle], check=True)
    with open(os.path.join(bundle, "config.json")) as spec_file:
        spec = json.load(spec_file)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["sh", "-c", "sleep 1000"]
    with open(os.path.join(bundle, "config.json"), "w") as spec_file:
        json.dump(spec, spec_file)


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--runc", default=shutil.which("runc") or "/usr/sbin/runc")
    parser.add_argument("--arch-runc", default="/usr/local/bin/arch-runc",
                        help="the installed arch-runc (native front)")
    parser.add_argument("--python-arch-runc", default="/opt/arch/venv/bin/arch-runc",
                        help="the Python console script, measured for comparison if present")
    parser.add_argument("--busybox", default=shutil.which("busybox") or "/bin/busybox")
    args = parser.parse_args()

    variants = {"runc": [args.runc], "arch-runc": [args.arch_runc]}
    if os.path.exists(args.python_arch_runc):
        variants["arch-runc (Python only)"] = [args.python_arch_runc]
    workdir = tempfile.mkdtemp(prefix="arch-bench-")
    root = os.path.join(workdir, "runc-root")
    bundle = os.path.join(workdir, "bundle")
    try:
        build_bundle(args.runc, bundle, args.busybox)
        subprocess.run([args.runc, "--root", root, "create", "--bundle", bundle, CONTAINER_ID],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        calls = {"state": ["state", CONTAINER_ID], "kill ID 0": ["kill", CONTAINER_ID, "0"]}
        samples = {(call, name): [] for call in calls for name in variants}
        for prefix in variants.values():  # warm-up: page cache, first exec
            time_once([*prefix, "--root", root, "state", CONTAINER_ID])
        for _ in range(args.rounds):
            for call, call_args in calls.items():
                for name, prefix in variants.items():
                    sample = time_once([*prefix, "--root", root, *call_args])
                    samples[(call, name)].append(sample)
    finally:
        subprocess.run([args.runc, "--root", root, "delete", "--force", CONTAINER_ID],
                       check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(workdir, ignore_errors=True)

    for call in calls:
        baseline = statistics.median(samples[(call, "runc")])
        print(f"`{call}` of one created container, {args.rounds} interleaved rounds, median "
              "wall time")
        for name in variants:
            median = statistics.median(samples[(call, name)])
            print(f"  {name:<24} {median * 1000:7.2f} ms   {median / baseline:5.2f}x runc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
